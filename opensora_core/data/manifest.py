"""Clip manifests: one CSV schema for synthetic, ingested and captioned data, validated on every read and write.

Columns (one row per clip):
  path, text, num_frames, fps, height, width      always (text may be empty before captioning)
  start, end                                      seconds, when a clip is a time range of a longer file
  split                                           train | val (after the caption stage)
  color, shape, motion, background, num_objects   ground truth of synthetic clips (+ size, obj2_*)
  + any extra columns (kept as they are: codec, duration, sha256, ...)

Local paths are stored relative to the manifest's directory (the data folder can move, DVC can version it) and
returned absolute by `read_manifest`; `s3://` paths are kept as they are.

Writing is strict (`validate_manifest` raises on the first bad row). Reading for training is forgiving row by
row: `read_manifest(path, reject_bad_rows=True)` drops each bad row with a reason (`screen_manifest`: empty
path, non-positive or NaN frames/fps/size, bad clip range or split, a caption that is not UTF-8 or, with
`require_text`, empty, a local file that does not exist, a duplicate clip, a malformed CSV line) and keeps the
good ones; only a file that cannot be read at all or lacks a required column is an error.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pandas as pd

from opensora_core.io import atomic_write

REQUIRED_COLUMNS = ("path", "text", "num_frames", "fps", "height", "width")
RANGE_COLUMNS = ("start", "end")
GROUND_TRUTH_COLUMNS = ("color", "shape", "motion", "background", "num_objects")
SPLITS = ("train", "val")
REJECT_COLUMNS = ("row", "path", "reason")
NOT_UTF8 = "\ufffd"  # what decoding with errors="replace" leaves for bytes that are not UTF-8
log = logging.getLogger(__name__)


class ManifestError(ValueError):
    """A manifest that does not follow the schema; the message names the file, column and row."""


def is_remote(path: str) -> bool:
    return "://" in str(path)


def validate_manifest(df: pd.DataFrame, source: str = "manifest") -> pd.DataFrame:
    """Check the schema and normalise dtypes; returns a new frame. Raises ManifestError naming the column/row."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"{source}: missing column {missing[0]!r} (required: {', '.join(REQUIRED_COLUMNS)})")
    df = df.copy()
    df["path"] = df["path"].astype("string")
    if df["path"].isna().any() or (df["path"].str.len() == 0).any():
        row = int((df["path"].isna() | (df["path"].fillna("").str.len() == 0)).to_numpy().argmax())
        raise ManifestError(f"{source}: row {row}: column 'path' is empty")
    df["text"] = df["text"].fillna("").astype(str)
    for col, kind in (("num_frames", "int"), ("fps", "float"), ("height", "int"), ("width", "int")):
        df[col] = _numeric(df, col, kind, source, positive=True)
    has_range = [c for c in RANGE_COLUMNS if c in df.columns]
    if len(has_range) == 1:
        raise ManifestError(f"{source}: column {has_range[0]!r} without its pair (clip ranges need both start and end)")
    if has_range:
        df["start"] = _numeric(df, "start", "float", source, positive=False)
        df["end"] = _numeric(df, "end", "float", source, positive=True)
        bad = df.index[(df["start"] < 0) | (df["end"] <= df["start"])]
        if len(bad):
            r = df.loc[bad[0]]
            raise ManifestError(f"{source}: row {bad[0]} ({r['path']}): columns 'start'/'end' need 0 <= start < end, got {r['start']}/{r['end']}")
    if "split" in df.columns:
        df["split"] = df["split"].astype(str)
        bad = df.index[~df["split"].isin(SPLITS)]
        if len(bad):
            raise ManifestError(f"{source}: row {bad[0]}: column 'split' must be train or val, got {df.loc[bad[0], 'split']!r}")
    gt = [c for c in GROUND_TRUTH_COLUMNS if c in df.columns]
    if gt and len(gt) != len(GROUND_TRUTH_COLUMNS):
        absent = [c for c in GROUND_TRUTH_COLUMNS if c not in df.columns]
        raise ManifestError(f"{source}: ground-truth column {absent[0]!r} missing (synthetic manifests need {', '.join(GROUND_TRUTH_COLUMNS)})")
    if gt:
        df["num_objects"] = _numeric(df, "num_objects", "int", source, positive=True)
        for col in ("color", "shape", "motion", "background"):
            df[col] = df[col].fillna("").astype(str)
        for col in [c for c in df.columns if c.startswith("obj2_")]:
            df[col] = df[col].fillna("").astype(str)
    df["path"] = df["path"].astype(str)
    return df.reset_index(drop=True)


def _numeric_bad(df: pd.DataFrame, col: str, kind: str, positive: bool) -> tuple[pd.Series, pd.Series]:
    """(values as numbers, mask of the rows whose value is missing, not a number or out of range)."""
    values = pd.to_numeric(df[col], errors="coerce")
    bad = values.isna() | ((values <= 0) if positive else (values < 0)) | values.isin([float("inf"), float("-inf")])
    if kind == "int":
        bad |= values.fillna(0) != values.fillna(0).round()
    return values, bad


def _numeric(df: pd.DataFrame, col: str, kind: str, source: str, positive: bool) -> pd.Series:
    values, bad = _numeric_bad(df, col, kind, positive)
    if bad.any():
        row = int(bad.to_numpy().argmax())
        need = "a positive" if positive else "a non-negative"
        raise ManifestError(f"{source}: row {row} ({df['path'].iloc[row]}): column {col!r} must be {need} {kind}, got {df[col].iloc[row]!r}")
    return values.astype("int64" if kind == "int" else "float64")


def screen_manifest(df: pd.DataFrame, base_dir: str | Path | None = None, require_text: bool = False,
                    source: str = "manifest") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a manifest into (good rows, validated; rejects with columns row, path, reason).

    `base_dir` resolves relative local paths for the existence check (None: paths are taken as they are);
    `s3://` paths are not checked here (the ingest stage probes them). The first problem of a row is its reason.
    Raises ManifestError only for what no row can survive: a missing required column.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"{source}: missing column {missing[0]!r} (required: {', '.join(REQUIRED_COLUMNS)})")
    reason = pd.Series("", index=df.index, dtype=object)

    def flag(mask, why) -> None:
        mask = pd.Series(mask, index=df.index).fillna(True).astype(bool) & (reason == "")
        reason[mask] = why if isinstance(why, str) else why[mask]

    paths = df["path"].astype("string")
    flag(paths.isna() | (paths.str.len() == 0), "column 'path' is empty")
    flag(paths.str.contains(NOT_UTF8, regex=False), "path is not valid UTF-8")
    checks = [("num_frames", "int", True), ("fps", "float", True), ("height", "int", True), ("width", "int", True)]
    if "start" in df.columns and "end" in df.columns:
        checks += [("start", "float", False), ("end", "float", True)]
    for col, kind, positive in checks:
        _, bad = _numeric_bad(df, col, kind, positive)
        flag(bad, f"column {col!r} must be {'a positive' if positive else 'a non-negative'} {kind}, got "
             + df[col].map(_shown))
    if "start" in df.columns and "end" in df.columns:
        start, end = pd.to_numeric(df["start"], errors="coerce"), pd.to_numeric(df["end"], errors="coerce")
        flag(end <= start, "clip range needs start < end")
    if "split" in df.columns:
        flag(~df["split"].astype(str).isin(SPLITS), "column 'split' must be train or val, got " + df["split"].map(_shown))
    if "num_objects" in df.columns:
        flag(_numeric_bad(df, "num_objects", "int", True)[1], "column 'num_objects' must be a positive int")
    text = df["text"].astype("string").fillna("")
    flag(text.str.contains(NOT_UTF8, regex=False), "caption is not valid UTF-8")
    if require_text:
        flag(text.str.strip().str.len() == 0, "caption is empty")
    local = paths.fillna("").map(lambda p: p and not is_remote(p))
    base = Path(base_dir) if base_dir is not None else None
    exists = [not loc or os.path.exists(p if base is None or os.path.isabs(p) else base / p)
              for p, loc in zip(paths.fillna(""), local)]
    flag(~pd.Series(exists, index=df.index), "file not found: " + paths.fillna(""))
    key = paths.fillna("") + ("@" + df["start"].astype(str) if "start" in df.columns else "")
    ok = reason == ""
    first = pd.Series(df.index, index=df.index).where(ok).groupby(key.where(ok)).transform("min")
    flag(ok & (first != df.index), "duplicate of row " + first.fillna(-1).astype(int).astype(str))
    good = reason == ""
    rejects = pd.DataFrame({"row": df.index[~good], "path": paths[~good].fillna("").astype(str),
                            "reason": reason[~good]}, columns=list(REJECT_COLUMNS))
    return validate_manifest(df[good], source), rejects.reset_index(drop=True)


def reject_records(rejects: pd.DataFrame) -> list[dict]:
    """Rejects as JSON-ready dicts (row is None for a malformed CSV line)."""
    return [{"row": None if pd.isna(r.row) else int(r.row), "path": str(r.path), "reason": str(r.reason)}
            for r in rejects.itertuples()]


def _shown(value) -> str:
    """A cell as a reason quotes it: missing cells as 'nothing', long ones cut."""
    return "nothing" if pd.isna(value) else repr(value)[:40]


def _read_csv(path: Path, lenient: bool) -> tuple[pd.DataFrame, list[dict]]:
    """The CSV as strings/numbers, plus (lenient) the malformed lines it skipped as rejects."""
    kw = dict(keep_default_na=False, na_values=[""], dtype={"text": str, "path": str})
    try:
        return pd.read_csv(path, **kw, **({"encoding_errors": "replace"} if lenient else {})), []
    except pd.errors.ParserError:
        if not lenient:
            raise
    bad: list[dict] = []
    header = pd.read_csv(path, nrows=0, encoding_errors="replace").columns

    def skip(fields: list[str]) -> None:  # lines with more fields than the header: one reject each
        bad.append({"row": None, "path": fields[0] if fields else "",
                    "reason": f"malformed CSV line: {len(fields)} fields, the header has {len(header)}"})
        return None

    df = pd.read_csv(path, **kw, engine="python", on_bad_lines=skip, encoding_errors="replace")
    return df, bad


def read_manifest(path: str | Path, reject_bad_rows: bool = False, require_text: bool = False) -> pd.DataFrame:
    """Read and validate a manifest; local clip paths come back absolute.

    `reject_bad_rows`: drop each bad row with a warning instead of raising on the first (see `screen_manifest`);
    the rejects (row, path, reason) are in `df.attrs["rejects"]`. `require_text` also rejects empty captions.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"manifest not found: {path}")
    try:
        df, malformed = _read_csv(path, reject_bad_rows)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: not a readable CSV: {' '.join(str(e).split())}") from None
    base = path.resolve().parent
    if reject_bad_rows:
        df, rejects = screen_manifest(df, base, require_text, str(path))
        rejects = pd.concat([rejects, pd.DataFrame(malformed, columns=list(REJECT_COLUMNS))], ignore_index=True)
        if len(rejects):
            shown = "; ".join(f"{r['path']}: {r['reason']}" if r["row"] is None else f"row {r['row']} ({r['path']}): {r['reason']}"
                              for r in reject_records(rejects.head(5)))
            log.warning("%s: %d of %d rows rejected, training on the other %d (%s%s)", path, len(rejects),
                        len(rejects) + len(df), len(df), shown, "; ..." if len(rejects) > 5 else "")
    else:
        df = validate_manifest(df, str(path))
    df["path"] = [p if is_remote(p) or os.path.isabs(p) else str(base / p) for p in df["path"]]
    if reject_bad_rows:
        df.attrs["rejects"] = rejects
    return df


def write_manifest(df: pd.DataFrame, path: str | Path) -> Path:
    """Validate and write atomically (temp file + rename); local paths are stored relative to the manifest."""
    path = Path(path)
    df = validate_manifest(df, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.resolve().parent
    df["path"] = [p if is_remote(p) or not os.path.isabs(p) else os.path.relpath(p, base) for p in df["path"]]
    return atomic_write(path, df.to_csv(index=False))


def split_key(path: str, start: float | None = None) -> str:
    """What the split hash sees: the file name (+ clip start), so moving the data folder never reshuffles splits."""
    name = str(path).rstrip("/").rsplit("/", 1)[-1]
    return name if start is None or pd.isna(start) else f"{name}|{float(start):.3f}"


def assign_split(df: pd.DataFrame, val_fraction: float) -> pd.DataFrame:
    """Add a `split` column: val iff sha1(split_key) maps below val_fraction. Stable across runs and machines."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    starts = df["start"] if "start" in df.columns else [None] * len(df)
    u = [int.from_bytes(hashlib.sha1(split_key(p, s).encode()).digest()[:8], "big") / 2**64 for p, s in zip(df["path"], starts)]
    out = df.copy()
    out["split"] = ["val" if x < val_fraction else "train" for x in u]
    return out


def clip_durations(df: pd.DataFrame) -> pd.Series:
    """Seconds per clip: end - start for ranges, else num_frames / fps."""
    if "start" in df.columns:
        return (df["end"] - df["start"]).astype(float)
    return df["num_frames"] / df["fps"]


def manifest_stats(df: pd.DataFrame) -> dict:
    """Counts, duration/resolution histograms and caption length statistics (words)."""
    dur = clip_durations(df)
    words = df["text"].str.split().str.len().fillna(0)
    edges = [0, 1, 2, 4, 8, 16, 32, 60, float("inf")]
    hist = pd.cut(dur, edges, right=False).value_counts(sort=False)
    res = (df["width"].astype(str) + "x" + df["height"].astype(str)).value_counts()
    stats = {
        "clips": len(df),
        "files": int(df["path"].nunique()),
        "total_seconds": float(dur.sum()),
        "duration": {"min": float(dur.min()), "mean": float(dur.mean()), "max": float(dur.max())} if len(df) else {},
        "duration_hist": {f"[{a:g}, {b:g})": int(n) for (a, b), n in zip(zip(edges[:-1], edges[1:]), hist.tolist())},
        "resolutions": {k: int(v) for k, v in res.items()},
        "caption_words": {"min": int(words.min()), "mean": float(words.mean()), "max": int(words.max()),
                          "empty": int((words == 0).sum())} if len(df) else {},
    }
    if "split" in df.columns:
        stats["splits"] = {k: int(v) for k, v in df["split"].value_counts().items()}
    for col in GROUND_TRUTH_COLUMNS[:4]:
        if col in df.columns:
            stats[col] = {k: int(v) for k, v in df[col].value_counts().items()}
    return stats
