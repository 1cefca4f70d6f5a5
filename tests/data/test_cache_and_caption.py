"""Data stages end to end on a tiny synthetic set: prepare -> caption (resumable) -> latent cache (equality)."""

from __future__ import annotations

import json

import pytest
import torch

from opensora_core.config import load_config
from opensora_core.data.cache import LatentCacheDataset, build_latent_cache
from opensora_core.data.caption import ExistingCaptioner, SyntheticCaptioner, caption_manifest
from opensora_core.data.dataset import VideoDataset
from opensora_core.data.manifest import read_manifest
from opensora_core.data.stages import caption_data, prepare_data


class StandInVAE:
    """Follows the VAE API: [B, 3, T, H, W] -> [B, 4, T, H/4, W/4] (fixed projection of 4x4 means)."""

    def __init__(self):
        self.proj = torch.linspace(-1, 1, 12).reshape(4, 3)
        self.calls = 0

    def encode(self, x):
        self.calls += 1
        pooled = torch.nn.functional.avg_pool3d(x, (1, 4, 4))
        return torch.einsum("oc,bcthw->bothw", self.proj, pooled)


class StandInText:
    """Follows the text encoder API: list[str] -> {"y": [B, 1, N, C], "mask": [B, N]}."""

    N, C = 12, 8

    def encode(self, texts):
        y = torch.zeros(len(texts), 1, self.N, self.C)
        mask = torch.zeros(len(texts), self.N, dtype=torch.long)
        for b, t in enumerate(texts):
            for k, w in enumerate(t.split()[: self.N]):
                g = torch.Generator().manual_seed(sum(map(ord, w)))
                y[b, 0, k] = torch.randn(self.C, generator=g)
                mask[b, k] = 1
        return {"y": y, "mask": mask}


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    return load_config(overrides=[f"run_dir={root}", "data.num_videos=20", "data.video_frames=16", "data.val_fraction=0.3",
                                  "stages.finetune_64f.num_frames=8", "stages.pretrain_256.frame_interval=3",
                                  "stages.finetune_512.frame_interval=3"])


@pytest.fixture(scope="module")
def captioned(cfg):
    prepare_data(cfg, progress=False)
    return caption_data(cfg, progress=False)


def test_prepare_is_idempotent(cfg, captioned):
    before = cfg.paths.raw_manifest.stat().st_mtime_ns
    assert prepare_data(cfg, progress=False) == cfg.paths.raw_manifest
    assert cfg.paths.raw_manifest.stat().st_mtime_ns == before


def test_synthetic_captions_are_the_ground_truth_with_both_splits(cfg, captioned):
    raw, out = read_manifest(cfg.paths.raw_manifest), read_manifest(captioned)
    assert list(out["text"]) == list(raw["text"]) and set(out["split"]) == {"train", "val"}
    assert list(out["color"]) == list(raw["color"])


class CountingCaptioner:
    name = "counting"

    def __init__(self, fail_after=None):
        self.seen, self.fail_after = [], fail_after

    def caption(self, rows):
        if self.fail_after is not None and len(self.seen) >= self.fail_after:
            raise KeyboardInterrupt  # the run is killed mid-way
        self.seen += [r["path"] for r in rows]
        return [f"caption of {r['path'].rsplit('/', 1)[-1]}" for r in rows]


def test_interrupted_captioning_resumes_without_redoing_finished_clips(cfg, captioned, tmp_path):
    out = tmp_path / "captioned.csv"
    first = CountingCaptioner(fail_after=8)
    with pytest.raises(KeyboardInterrupt):
        caption_manifest(cfg.paths.raw_manifest, out, first, batch_size=4, progress=False)
    assert not out.exists() and len(first.seen) == 8
    second = CountingCaptioner()
    caption_manifest(cfg.paths.raw_manifest, out, second, batch_size=4, progress=False)
    assert len(second.seen) == 12 and not set(first.seen) & set(second.seen)
    df = read_manifest(out)
    assert all(t == f"caption of {p.rsplit('/', 1)[-1]}" for p, t in zip(df["path"], df["text"]))


def test_existing_captioner_refuses_empty_captions():
    with pytest.raises(ValueError, match="no caption"):
        ExistingCaptioner().caption([{"path": "a.mp4", "text": ""}])
    with pytest.raises(ValueError, match="synthetic manifest"):
        SyntheticCaptioner().caption([{"path": "a.mp4", "text": "x"}])


def test_cached_latents_equal_freshly_encoded_ones(cfg, captioned):
    vae, text = StandInVAE(), StandInText()
    cache = build_latent_cache(cfg, "pretrain_256", vae=vae, text_encoder=text, encoder_key="standin", batch_size=4, progress=False)
    st = cfg.stage("pretrain_256")
    for split in ("train", "val"):
        cached = LatentCacheDataset(cache, split)
        fresh = VideoDataset(captioned, st.num_frames, st.frame_interval, st.image_size, split=split)
        assert len(cached) == len(fresh) > 0
        for i in (0, len(fresh) - 1):
            item, ref = cached[i], fresh[i]
            assert item["latent"].shape == (4, st.num_frames, st.image_size // 4, st.image_size // 4)
            assert torch.allclose(item["latent"], vae.encode(ref["video"][None])[0], atol=1e-6)
            emb = text.encode([ref["text"]])
            assert torch.equal(item["y"], emb["y"][0]) and torch.equal(item["mask"], emb["mask"][0])
            assert item["text"] == ref["text"] and item["index"] == ref["index"]


def test_cache_is_skipped_when_up_to_date_and_rebuilt_when_the_stage_changes(cfg, captioned):
    vae = StandInVAE()
    kw = dict(vae=vae, text_encoder=StandInText(), encoder_key="standin", progress=False)
    a = build_latent_cache(cfg, "finetune_512", **kw)
    calls = vae.calls
    build_latent_cache(cfg, "finetune_512", **kw)
    assert vae.calls == calls  # nothing re-encoded
    build_latent_cache(cfg, "finetune_512", **{**kw, "encoder_key": "another vae"})
    assert vae.calls > calls
    assert not a.with_name(a.name + ".tmp").exists()
    meta = json.loads((a / "index.json").read_text())
    assert meta["image_size"] == cfg.stage("finetune_512").image_size


def test_missing_cache_says_how_to_build_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="opensora data cache"):
        LatentCacheDataset(tmp_path / "nothing")


def test_cache_built_with_the_project_encoders_equals_fresh_encoding(cfg, captioned):
    """The default path: build_vae / build_text_encoder from the run folder (tiny VAE untrained: equality only)."""
    from opensora_core.encoders import build_text_encoder, build_vae
    from opensora_core.encoders.build import ensure_tiny_text_encoder
    from opensora_core.encoders.vae_train import tiny_autoencoder

    tiny_autoencoder(seed=0).save_pretrained(cfg.paths.vae_dir)
    ensure_tiny_text_encoder(cfg)
    cache = build_latent_cache(cfg, "pretrain_256", out=cfg.paths.root / "cache-real", progress=False)
    vae, text = build_vae(cfg), build_text_encoder(cfg)
    st = cfg.stage("pretrain_256")
    fresh = VideoDataset(captioned, st.num_frames, st.frame_interval, st.image_size, split="val")
    item = LatentCacheDataset(cache, "val")[0]
    assert torch.allclose(item["latent"], vae.encode(fresh[0]["video"][None])[0], atol=1e-5)
    emb = text.encode([fresh[0]["text"]])
    assert torch.allclose(item["y"], emb["y"][0]) and torch.equal(item["mask"], emb["mask"][0])
    assert item["y"].shape == (1, cfg.text_encoder.model_max_length, cfg.text_encoder.hidden_size)
