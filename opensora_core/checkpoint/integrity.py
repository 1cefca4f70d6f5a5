"""What makes a checkpoint trustworthy: the size and SHA-256 of every file of its step directory, recorded in
meta.json when it is written and checked before it is loaded.

The manifest walks the whole step directory (every file below it except meta.json itself), so files that an
engine adds (e.g. a torch.distributed.checkpoint folder) are covered without naming them. Files added after the
checkpoint was written (samples/ from `opensora sample`) are not in the manifest and are ignored.

Cost: one streamed read of the checkpoint per save and per load. SHA-256, because the CPU's SHA extensions make it
faster than blake2b (docs/results.md); a few percent of a save at `ckpt_every: 1000` for STDiT-XL/2.
`quick=True` checks presence and sizes only (what pruning uses); weights-only readers (the next stage's init,
sampling, evaluation) hash only the weight files.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from pathlib import Path

META = "meta.json"
DIGEST = "sha256"
# checkpoints written before the file manifest existed: what must at least be there
REQUIRED_WITHOUT_MANIFEST = ("model.safetensors",)


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, DIGEST).hexdigest()


def file_manifest(step_dir: Path) -> dict[str, dict]:
    """`{relative posix path: {"size": bytes, "sha256": hex}}` for every file below `step_dir` but meta.json."""
    step_dir = Path(step_dir)
    files = sorted(p for p in step_dir.rglob("*") if p.is_file() and p.relative_to(step_dir).as_posix() != META)
    return {p.relative_to(step_dir).as_posix(): {"size": p.stat().st_size, DIGEST: file_digest(p)} for p in files}


def read_meta_dict(step_dir: Path) -> tuple[dict | None, str | None]:
    """(meta.json as a dict, None) or (None, what is wrong with it)."""
    f = Path(step_dir) / META
    if not f.is_file():
        return None, f"{META} missing"
    try:
        data = json.loads(f.read_bytes())
    except (OSError, ValueError) as e:  # ValueError covers JSONDecodeError and UnicodeDecodeError
        return None, f"{META} unreadable ({type(e).__name__}: {str(e)[:120]})"
    if not isinstance(data, dict) or not isinstance(data.get("step"), int):
        return None, f"{META} unreadable (not a checkpoint record)"
    return data, None


def verify_checkpoint(step_dir: Path, quick: bool = False, only: tuple[str, ...] | None = None) -> list[str]:
    """What is wrong with a step directory ([] when it is complete): an unreadable meta.json, or per file
    `missing`, `truncated`/size changed, or (unless `quick`) a checksum mismatch. `only`: check just these files
    (what a weights-only reader loads), so loading EMA weights does not hash the optimizer state."""
    step_dir = Path(step_dir)
    if not step_dir.is_dir():
        return [f"{step_dir.name} does not exist"]
    meta, problem = read_meta_dict(step_dir)
    if problem:
        return [problem]
    files = meta.get("files")
    if files is None:  # written before checksums were recorded: presence is all we can check
        return [f"{name} missing" for name in REQUIRED_WITHOUT_MANIFEST if not (step_dir / name).is_file()]
    if not isinstance(files, dict):
        return [f"{META} unreadable (bad file list)"]
    problems = []
    for name, want in sorted(files.items()):
        if only is not None and not any(name == o or (o.endswith("/") and name.startswith(o)) for o in only):
            continue  # `only` names files, or folders ending in "/"
        f = step_dir / name
        if not f.is_file():
            problems.append(f"{name} missing")
            continue
        size = f.stat().st_size
        if size != want.get("size"):
            how = "truncated" if isinstance(want.get("size"), int) and size < want["size"] else "size changed"
            problems.append(f"{name} {how} ({size} of {want.get('size')} bytes)")
        elif not quick and file_digest(f) != want.get(DIGEST):
            problems.append(f"{name} checksum mismatch ({DIGEST})")
    return problems


# ---- disk full ------------------------------------------------------------------------------------------

DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_OS_ERROR_IN_TEXT = re.compile(r"os error (\d+)")  # how safetensors (Rust) reports an I/O error


def disk_full_cause(exc: BaseException) -> str | None:
    """'No space left on device' / 'File too large' / 'Disk quota exceeded' when `exc` (or what it was raised
    from: torch.save wraps the OSError in a RuntimeError) is a full disk or a file-size limit; else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return os.strerror(exc.errno)
        m = _OS_ERROR_IN_TEXT.search(str(exc))
        if m and int(m.group(1)) in DISK_FULL_ERRNOS:
            return os.strerror(int(m.group(1)))
        exc = exc.__cause__ or exc.__context__
    return None
