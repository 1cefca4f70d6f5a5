"""Bring your own captioned clips the Open-Sora 1.0 way: a CSV with a header `path,text` (and optionally Open-Sora's
`num_frames,fps,height,width`), one row per clip.

Paths are local or s3://; a relative path is taken from the CSV's own folder (Open-Sora's convention), so the CSV
and its clips move together. Every file is probed like an ingested one (ingest.process_file): unreadable or
missing files go to rejects.csv with the reason; the others become manifest rows that keep the row's caption
(the `existing` captioner then passes it through). Scene splitting is optional (`data.scene_split`, off by
default for a CSV: its rows are clips someone already chose); with it, every scene of a file gets the row's text.
The probe is the truth for frames, fps and size: Open-Sora's optional columns are only checked to be numbers.
Any other column is carried into the manifest as it is.

A CSV without a `path` or `text` column, or with an empty path or caption, is refused as a whole (ManifestError
naming the column or the row), before anything is probed or written.

Heavy or optional imports (fsspec) happen inside the functions that need them, so importing this module (the CLI,
the stage processes, the Dask workers do) does not load them.
"""

from __future__ import annotations

import hashlib
import io
import logging
import posixpath
from pathlib import Path

import pandas as pd

from opensora_core.data.ingest import clip_rows, probe_files, publish, s3_filesystem
from opensora_core.data.manifest import ManifestError, is_remote
from opensora_core.remote import remote_operation

log = logging.getLogger(__name__)
REQUIRED = ("path", "text")
OPEN_SORA_OPTIONAL = ("num_frames", "fps", "height", "width")


def _read_text(src: str) -> str:
    if is_remote(src):
        import fsspec

        with remote_operation("ingest", f"reading {src}"):
            with fsspec.open(src, "rt") as f:
                return f.read()
    path = Path(src)
    if not path.is_file():
        raise FileNotFoundError(f"captions CSV not found: {src}")
    return path.read_text()


def csv_digest(src: str) -> str:
    """sha256 of the CSV's bytes (what the prepare stage's stamp records)."""
    return hashlib.sha256(_read_text(src).encode()).hexdigest()


def resolve_clip_path(path: str, csv_src: str) -> str:
    """A CSV row's path: s3:// and absolute paths as they are, relative ones from the CSV's folder."""
    if is_remote(path) or Path(path).is_absolute():
        return path
    if is_remote(csv_src):
        scheme, rest = csv_src.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(posixpath.dirname(rest), path))}"
    return str((Path(csv_src).resolve().parent / path).resolve())


def read_captions_csv(src: str | Path) -> pd.DataFrame:
    """The rows of a captions CSV with their paths resolved; raises ManifestError naming the column or row.
    Rows are numbered from 0 (the first line after the header), as in manifest errors; `line` is the file's."""
    src = str(src)
    try:
        df = pd.read_csv(io.StringIO(_read_text(src)), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ManifestError(f"{src}: not a readable CSV: {e}") from None
    df.columns = [str(c).strip() for c in df.columns]
    for col in REQUIRED:
        if col not in df.columns:
            raise ManifestError(f"{src}: missing column {col!r} (a captions CSV needs a header with path,text; "
                                f"got {', '.join(df.columns) or 'no columns'})")
    if df.empty:
        raise ManifestError(f"{src}: no rows after the header")
    for col, what in (("path", "path"), ("text", "caption")):
        empty = df[col].str.strip() == ""
        if empty.any():
            row = int(empty.to_numpy().argmax())
            raise ManifestError(f"{src}: row {row} (line {row + 2}): empty {what} in column {col!r}")
    for col in (c for c in OPEN_SORA_OPTIONAL if c in df.columns):
        given = df[col].str.strip() != ""
        bad = given & pd.to_numeric(df[col], errors="coerce").isna()
        if bad.any():
            row = int(bad.to_numpy().argmax())
            raise ManifestError(f"{src}: row {row} (line {row + 2}): column {col!r} must be a number, got {df[col].iloc[row]!r}")
    df["path"] = [resolve_clip_path(p.strip(), src) for p in df["path"]]
    return df


def ingest_csv(src: str | Path, out: str | Path, min_duration: float = 0.5, max_duration: float = 60.0,
               min_resolution: int = 0, max_aspect: float = 3.0, workers: int = 2, threshold: float = 30.0,
               scene_split: bool = False, progress: bool = True) -> dict:
    """Probe the clips of captions CSV `src` into out/manifest.csv (captions kept) and out/rejects.csv; returns
    counts like ingest(). Resumable through out/ingest_progress.jsonl."""
    src = str(src)
    table = read_captions_csv(src)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = list(dict.fromkeys(table["path"]))
    fs = s3_filesystem() if any(p.startswith("s3://") for p in files) else None
    with remote_operation("ingest", f"reading the clips of {src}"):
        done, processed = probe_files(files, out, fs, threshold, scene_split, workers, progress)

    extra = [c for c in table.columns if c not in (*REQUIRED, *OPEN_SORA_OPTIONAL)]
    rows, rejects = [], []
    for record in table.to_dict("records"):
        rec = done[record["path"]]
        if rec["status"] != "ok":
            rejects.append({"path": record["path"], "reason": rec["reason"]})
            continue
        clips, reasons = clip_rows(rec, record["text"].strip(), min_duration, max_duration, min_resolution, max_aspect)
        rows += [{**{c: record[c] for c in extra if c not in clip}, **clip} for clip in clips]
        rejects += [{"path": record["path"], "reason": r} for r in reasons]
    rejects = list({(r["path"], r["reason"]): r for r in rejects}.values())  # a file listed twice: one reason
    publish(out, rows, rejects)
    summary = {"files": len(files), "rows": len(table), "processed": processed, "clips": len(rows),
               "rejected": len(rejects), "rejected_files": len({r["path"] for r in rejects if not r["reason"].startswith("clip ")})}
    log.info("csv %s: %d clips from %d rows (%d files); %d rejected, see %s", src, len(rows), len(table), len(files),
             len(rejects), out / "rejects.csv")
    return summary
