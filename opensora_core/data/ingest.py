"""Ingest real videos from a local folder or an s3://bucket/prefix into a clip manifest.

For every file (in parallel, with a progress bar): content hash (identical files are kept once), probe (duration,
fps, resolution, codec), scene detection (scenes.py), then clips = scenes cut into pieces of at most
`max_duration`, filtered by `min_duration`, `min_resolution` and `max_aspect`.

Clips are *timestamp ranges* (`start,end` in the manifest) of the original files, not re-encoded files: no
generation loss, no extra storage, and ingest stays cheap (one decode of downscaled frames per file); the
dataset seeks to `start` when it decodes, which costs at most one GOP of extra decoding per sample.

Outputs DIR/manifest.csv (one row per clip, `text` empty until captioning) and DIR/rejects.csv (path,reason):
a file that cannot be opened or decoded is skipped and listed there, never stopping the run. Each finished file
is appended to DIR/ingest_progress.jsonl, so an interrupted ingest rerun only does the missing files.

S3: s3fs with credentials, region and endpoint from the standard AWS environment/config (AWS_ENDPOINT_URL is
honoured); nothing about them is logged. An unreachable endpoint or refused credentials is not a bad file: the
run stops with a one-line RemoteError (opensora_core.remote) after recording the files it finished, and
manifest.csv / rejects.csv are only written (atomically) once every file is done, so a failed run never
publishes a manifest that lacks files or names files that are not there.

Heavy or optional imports (av, s3fs) happen inside the functions that need them, so importing this module
(the CLI, the stage processes, the Dask workers do) does not load them.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
from concurrent.futures import CancelledError, ThreadPoolExecutor, as_completed
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from opensora_core.data.manifest import write_manifest
from opensora_core.io import atomic_write, read_jsonl
from opensora_core.remote import RemoteError, as_remote_error, remote_operation

log = logging.getLogger(__name__)
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
PROGRESS = "ingest_progress.jsonl"


def s3_filesystem():
    import s3fs

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint} if endpoint else {})


def list_videos(src: str | Path) -> list[str]:
    """Video files under a local folder or s3:// prefix, sorted (s3 paths as s3://bucket/key)."""
    src = str(src)
    if src.startswith("s3://"):
        with remote_operation("ingest", f"listing {src}"):
            fs = s3_filesystem()
            return sorted("s3://" + p for p in fs.find(src[5:]) if p.lower().endswith(VIDEO_SUFFIXES))
    root = Path(src)
    if not root.is_dir():
        raise FileNotFoundError(f"ingest source is not a folder: {src}")
    return sorted(str(p.resolve()) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)


def _read_bytes(path: str, fs=None) -> bytes:
    if path.startswith("s3://"):
        return fs.cat_file(path[5:])
    return Path(path).read_bytes()


def probe_bytes(data: bytes) -> dict:
    """Duration, fps, resolution, codec and frame count of an in-memory video file; raises on unreadable data."""
    import av

    with av.open(io.BytesIO(data)) as c:
        if not c.streams.video:
            raise ValueError("no video stream")
        s = c.streams.video[0]
        fps = float(s.average_rate or s.guessed_rate or 0)
        duration = float(s.duration * s.time_base) if s.duration and s.time_base else (c.duration or 0) / 1e6
        return {"fps": fps, "width": int(s.codec_context.width), "height": int(s.codec_context.height),
                "codec": s.codec_context.name, "duration": duration, "frames": int(s.frames or 0)}


def process_file(path: str, fs=None, threshold: float = 30.0, scene_split: bool = True) -> dict:
    """One file -> {"path", "status": ok, "sha256", probe fields, "scenes": [[start, end], ...]} or a reject record.
    Without `scene_split` the whole file is one scene. Raises RemoteError when S3 fails (not the file's fault)."""
    from opensora_core.data.scenes import detect_scenes

    try:
        data = _read_bytes(path, fs)
    except Exception as e:  # noqa: BLE001 - sorted below: a remote failure stops the run, the rest is a bad file
        remote = as_remote_error(e, f"reading {path}") if path.startswith("s3://") else None
        if remote is not None:
            raise remote from e
        if not isinstance(e, OSError):
            raise
        return {"path": path, "status": "reject", "reason": f"cannot read: {type(e).__name__}: {e}"}
    if not data:
        return {"path": path, "status": "reject", "reason": "empty file (0 bytes)"}
    try:
        info = probe_bytes(data)
        scenes = detect_scenes(io.BytesIO(data), threshold=threshold) if scene_split else None
    except Exception as e:  # noqa: BLE001 - PyAV raises many types for broken files; all mean "unreadable"
        return {"path": path, "status": "reject", "reason": f"unreadable video: {type(e).__name__}: {e}"}
    if not info["fps"] or not info["width"]:
        return {"path": path, "status": "reject", "reason": "no frame rate or size in the stream"}
    if scenes is None:
        if not info["duration"] and info["frames"]:
            info["duration"] = info["frames"] / info["fps"]
        if not info["duration"]:
            return {"path": path, "status": "reject", "reason": "no duration in the stream"}
        scenes = [(0.0, info["duration"])]
    if not info["duration"]:
        info["duration"] = scenes[-1][1]
    return {"path": path, "status": "ok", "sha256": hashlib.sha256(data).hexdigest(), **info,
            "scene_split": scene_split, "scenes": [[round(a, 4), round(b, 4)] for a, b in scenes]}


def clips_of(rec: dict, min_duration: float, max_duration: float) -> tuple[list[tuple[float, float]], list[str]]:
    """Scenes -> clip ranges: scenes longer than max_duration are cut into equal pieces; short ones rejected."""
    clips, rejects = [], []
    for a, b in rec["scenes"]:
        n = max(1, int(-(-(b - a) // max_duration)))
        step = (b - a) / n
        for k in range(n):
            s, e = a + k * step, a + (k + 1) * step if k < n - 1 else b
            if e - s < min_duration:
                rejects.append(f"clip {s:.2f}-{e:.2f}s shorter than min_duration {min_duration}s")
            else:
                clips.append((round(s, 4), round(e, 4)))
    return clips, rejects


def resumable_records(progress_file: Path, scene_split: bool) -> dict[str, dict]:
    """The records of the progress file that a run with `scene_split` keeps: a file probed with the other scene
    setting is redone (a rejected file stays rejected either way)."""
    return {path: rec for path, rec in read_jsonl(progress_file, "path").items()
            if rec.get("status") != "ok" or rec.get("scene_split", True) == scene_split}


def probe_files(files: list[str], out: Path, fs=None, threshold: float = 30.0, scene_split: bool = True,
                workers: int = 2, progress: bool = True, process=process_file) -> tuple[dict[str, dict], int]:
    """Probe every file (in parallel), resuming from out/ingest_progress.jsonl; returns ({path: record}, number
    processed this run). A RemoteError stops the run: what finished is recorded first, the rest is left for
    the rerun; nothing is published."""
    progress_file = out / PROGRESS
    done = resumable_records(progress_file, scene_split)
    wanted = set(files)
    todo = [f for f in dict.fromkeys(files) if f not in done]
    if not scene_split:
        process = functools.partial(process, scene_split=False)
    failure: RemoteError | None = None
    with progress_file.open("a") as log_f, ThreadPoolExecutor(max(1, workers)) as pool, \
            tqdm(total=len(wanted), initial=len(wanted) - len(todo), desc="ingest", unit="file", disable=not progress) as bar:
        futures = [pool.submit(process, f, fs, threshold) for f in todo]
        for fut in as_completed(futures):
            try:
                rec = fut.result()
            except RemoteError as e:
                if failure is None:  # the store is gone: start no more files, keep what the others finish
                    failure = e
                    for other in futures:
                        other.cancel()
                continue
            except CancelledError:
                continue
            done[rec["path"]] = rec
            log_f.write(json.dumps(rec) + "\n")
            log_f.flush()
            bar.update(1)
    if failure is not None:
        missing = sum(1 for f in wanted if f not in done)
        failure.note = f"{len(wanted) - missing} of {len(wanted)} files done, a rerun does the other {missing}"
        raise failure
    return done, len(todo)


def clip_rows(rec: dict, text: str, min_duration: float, max_duration: float, min_resolution: int,
              max_aspect: float) -> tuple[list[dict], list[str]]:
    """Manifest rows of one probed file (its scenes cut into clips, all with caption `text`) and reject reasons."""
    w, h = rec["width"], rec["height"]
    if min(w, h) < min_resolution:
        return [], [f"resolution {w}x{h} below min_resolution {min_resolution}"]
    if max(w, h) / min(w, h) > max_aspect:
        return [], [f"aspect ratio {max(w, h) / min(w, h):.2f} above {max_aspect}"]
    clips, short = clips_of(rec, min_duration, max_duration)
    rows = [{"path": rec["path"], "text": text, "num_frames": max(1, round((e - s) * rec["fps"])), "fps": rec["fps"],
             "height": h, "width": w, "start": s, "end": e, "codec": rec["codec"], "file_duration": rec["duration"],
             "sha256": rec["sha256"]} for s, e in clips]
    return rows, short


def publish(out: Path, rows: list[dict], rejects: list[dict]) -> None:
    """Write rejects.csv then manifest.csv, each to a temp file renamed into place (the manifest last)."""
    atomic_write(out / "rejects.csv", pd.DataFrame(rejects, columns=["path", "reason"]).to_csv(index=False))
    if rows:
        write_manifest(pd.DataFrame(rows), out / "manifest.csv")
    else:
        empty = pd.DataFrame(columns=["path", "text", "num_frames", "fps", "height", "width", "start", "end"])
        atomic_write(out / "manifest.csv", empty.to_csv(index=False))


def ingest(src: str | Path, out: str | Path, min_duration: float = 0.5, max_duration: float = 60.0,
           min_resolution: int = 0, max_aspect: float = 3.0, workers: int = 2, threshold: float = 30.0,
           progress: bool = True, process=process_file, scene_split: bool = True) -> dict:
    """Ingest `src` into out/manifest.csv and out/rejects.csv; returns counts. Resumable (out/ingest_progress.jsonl)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = list_videos(src)
    fs = s3_filesystem() if str(src).startswith("s3://") else None
    with remote_operation("ingest", f"reading {src}"):
        done, processed = probe_files(files, out, fs, threshold, scene_split, workers, progress, process)

    rows, rejects, seen = [], [], {}
    for path in files:  # sorted order: the first copy of duplicated content is the one kept
        rec = done[path]
        if rec["status"] != "ok":
            rejects.append({"path": path, "reason": rec["reason"]})
            continue
        if rec["sha256"] in seen:
            rejects.append({"path": path, "reason": f"duplicate of {seen[rec['sha256']]}"})
            continue
        seen[rec["sha256"]] = path
        clips, reasons = clip_rows(rec, "", min_duration, max_duration, min_resolution, max_aspect)
        rows += clips
        rejects += [{"path": path, "reason": r} for r in reasons]
    publish(out, rows, rejects)
    summary = {"files": len(files), "processed": processed, "clips": len(rows), "rejected": len(rejects),
               "rejected_files": len({r["path"] for r in rejects if not r["reason"].startswith("clip ")})}
    log.info("ingest: %d clips from %d files; %d rejected (%d files), see %s", len(rows), len(files), len(rejects),
             summary["rejected_files"], out / "rejects.csv")
    return summary
