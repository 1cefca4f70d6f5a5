"""The evaluate stage end to end on a tiny run directory: metrics.json under stable names, samples, MLflow run."""

from __future__ import annotations

import json

import pytest
import torch

STAGES = ("pretrain_256", "finetune_512", "finetune_64f")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run dir with a 12-clip synthetic manifest (split column) and one checkpoint per stage of a 1-block STDiT."""
    from opensora_core.config import load_config
    from opensora_core.data.manifest import read_manifest, write_manifest
    from opensora_core.data.synthetic import generate_synthetic
    from opensora_core.checkpoint import TrainState, save_checkpoint
    from opensora_core.models.stage import build_stage_model

    root = tmp_path_factory.mktemp("run")
    cfg = load_config(overrides=[
        f"run_dir={root}", f"tracking.uri=sqlite:///{root}/mlflow.db", "tracking.experiment=eval-test",
        "model.hidden_size=32", "model.depth=1", "model.num_heads=2", "text_encoder.hidden_size=16",
        "text_encoder.model_max_length=8", "eval.num_prompts=4", "eval.sampling_steps=2", "eval.cfg_scale=2.0",
        "stages.pretrain_256.image_size=16", "stages.finetune_512.image_size=32",
        "stages.finetune_64f.image_size=32", "stages.finetune_64f.num_frames=8",
    ])
    raw = generate_synthetic(root / "raw", num=12, frames=32, size=64, seed=3, workers=1, progress=False)
    df = read_manifest(raw)
    df["split"] = ["train"] * 6 + ["val"] * 6
    cfg.paths.manifest.parent.mkdir(parents=True, exist_ok=True)
    df["path"] = [str(p) for p in df["path"]]
    write_manifest(df, cfg.paths.manifest)
    for i, stage in enumerate(STAGES):
        torch.manual_seed(i)
        # perturbed weights stand in for training (STDiT's zero-initialised output layer would make every
        # untrained model predict the same)
        sd = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v
              for k, v in build_stage_model(cfg, stage).state_dict().items()}
        state = TrainState(step=10 * (i + 1), epoch=0, config=cfg.model_dump(mode="json"), extra={"stage": stage})
        save_checkpoint(cfg.paths.ckpt_dir(stage), state, sd, sd, None)
    return cfg


@pytest.mark.slow
def test_evaluate_writes_stable_metric_names_samples_and_the_same_numbers_to_mlflow(tiny_run, tiny_stack, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("OPENSORA_PARENT_RUN_ID", raising=False)
    from opensora_core.encoders.vae import VideoAutoencoderKL
    from opensora_core.eval.evaluation import evaluate

    cfg = tiny_run
    _, vae, text = tiny_stack
    if getattr(text, "hidden_size", 16) != 16:
        pytest.fail("the tiny text encoder must have 16 channels")
    assert isinstance(vae, VideoAutoencoderKL)
    metrics = evaluate(cfg, vae=vae, text_encoder=text, progress=False)

    on_disk = json.loads(cfg.paths.metrics.read_text())
    assert on_disk == pytest.approx(metrics, nan_ok=True)
    for model in ("step0", "final", *STAGES):
        for name in ("color_acc", "motion_acc", "direction_acc", "color_chance", "motion_chance", "temporal_change",
                     "fd_randproj", "heldout_loss", "heldout_loss_b0", "heldout_loss_b3"):
            assert f"{model}.{name}" in metrics, f"{model}.{name}"
    assert metrics["final.heldout_loss"] == metrics["finetune_64f.heldout_loss"]
    assert metrics["reference.color_acc"] >= 0.99 and metrics["reference.motion_acc"] >= 0.99
    assert len(list((cfg.paths.eval_dir / "samples" / "finetune_64f").glob("*.mp4"))) == 4

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{cfg.root}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["eval-test"], filter_string="tags.stage = 'evaluate'", output_format="list")
    assert len(runs) == 1 and runs[0].info.run_name == "evaluate"
    logged = runs[0].data.metrics
    for k, v in metrics.items():
        if v == v:  # NaN is not logged
            assert logged[k] == pytest.approx(v), k


def test_heldout_loss_is_identical_for_two_calls_and_differs_between_models(tiny_run, tiny_stack):
    from opensora_core.diffusion import IDDPM
    from opensora_core.eval.evaluation import _real_clips, stage_model, step0_model
    from opensora_core.eval.heldout import heldout_loss
    from opensora_core.eval.prompts import heldout_rows

    cfg = tiny_run
    _, vae, text = tiny_stack
    rows = heldout_rows(cfg)
    latents = vae.encode(_real_clips(cfg, rows, "pretrain_256")).float()
    enc = text.encode([r["text"] for r in rows])
    d = IDDPM(timestep_respacing="")
    trained = stage_model(cfg, "pretrain_256")
    a = heldout_loss(trained, d, latents, enc["y"], enc["mask"], seed=5, batch_size=4)
    b = heldout_loss(trained, d, latents, enc["y"], enc["mask"], seed=5, batch_size=2)
    c = heldout_loss(step0_model(cfg, "pretrain_256"), d, latents, enc["y"], enc["mask"], seed=5)
    assert a == pytest.approx(b, rel=1e-5)
    assert a["heldout_loss"] != c["heldout_loss"]
    assert set(a) == {"heldout_loss", "heldout_loss_b0", "heldout_loss_b1", "heldout_loss_b2", "heldout_loss_b3"}


def test_held_out_prompts_are_distinct_captions(tiny_run, tmp_path):
    """Two held-out clips of one caption are one prompt (a clip of the synthetic preset is a function of its caption)."""
    import pandas as pd

    from opensora_core.data.manifest import read_manifest, write_manifest
    from opensora_core.eval.prompts import heldout_rows

    df = read_manifest(tiny_run.paths.manifest)
    val = df[df["split"] == "val"]
    cfg = tiny_run.model_copy(update={"run_dir": str(tmp_path)})
    cfg.paths.manifest.parent.mkdir(parents=True)
    write_manifest(pd.concat([df, val.head(2)]), cfg.paths.manifest)
    rows = heldout_rows(cfg, n=100)
    assert len(rows) == val["text"].nunique() == len({r["text"] for r in rows})


@pytest.mark.slow
def test_eval_seeds_score_every_prompt_once_per_seed_and_step0_once(tiny_run, tiny_stack, monkeypatch):
    monkeypatch.delenv("OPENSORA_PARENT_RUN_ID", raising=False)
    from opensora_core.eval.evaluation import evaluate

    cfg = tiny_run.model_copy(update={"eval": tiny_run.eval.model_copy(update={"seeds": 2})})
    _, vae, text = tiny_stack
    metrics = evaluate(cfg, stages=["pretrain_256"], track=False, progress=False, vae=vae, text_encoder=text)
    prompts = metrics["step0.adherence_n"]
    assert prompts > 0 and metrics["pretrain_256.adherence_n"] == 2 * prompts
    # the files a person looks at: one per prompt (the first seed's)
    assert len(list((cfg.paths.eval_dir / "samples" / "pretrain_256").glob("*.mp4"))) == prompts
