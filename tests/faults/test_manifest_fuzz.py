"""Manifest fuzz: seeded manifests mixing good rows with bad ones (NaN, negative or fractional frames/fps/sizes,
files that do not exist, duplicate clips, captions that are not UTF-8 or empty, empty paths, bad splits, short and
long CSV lines). Each bad row is rejected with its reason, the good rows are kept in order, and they train."""

from __future__ import annotations

import csv
import io
import math
import random
from pathlib import Path

import pytest

from opensora_core.data.manifest import ManifestError, read_manifest

COLUMNS = ["path", "text", "num_frames", "fps", "height", "width", "split"]

# kind -> (how the row is spoiled, words its reason must contain)
FAULTS = {
    "nan_frames": (lambda r: r.update(num_frames=""), "'num_frames'"),
    "nan_fps": (lambda r: r.update(fps="nan"), "'fps'"),
    "inf_fps": (lambda r: r.update(fps="inf"), "'fps'"),
    "negative_fps": (lambda r: r.update(fps="-8"), "'fps'"),
    "negative_frames": (lambda r: r.update(num_frames="-16"), "'num_frames'"),
    "fractional_frames": (lambda r: r.update(num_frames="12.5"), "'num_frames'"),
    "zero_height": (lambda r: r.update(height="0"), "'height'"),
    "word_width": (lambda r: r.update(width="wide"), "'width'"),
    "empty_path": (lambda r: r.update(path=""), "'path' is empty"),
    "bad_split": (lambda r: r.update(split="test"), "'split'"),
    "empty_caption": (lambda r: r.update(text=""), "caption is empty"),
    "blank_caption": (lambda r: r.update(text="   "), "caption is empty"),
    "non_utf8_caption": (lambda r: r.update(text=b"\xff\xfe a red square".decode("latin-1")), "not valid UTF-8"),
    "missing_file": (lambda r: r.update(path=str(Path(r["path"]).with_name("gone_" + Path(r["path"]).name))),
                     "file not found"),
    "short_line": (None, "'num_frames'"),  # only path,text: the numeric columns are missing
    "duplicate": (None, "duplicate of row"),
    "long_line": (None, "malformed CSV line"),  # more fields than the header
}


def _line(fields: list[str]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(fields)
    # latin-1 round-trips the raw bytes of the non-UTF-8 caption; everything else here is ASCII
    return buf.getvalue().encode("latin-1")


def fuzzed_manifest(good_rows: list[dict], seed: int, n_bad: int, folder: Path) -> tuple[bytes, list[dict], list[tuple]]:
    """CSV bytes of `good_rows` with `n_bad` bad rows inserted at seeded places: (bytes, the good rows in file
    order, [(kind, words)] of the parsed bad rows in file order + the malformed lines last)."""
    rng = random.Random(seed)
    lines: list[tuple[str, dict | None, bytes]] = [("good", r, _line([str(r[c]) for c in COLUMNS])) for r in good_rows]
    for j in range(n_bad):
        kind = rng.choice(sorted(FAULTS))
        at = rng.randrange(1, len(lines) + 1)
        if kind == "duplicate":
            earlier = [r for k, r, _ in lines[:at] if k == "good"]
            row = dict(rng.choice(earlier)) if earlier else None
            if row is None:
                kind, row = "nan_fps", {**good_rows[0], "fps": "nan"}
            fields = [str(row[c]) for c in COLUMNS]
        else:
            source = rng.choice(good_rows)
            row = {**source, "path": str(Path(source["path"]).with_name(f"bad_{seed}_{j}.mp4"))}
            (folder / row["path"]).touch()  # exists: its one fault is the one under test
            spoil = FAULTS[kind][0]
            if spoil:
                spoil(row)
            fields = [str(row[c]) for c in COLUMNS]
            if kind == "short_line":
                fields = fields[:2]
            elif kind == "long_line":
                fields = fields + ["surplus", "fields"]
        lines.insert(at, (kind, None, _line(fields)))
    data = _line(COLUMNS) + b"".join(b for _, _, b in lines)
    parsed = [(k, FAULTS[k][1]) for k, _, _ in lines if k not in ("good", "long_line")]
    malformed = [(k, FAULTS[k][1]) for k, _, _ in lines if k == "long_line"]
    return data, [r for k, r, _ in lines if k == "good"], parsed + malformed


@pytest.fixture
def clip_folder(tmp_path):
    (tmp_path / "videos").mkdir()
    rows = []
    for i in range(8):
        (tmp_path / "videos" / f"clip_{i}.mp4").touch()  # screening checks existence; decoding is the dataset's
        rows.append({"path": f"videos/clip_{i}.mp4", "text": f"a {['red', 'blue'][i % 2]} square moving left",
                     "num_frames": 16, "fps": 8.0, "height": 32, "width": 32, "split": ["train", "val"][i % 4 == 3]})
    return tmp_path, rows


@pytest.mark.parametrize("seed", range(40))
def test_manifest_fuzz_rejects_each_bad_row_with_its_reason_and_keeps_the_good_ones(clip_folder, seed):
    folder, good = clip_folder
    data, kept, expected = fuzzed_manifest(good, seed, n_bad=random.Random(seed).randrange(1, 12), folder=folder)
    (folder / "manifest.csv").write_bytes(data)
    df = read_manifest(folder / "manifest.csv", reject_bad_rows=True, require_text=True)
    assert [Path(p).name for p in df["path"]] == [Path(r["path"]).name for r in kept]
    rejects = df.attrs["rejects"]
    assert len(rejects) == len(expected), (rejects.to_string(), expected)
    for (kind, words), reason in zip(expected, rejects["reason"]):
        assert words in reason, f"{kind}: {reason!r} should name {words!r}"
    parsed_rows = [r for r in rejects["row"] if not (r is None or (isinstance(r, float) and math.isnan(r)))]
    assert parsed_rows == sorted(parsed_rows)  # each names its row


def test_a_manifest_without_a_required_column_is_one_clear_error(clip_folder):
    folder, good = clip_folder
    lines = ["path,text,num_frames,height,width"] + [f"{r['path']},{r['text']},16,32,32" for r in good]
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError, match="missing column 'fps'"):
        read_manifest(folder / "manifest.csv", reject_bad_rows=True)


@pytest.mark.slow
def test_the_good_rows_of_a_fuzzed_manifest_are_cached_and_train(tmp_path):
    """The real path: synthetic clips -> captioned manifest -> (fuzzed) -> latent cache with the project's
    encoders -> a training job on what survived."""
    import json

    import pandas as pd

    from opensora_core.config import load_config
    from opensora_core.data.cache import LatentCacheDataset, build_latent_cache
    from opensora_core.data.stages import caption_data, prepare_data
    from opensora_core.encoders.build import ensure_tiny_text_encoder
    from opensora_core.encoders.vae_train import tiny_autoencoder
    from opensora_core.train.loop import train_stage

    stage = "pretrain_256"
    cfg = load_config(overrides=[
        f"run_dir={tmp_path / 'run'}", "data.num_videos=12", "data.video_frames=16", "data.val_fraction=0.2",
        "stages.pretrain_256.frame_interval=3", "stages.finetune_512.frame_interval=3", "stages.finetune_64f.num_frames=8",
        "model.hidden_size=32", "model.depth=2", "model.num_heads=2", "text_encoder.hidden_size=16",
        "text_encoder.model_max_length=8", "train.processes=1", "train.warmup_steps=1",
        f"stages.{stage}.batch_size=2", f"stages.{stage}.max_steps=2", "train.ckpt_every=2", "train.sample_every=0"])
    prepare_data(cfg, progress=False)
    manifest = caption_data(cfg, progress=False)
    rows = pd.read_csv(manifest, keep_default_na=False).to_dict("records")
    folder = manifest.parent
    good = [{**r, "path": str(r["path"])} for r in rows]
    data, kept, expected = fuzzed_manifest(good, seed=7, n_bad=len(FAULTS) * 2, folder=folder)
    manifest.write_bytes(data)

    tiny_autoencoder(seed=0).save_pretrained(cfg.paths.vae_dir)
    ensure_tiny_text_encoder(cfg)
    cache = build_latent_cache(cfg, stage, progress=False)
    index = json.loads((cache / "index.json").read_text())
    assert len(index["rejected"]) == len(expected)
    assert all(words in r["reason"] for (_, words), r in zip(expected, index["rejected"]))
    assert index["splits"]["train"]["count"] == sum(r["split"] == "train" for r in kept)
    assert len(LatentCacheDataset(cache)) == index["splits"]["train"]["count"]

    summary = train_stage(cfg, stage, track=False)
    assert summary["steps"] == 2 and math.isfinite(summary["final_loss"])
