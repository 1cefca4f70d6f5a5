"""The data-prep flow on a local 2-worker Dask cluster gives exactly the single-process result, and resumes."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Prefect state of these tests in tmp, not the project's .prefect/ (set before flows/prefect are imported)
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect-test-"))
os.environ.setdefault("PREFECT_API_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{os.environ['PREFECT_HOME']}/prefect.db")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]  # the temporary Prefect API server alone takes 30-40 s to start on 2 busy cores

STAGE = "pretrain_256"  # tiny preset: 4 frames, stride 3, 32 px


class PathCaptioner:
    """Deterministic stand-in for a VLM: the caption names the file and the clip start."""

    name = "path"

    def caption(self, rows):
        return [f"clip {Path(r['path']).stem} from {float(r['start']):.2f}s" for r in rows]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Raw videos (6 synthetic clips + a duplicate, a zero-byte file, a text file named .mp4), the tiny encoders,
    and the single-process reference: ingest -> caption_manifest -> build_latent_cache."""
    from opensora_core.config import RunPaths, load_config
    from opensora_core.data.cache import build_latent_cache
    from opensora_core.data.caption import caption_manifest
    from opensora_core.data.ingest import ingest
    from opensora_core.data.synthetic import generate_synthetic
    from opensora_core.encoders import build_text_encoder, build_vae
    from opensora_core.encoders.build import ensure_tiny_text_encoder
    from opensora_core.encoders.vae_train import tiny_autoencoder
    from opensora_core.pipeline import Params

    tmp = tmp_path_factory.mktemp("dask_prep")
    generate_synthetic(tmp / "syn", num=6, frames=16, size=32, seed=3, workers=1, progress=False)
    src = tmp / "syn" / "videos"
    shutil.copy(src / "000000.mp4", src / "zz_duplicate.mp4")
    (src / "empty.mp4").write_bytes(b"")
    (src / "notes.mp4").write_text("not a video\n")
    params = Params(overrides=(f"run_dir={tmp / 'run'}", "data.source=ingest", f"data.src={src}", "data.min_resolution=16",
                               "data.val_fraction=0.3"))
    cfg = params.load()
    tiny_autoencoder(seed=0).save_pretrained(cfg.paths.vae_dir)
    ensure_tiny_text_encoder(cfg)

    ref = RunPaths(tmp / "reference")  # the same layout, so the manifests' relative paths are the same
    ingest(src, ref.raw_dir, min_duration=cfg.data.min_duration, max_duration=cfg.data.max_duration,
           min_resolution=16, workers=1, progress=False)
    caption_manifest(ref.raw_manifest, ref.manifest, PathCaptioner(), val_fraction=0.3, progress=False)
    build_latent_cache(cfg, STAGE, vae=build_vae(cfg), text_encoder=build_text_encoder(cfg), manifest=ref.manifest,
                       out=ref.cache_dir(STAGE), batch_size=2, shard_size=2, progress=False)
    return {"params": params, "cfg": load_config(overrides=list(params.overrides)), "ref": ref}


def _run(params):
    from flows.data_prep import run_data_prep

    return run_data_prep(params, workers=2, threads_per_worker=1, processes=False, captioner=PathCaptioner(),
                         cache_stages=[STAGE], shard_size=2, batch_size=2)


@pytest.fixture(scope="module")
def first_run(setup):
    return _run(setup["params"])


def test_two_dask_workers_give_the_single_process_manifest_rejects_captions_and_latents(setup, first_run):
    from safetensors.torch import load_file

    cfg, ref = setup["cfg"], setup["ref"]
    assert first_run["prepare"]["files_processed"] == 9
    assert cfg.paths.raw_manifest.read_bytes() == ref.raw_manifest.read_bytes()
    assert cfg.paths.rejects.read_bytes() == ref.rejects.read_bytes()
    rejects = cfg.paths.rejects.read_text()
    assert "empty.mp4" in rejects and "notes.mp4" in rejects and "zz_duplicate.mp4" in rejects
    assert cfg.paths.manifest.read_bytes() == ref.manifest.read_bytes()  # captions and split too

    got_dir, want_dir = cfg.paths.cache_dir(STAGE), ref.cache_dir(STAGE)
    got, want = (json.loads((d / "index.json").read_text()) for d in (got_dir, want_dir))
    assert got["fingerprint"] == want["fingerprint"]
    assert got["splits"] == want["splits"]  # shard files, counts, texts, manifest rows
    assert sum(s["count"] for s in got["splits"].values()) == 6
    for split in want["splits"].values():
        for shard in split["shards"]:
            a, b = load_file(str(got_dir / shard["file"])), load_file(str(want_dir / shard["file"]))
            assert a.keys() == b.keys()
            for k in a:
                assert a[k].equal(b[k]), f"{shard['file']}:{k} differs"


def test_a_rerun_of_the_flow_probes_and_encodes_nothing_again(setup, first_run):
    cfg = setup["cfg"]
    manifest = cfg.paths.manifest.read_bytes()
    again = _run(setup["params"])
    assert again["prepare"] == {"files_processed": 0}
    # a custom captioner is rerun (as with caption_data: the stamp only vouches for the configured one), gives the
    # same manifest, so the cache's fingerprint holds and no clip is encoded again
    assert cfg.paths.manifest.read_bytes() == manifest
    assert again["cache"] == {STAGE: {"clips_encoded": 0}}


def test_an_interrupted_ingest_maps_only_the_missing_files(setup, tmp_path):
    from opensora_core.io import read_jsonl
    from opensora_core.data.ingest import PROGRESS

    progress = setup["cfg"].paths.raw_dir / PROGRESS
    records = read_jsonl(progress, "path")
    assert len(records) == 9
    kept = [json.dumps(r) for r in list(records.values())[:5]]
    progress.write_text("\n".join(kept) + "\n" + kept[-1][:20])  # 4 files lost, last line cut by the crash
    (setup["cfg"].paths.raw_dir / "prepare.json").unlink()
    from flows.data_prep import run_data_prep

    again = run_data_prep(setup["params"], workers=2, processes=False, steps=("prepare",))
    assert again["prepare"] == {"files_processed": 4}
    assert setup["cfg"].paths.raw_manifest.read_bytes() == setup["ref"].raw_manifest.read_bytes()


@pytest.mark.timeout(600)
def test_the_pipelines_own_stages_on_dask_write_what_they_write_in_one_process(setup, tmp_path):
    """`data.dask: local:2` in the pipeline's prepare and cache stages (the front door every route takes) gives the
    single-process stages' manifest, rejects and latent shards, byte for byte."""
    from opensora_core.data.caption import caption_manifest
    from opensora_core.pipeline import Params, run_stage

    base = setup["params"].overrides
    outputs = {}
    for name, extra in (("single", ()), ("dask", ("data.dask=local:2",))):
        params = Params(overrides=(*base, f"run_dir={tmp_path / name}", *extra))
        cfg = params.load()
        shutil.copytree(setup["cfg"].paths.encoders_dir, cfg.paths.encoders_dir)
        run_stage("prepare", params, track=False, on_line=lambda line: None)
        caption_manifest(cfg.paths.raw_manifest, cfg.paths.manifest, PathCaptioner(), val_fraction=0.3, progress=False)
        run_stage(f"cache@{STAGE}", params, track=False, on_line=lambda line: None)
        outputs[name] = cfg.paths
    single, dask = outputs["single"], outputs["dask"]
    assert dask.raw_manifest.read_bytes() == single.raw_manifest.read_bytes()
    assert dask.rejects.read_bytes() == single.rejects.read_bytes()
    got, want = (json.loads((p.cache_dir(STAGE) / "index.json").read_text()) for p in (dask, single))
    assert got["splits"] == want["splits"] and got["fingerprint"] == want["fingerprint"]
    for split in want["splits"].values():
        for shard in split["shards"]:
            assert (dask.cache_dir(STAGE) / shard["file"]).read_bytes() == (single.cache_dir(STAGE) / shard["file"]).read_bytes()


def test_data_dask_names_a_cluster_or_is_refused():
    from opensora_core.config import ConfigError, load_config

    for good in ("local", "local:3", "tcp://10.0.0.5:8786", "scheduler:8786"):
        assert load_config(overrides=[f"data.dask={good}"]).data.dask == good
    with pytest.raises(ConfigError, match="data: dask 'local:0'"):
        load_config(overrides=["data.dask=local:0"])
