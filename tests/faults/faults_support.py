"""Helpers of the fault tests: the training tests' tiny config and datasets (tests/kit/tiny_training.py), this
checkout's params, and ways to damage files."""

from __future__ import annotations

from pathlib import Path

from tests.kit import REPO
from tests.kit.tiny_training import STAGE, RandomLatents, tiny_config, tiny_overrides, write_latent_cache

PARAMS = REPO / "params.yaml"
__all__ = ["PARAMS", "REPO", "STAGE", "RandomLatents", "flip_last_byte", "tiny_config", "tiny_overrides", "tree",
           "truncate_to_half", "write_latent_cache"]


def truncate_to_half(path: Path) -> None:
    """What a kill mid-write or a full disk leaves: the first half of the file."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])


def flip_last_byte(path: Path) -> None:
    """Silent corruption: same size, one bit different."""
    data = bytearray(Path(path).read_bytes())
    data[-1] ^= 0x01
    Path(path).write_bytes(bytes(data))


def tree(root: Path) -> dict[str, int]:
    """Every file below `root` with its size: to show that nothing was written or deleted."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}
