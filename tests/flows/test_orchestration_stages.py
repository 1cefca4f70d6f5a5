"""Stage functions: fingerprints, records, idempotency, resume, and agreement with dvc.yaml."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from opensora_core import pipeline
from opensora_core.config import load_config

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # this repository is a project




def _fps(overrides=()):
    cfg = load_config(overrides=list(overrides))
    return {sid: pipeline.fingerprint(cfg, sid) for sid in pipeline.stage_ids(cfg)}


def test_changing_the_learning_rate_changes_only_training_and_evaluation():
    before, after = _fps(), _fps(["train.lr=1e-4"])
    changed = {sid for sid in before if before[sid] != after[sid]}
    assert changed == {"train@pretrain_256", "train@finetune_512", "train@finetune_64f", "evaluate"}


def test_changing_one_stage_size_leaves_earlier_stages_alone():
    before, after = _fps(), _fps(["stages.finetune_512.image_size=64"])
    changed = {sid for sid in before if before[sid] != after[sid]}
    assert changed == {"cache@finetune_512", "train@finetune_512", "train@finetune_64f", "evaluate"}


def test_changing_the_dataset_changes_every_stage():
    before, after = _fps(), _fps(["data.num_videos=50"])
    assert all(before[s] != after[s] for s in before)


def _dvc_stage_params(dvc: dict) -> dict[str, set[str]]:
    """Stage id -> the `presets.${preset}.` params keys of dvc.yaml, with ${item}/${key} written as {s}."""
    out: dict[str, set[str]] = {}
    for name, st in dvc["stages"].items():
        body = st.get("do", st)
        keys = {p.removeprefix("presets.${preset}.").replace("${item}", "{s}").replace("${key}", "{s}")
                for p in body.get("params", []) if isinstance(p, str) and p.startswith("presets.${preset}.")}
        out[name] = keys
    return out


def test_dvc_yaml_depends_on_the_same_parameters_as_the_stage_fingerprints():
    dvc = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())
    params = _dvc_stage_params(dvc)
    for kind, keys in pipeline.STAGE_KEYS.items():
        assert params[kind] == {k for k in keys if k != "seed"}, kind


def test_dvc_yaml_stage_names_are_the_stage_ids():
    dvc = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())
    names = []
    for name, st in dvc["stages"].items():
        items = st.get("foreach")
        names += [f"{name}@{i}" for i in items] if items else [name]
    assert sorted(names) == sorted(pipeline.stage_ids(load_config()))


def test_a_stage_is_skipped_when_up_to_date_and_rerun_after_a_relevant_change(tmp_params, fake_bodies):
    for sid in ("prepare", "caption", "encoders", "cache@pretrain_256"):
        assert pipeline.run_stage(sid, tmp_params, track=False).ran
    assert not pipeline.run_stage("cache@pretrain_256", tmp_params, track=False).ran
    changed = pipeline.Params(overrides=tmp_params.overrides + ("stages.pretrain_256.image_size=32",))
    assert pipeline.run_stage("cache@pretrain_256", changed, track=False).ran
    assert not pipeline.run_stage("prepare", changed, track=False).ran
    assert fake_bodies.calls.count("cache@pretrain_256") == 2


def test_force_reruns_a_finished_stage(tmp_params, fake_bodies):
    pipeline.run_stage("prepare", tmp_params, track=False)
    assert pipeline.run_stage("prepare", tmp_params, force=True, track=False).ran
    assert fake_bodies.calls == ["prepare", "prepare"]


def test_a_killed_training_job_resumes_while_a_changed_config_starts_over(tmp_params, fake_bodies):
    for sid in ("prepare", "caption", "encoders", "cache@pretrain_256"):
        pipeline.run_stage(sid, tmp_params, track=False)
    fake_bodies.fail_train_once.add("train@pretrain_256")
    with pytest.raises(RuntimeError, match="job killed"):
        pipeline.run_stage("train@pretrain_256", tmp_params, track=False)
    cfg = tmp_params.load()
    assert pipeline.read_record(cfg, "train@pretrain_256")["status"] == "running"
    pipeline.run_stage("train@pretrain_256", tmp_params, force=True, track=False)  # DVC's retry passes --force
    final = json.loads((cfg.paths.ckpt_dir("pretrain_256") / "final.json").read_text())
    assert final["resumed"] == 1

    fake_bodies.fail_train_once.add("train@pretrain_256")
    with pytest.raises(RuntimeError):
        pipeline.run_stage("train@pretrain_256", tmp_params, force=True, track=False)
    other = pipeline.Params(overrides=tmp_params.overrides + ("train.lr=1e-4",))
    pipeline.run_stage("train@pretrain_256", other, track=False)
    final = json.loads((cfg.paths.ckpt_dir("pretrain_256") / "final.json").read_text())
    assert final["resumed"] == 0


def test_missing_upstream_outputs_name_the_stage_to_run(tmp_params, fake_bodies):
    with pytest.raises(FileNotFoundError, match="opensora pipeline stage prepare"):
        pipeline.run_stage("caption", tmp_params, track=False)
    assert fake_bodies.calls == []


def test_stream_command_passes_progress_redraws_and_lines_in_order():
    lines: list[str] = []
    code = "import sys; sys.stdout.write('a\\rb\\nc\\r\\nlast'); sys.stdout.flush(); sys.exit(3)"
    rc = pipeline.stream_command([sys.executable, "-c", code], lines.append)
    assert rc == 3
    assert lines == ["a", "b", "c", "last"]


def test_unknown_stage_ids_are_rejected():
    with pytest.raises(ValueError, match="unknown stage"):
        pipeline.split_id("train")
    with pytest.raises(ValueError, match="unknown stage"):
        pipeline.split_id("bake@pretrain_256")
