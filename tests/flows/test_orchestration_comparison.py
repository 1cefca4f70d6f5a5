"""Comparison flows: variants train from the same inputs, linked from the shared run directory."""

from __future__ import annotations

from flows.comparison import link_inputs, upstream_closure
from opensora_core import pipeline


def test_a_stage_needs_every_earlier_stage_but_not_later_ones():
    cfg = pipeline.Params().load()
    assert upstream_closure(cfg, "train@finetune_512") == [
        "prepare", "caption", "encoders", "cache@pretrain_256", "train@pretrain_256", "cache@finetune_512"]


def test_variants_read_the_shared_inputs_through_links(tmp_path, fake_bodies):
    base = pipeline.Params(overrides=(f"run_dir={tmp_path / 'base'}",))
    for sid in ("prepare", "caption", "encoders", "cache@pretrain_256", "train@pretrain_256", "cache@finetune_512"):
        pipeline.run_stage(sid, base, track=False)
    variant = pipeline.Params(overrides=(f"run_dir={tmp_path / 'base/compare/precision/fp16'}", "train.dtype=fp16"))
    link_inputs(base.load(), variant.load(), "train@finetune_512")
    vcfg = variant.load()
    assert vcfg.paths.cache_dir("finetune_512").resolve() == base.load().paths.cache_dir("finetune_512").resolve()
    assert (vcfg.paths.ckpt_dir("pretrain_256") / "final.json").exists()
    result = pipeline.run_stage("train@finetune_512", variant, track=False)
    assert result.ran and not base.load().paths.ckpt_dir("finetune_512").exists()
