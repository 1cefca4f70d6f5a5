"""`opensora bench reference`: ours vs Open-Sora 1.0's STDiT, interleaved, on the same weights and inputs.

CI has no network, so no Open-Sora checkout: these tests load tests/bench/oracle_checkout (an
Open-Sora-shaped folder whose STDiT is the float64 oracle of tests/models/reference_stdit.py, importing xformers / timm /
mmengine like the real file) through the same loader. With OPENSORA_REFERENCE=DIR (a real v1.0.0 checkout)
the last test also checks our model against Open-Sora's own code.
"""

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from opensora_core.bench import reference as rb
from opensora_core.bench.opensora_reference import ReferenceCheckoutError, build_reference_like, load_reference_stdit
from opensora_core.bench.step import interleaved_times
from opensora_core.models.registry import build_model

ORACLE_CHECKOUT = Path(__file__).parent / "oracle_checkout"
SMALL = dict(depth=1, hidden_size=32, num_heads=4, latent=(2, 4, 4), batch_size=2, caption_tokens=6,
             caption_channels=16, rounds=3, warmup=1, threads=1)


def test_benchmark_times_both_models_interleaved_and_checks_they_compute_the_same_function():
    contenders = [rb.opensora_contender(ORACLE_CHECKOUT), rb.ours_contender(), rb.ours_contender("ours, foreach", "foreach")]
    rows = rb.run_reference_benchmark(contenders, rb.ReferenceBenchConfig(**SMALL), log=lambda *_: None)
    assert [r["model"] for r in rows] == ["Open-Sora 1.0", "ours", "ours, foreach"]
    assert rows[0]["ratio"] == 1.0
    tokens_per_step = 2 * 2 * 2 * 2
    for r in rows:
        assert r["rounds"] == 3 and r["tokens/s"] > 0 and r["cpu_ms"] > 0
        low, high = (float(v) for v in r["min-max tokens/s"].split("-"))
        assert low - 1 <= r["tokens/s"] <= high + 1  # the bounds are printed rounded to whole tokens/s
        assert r["step_ms"] == pytest.approx(tokens_per_step / r["tokens/s"] * 1e3, rel=0.01, abs=0.1)
        assert r["max|diff|"] < 1e-4  # the same function (the oracle runs in float64)


def test_rounds_alternate_the_order_of_the_contenders():
    calls = []
    steps = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    times = interleaved_times(steps, rounds=3, steps_per_round=1, device=torch.device("cpu"))
    assert calls == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    assert {k: (len(v["wall"]), len(v["cpu"])) for k, v in times.items()} == {"a": (3, 3), "b": (3, 3), "c": (3, 3)}


def test_loading_a_checkout_leaves_no_stand_in_or_opensora_module_behind():
    before = set(sys.modules)
    reference_cls = load_reference_stdit(ORACLE_CHECKOUT)
    assert reference_cls.__name__ == "STDiT"
    leaked = {m for m in set(sys.modules) - before if m.split(".")[0] in ("opensora", "xformers", "timm", "mmengine")}
    assert leaked == set()


def test_a_folder_without_open_sora_is_refused_with_the_command_to_make_one(tmp_path):
    with pytest.raises(ReferenceCheckoutError, match="git --git-dir=MIRROR archive v1.0.0"):
        load_reference_stdit(tmp_path)


@pytest.mark.slow
def test_bench_reference_command_prints_table_and_logs_to_mlflow(tmp_path, monkeypatch):
    from opensora_core.cli import app

    small = replace(rb.ReferenceBenchConfig(), **SMALL)
    monkeypatch.setattr(rb, "ReferenceBenchConfig", lambda: small)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    result = CliRunner().invoke(app, ["bench", "reference", "--reference", str(ORACLE_CHECKOUT), "--rounds", "3",
                                      "--warmup", "1", "--latent", "2x4x4", "--also", "foreach"])
    assert result.exit_code == 0, result.output
    assert "Open-Sora 1.0" in result.output and "tokens/s" in result.output and "ours / Open-Sora 1.0" in result.output

    import mlflow

    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.bench = 'reference'")
    assert len(runs) == 1
    assert runs.iloc[0]["metrics.ours.tokens_per_s"] > 0 and runs.iloc[0]["metrics.Open-Sora_1_0.ratio"] == 1.0
    artifact = mlflow.artifacts.download_artifacts(run_id=runs.iloc[0]["run_id"], artifact_path="bench_reference.json")
    assert len(json.load(open(artifact))["data"]) == 3


@pytest.mark.parametrize("args, field", [(["--reference", "/nonexistent"], "--reference"),
                                         (["--reference", str(ORACLE_CHECKOUT), "--latent", "8x16"], "--latent"),
                                         (["--reference", str(ORACLE_CHECKOUT), "--also", "bf16"], "--also")])
def test_bench_reference_rejects_bad_options_with_exit_2(args, field):
    from opensora_core.cli import app

    result = CliRunner().invoke(app, ["bench", "reference", "--no-track", *args])
    assert result.exit_code == 2 and field in result.output


@pytest.mark.skipif(not os.environ.get("OPENSORA_REFERENCE"), reason="set OPENSORA_REFERENCE to an Open-Sora v1.0.0 checkout")
def test_ours_matches_open_soras_own_stdit_in_outputs_and_gradients():
    torch.manual_seed(0)
    ours = build_model("STDiT-tiny", depth=2, hidden_size=64, num_heads=4, input_size=(4, 8, 8), caption_channels=16,
                       model_max_length=6, class_dropout_prob=0.0)
    rb._randomize_zero_init(ours, 0)
    ref = build_reference_like(load_reference_stdit(os.environ["OPENSORA_REFERENCE"]), ours)
    cfg = replace(rb.ReferenceBenchConfig(), latent=(4, 8, 8), caption_tokens=6, caption_channels=16)
    inputs = rb.bench_inputs(cfg, ours, torch.device("cpu"))
    args = (inputs["x"], inputs["timestep"], inputs["y"], inputs["mask"])
    for model in (ours, ref):
        torch.nn.functional.mse_loss(model.train()(*args), inputs["target"]).backward()
    with torch.no_grad():  # float32 on both sides (Open-Sora casts its inputs to float32)
        torch.testing.assert_close(ours.eval()(*args), ref.eval()(*args), rtol=1e-4, atol=1e-5)
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=1e-3, atol=1e-6, msg=name)
