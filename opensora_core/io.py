"""Files written so that a crash never leaves half of one, and the append-only logs that resumable work keeps.

`atomic_write` writes a sibling temporary file, fsyncs it and renames it over the target: a reader sees the old
file or the new one, never a torn one. `read_jsonl` reads a progress log that a crash may have cut mid-line:
the cut line is skipped, so its item is redone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO


def atomic_write(path: str | Path, data: str | bytes | Callable[[IO], None], *, fsync: bool = True) -> Path:
    """Write `data` to `path` atomically. `data`: text, bytes, or a function that writes to the open file (binary
    mode for bytes or a function, so pandas/json writers can stream into it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w" if isinstance(data, str) else "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, obj, **dumps_kwargs) -> Path:
    """`atomic_write` of `json.dumps(obj, **dumps_kwargs)`."""
    return atomic_write(path, json.dumps(obj, **dumps_kwargs))


def read_jsonl(path: str | Path, key: str) -> dict[str, dict]:
    """The records of a jsonl progress log by `key` (a later record of the same key wins). Lines a crash cut short,
    or without `key`, are skipped: their items are redone. A missing file reads as empty."""
    done: dict[str, dict] = {}
    path = Path(path)
    if not path.exists():
        return done
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            done[rec[key]] = rec
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return done
