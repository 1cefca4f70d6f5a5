"""Helpers of the fault tests: the training tests' tiny config and datasets (loaded from tests/train/conftest.py
under another module name, so two folders' `conftest` never shadow each other), and ways to damage files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PARAMS = REPO / "params.yaml"


def _train_fixtures():
    spec = importlib.util.spec_from_file_location("train_fixtures", REPO / "tests" / "train" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_fx = _train_fixtures()
STAGE, RandomLatents, tiny_config, tiny_overrides, write_latent_cache = (
    _fx.STAGE, _fx.RandomLatents, _fx.tiny_config, _fx.tiny_overrides, _fx.write_latent_cache)


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
