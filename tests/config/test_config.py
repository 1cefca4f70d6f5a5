"""params.yaml is validated at the edge: bad input names the field and the file, and stops with exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from opensora_core.config import ConfigError, load_config

from tests.kit import REPO, opensora

DEFAULT_PARAMS = REPO / "params.yaml"  # this repository is a project


def _params_with(tmp_path: Path, edit) -> Path:
    raw = yaml.safe_load(DEFAULT_PARAMS.read_text())
    edit(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_both_presets_of_the_shipped_params_are_valid():
    tiny = load_config()
    assert tiny.preset == "tiny" and tiny.model.name == "STDiT-tiny"
    big = load_config(preset="opensora-1.0")
    assert big.model.name == "STDiT-XL/2" and big.train.dtype == "bf16" and big.train.lr == 2e-5
    assert [big.stage(s).frame_interval for s in big.stage_names()] == [3, 3, 2]
    assert big.stage("finetune_64f").sp_size == 2


def test_top_level_sections_override_the_preset_and_null_keeps_it(tmp_path):
    path = _params_with(tmp_path, lambda r: r["train"].update(dtype="fp16", lr=None))
    cfg = load_config(path)
    assert cfg.train.dtype == "fp16"
    assert cfg.train.lr == yaml.safe_load(DEFAULT_PARAMS.read_text())["presets"]["tiny"]["train"]["lr"]


def test_command_line_overrides_apply_last_and_parse_yaml_scalars():
    cfg = load_config(overrides=["train.lr=1e-4", "stages.pretrain_256.max_steps=7", "model.patch_size=[1,2,2]"])
    assert cfg.train.lr == 1e-4 and cfg.stage("pretrain_256").max_steps == 7


def test_unknown_key_is_named_with_the_file(tmp_path):
    path = _params_with(tmp_path, lambda r: r["presets"]["tiny"]["model"].update(hidden_szie=8))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "model.hidden_szie: unknown key" in str(err.value) and str(path) in str(err.value)


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"train\.lr"):
        load_config(overrides=["train.lr=fast"])


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("stages.pretrain_256.num_frames=5", "stages.pretrain_256.num_frames"),
        ("stages.finetune_64f.sp_size=3", "stages.finetune_64f.sp_size"),
        ("stages.finetune_512.image_size=36", "stages.finetune_512.image_size"),
        ("model.num_heads=5", "hidden_size"),
        ("train.dtype=fp8", "train.dtype"),
        ("train.lr=-1", "train.lr"),
    ],
)
def test_impossible_values_are_refused_naming_the_field(override, field):
    if override.startswith("stages.pretrain_256.num_frames"):
        override = "model.patch_size=[2,2,2]"  # 4 tiny frames are fine for 1x2x2; a temporal patch of 2 is not for 5
        overrides = [override, "stages.pretrain_256.num_frames=5"]
    else:
        overrides = [override]
    with pytest.raises(ConfigError) as err:
        load_config(overrides=overrides)
    assert field in str(err.value)


def test_unknown_preset_is_refused():
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        load_config(preset="huge")


def test_cli_exits_2_before_writing_anything(tmp_path):
    out = opensora("--project", str(DEFAULT_PARAMS.parent), "config", "show", "train.dtype=fp8", cwd=tmp_path,
                   check=False)
    assert out.returncode == 2, out.stderr
    assert "train.dtype" in out.stderr and "params.yaml" in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_config_show_prints_the_resolved_preset():
    out = opensora("config", "show", "--preset", "opensora-1.0", "--json", check=False)
    assert out.returncode == 0, out.stderr
    assert '"name": "STDiT-XL/2"' in out.stdout
