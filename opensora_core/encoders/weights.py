"""Finding pretrained weights: a hub id or a local folder, and an error that says what to do when they are missing."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


def looks_like_local_path(id_or_path: str | Path) -> bool:
    """A hub id is `org/name`; anything absolute, relative-dotted, `~`, deeper, or existing is a local folder."""
    text = str(id_or_path)
    if isinstance(id_or_path, Path) or Path(text).expanduser().exists():
        return True
    return text.startswith((".", "/", "~")) or text.count("/") != 1


def download_hint(id_or_path: str | Path, param: str) -> str:
    """The commands that fetch `id_or_path` and point `param` (e.g. `vae.pretrained`) at it."""
    text = str(id_or_path)
    if looks_like_local_path(text):
        return (
            f"put the weights (a save_pretrained folder: config.json + *.safetensors) at {text}, "
            f"or set {param} in params.yaml to a Hugging Face hub id or another local folder"
        )
    name = text.split("/")[-1]
    return (
        f"download them on a machine with internet access:\n"
        f"    huggingface-cli download {text} --local-dir pretrained_models/{name}\n"
        f"then set {param}: pretrained_models/{name} in params.yaml (or pass {param}=pretrained_models/{name})"
    )


def load_pretrained(loader: Callable[[str], T], id_or_path: str | Path, what: str, param: str) -> T:
    """Call `loader(id_or_path)`; turn a missing folder or an unreachable hub into a FileNotFoundError that
    names what to download and where to put it.

    Args:
        loader: e.g. `lambda p: AutoencoderKL.from_pretrained(p)`.
        id_or_path: hub id (`stabilityai/sd-vae-ft-ema`) or local folder.
        what: human name for the message ("VAE", "T5 text encoder").
        param: the params.yaml key that selects these weights ("vae.pretrained").
    """
    text = str(id_or_path)
    if looks_like_local_path(text):
        folder = Path(text).expanduser()
        if not (folder / "config.json").is_file() and not folder.is_file():
            raise FileNotFoundError(f"{what} weights not found at {folder}: {download_hint(text, param)}")
        return loader(str(folder))
    try:
        return loader(text)
    except (OSError, ValueError) as e:  # offline hub, gated repo, missing files: all surface as OSError/ValueError
        raise FileNotFoundError(
            f"could not load the {what} {text!r} from the Hugging Face hub ({type(e).__name__}: {str(e).splitlines()[0]}); "
            f"{download_hint(text, param)}"
        ) from e


def write_atomically(out_dir: str | Path, write: Callable[[Path], None]) -> Path:
    """Run `write(tmp)` into a temporary sibling folder, then rename it to `out_dir` (replacing an old one), so a
    crash never leaves a half-written model where loaders look for one."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        write(tmp)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
