"""`opensora sample`, `opensora evaluate`, `opensora report`: videos from a checkpoint, the evaluate stage, the
comparison report.

Heavy imports (safetensors, torch) happen inside the commands, so `opensora --help` and the other commands
start without them.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from opensora_core import project
from opensora_core.cli.common import OverridesArgument, ParamsOption, PresetOption, fail, load_cli_config
from opensora_core.eval import evaluate
from opensora_core.eval.report import build_report


def register(app: typer.Typer) -> None:
    @app.command("sample")
    def sample(
        checkpoint: Path = typer.Option(..., "--checkpoint", help="a stage checkpoint dir (uses `latest`) or a step_XXXXXXX dir"),
        prompts: Path = typer.Option(..., "--prompts", help="text file, one prompt per line (a bundled one by its name, e.g. assets/prompts/showcase.txt)"),
        cfg_scale: float = typer.Option(7.0, "--cfg", help="classifier-free guidance scale"),
        steps: int = typer.Option(100, "--steps", help="IDDPM sampling steps (respaced)"),
        seed: int = typer.Option(0, "--seed"),
        batch_size: int = typer.Option(8, "--batch-size", help="prompts sampled together"),
        out: Path = typer.Option(None, "--out", help="output folder (default: <checkpoint>/samples)"),
        track: bool = typer.Option(True, "--track/--no-track", help="log the files to the stage's MLflow run"),
    ) -> None:
        """Generate one video per prompt with the checkpoint's EMA weights: mp4 (H.264), gif and a frame grid each."""
        from opensora_core.eval.sample import read_prompts, sample_checkpoint

        if not checkpoint.exists():
            fail(f"checkpoint {checkpoint} not found")

        try:
            texts = read_prompts(project.bundled_or_project(Path.cwd(), prompts))
        except (OSError, ValueError) as e:
            fail(str(e))
        out = out or checkpoint / "samples"
        from opensora_core.checkpoint import CheckpointError

        try:
            records = sample_checkpoint(checkpoint, texts, out, cfg_scale=cfg_scale, steps=steps, seed=seed,
                                        batch_size=batch_size, track=track)
        except (CheckpointError, FileNotFoundError) as e:  # checked before any video is written
            fail(str(e))
        typer.echo(f"wrote {len(records)} videos to {out}")

    @app.command("evaluate")
    def evaluate_cmd(
        overrides: list[str] = OverridesArgument,
        params: Path = ParamsOption,
        preset: str = PresetOption,
        stage: list[str] = typer.Option(None, "--stage", help="stages to evaluate (default: every trained stage)"),
        step0: bool = typer.Option(True, "--step0/--no-step0", help="also evaluate the untrained model"),
        track: bool = typer.Option(True, "--track/--no-track", help="log to an MLflow run named `evaluate`"),
    ) -> None:
        """Metrics of every trained stage and the step-0 model on held-out prompts -> eval/metrics.json + MLflow."""
        cfg = load_cli_config(params, preset, overrides)
        try:
            metrics = evaluate(cfg, stages=stage or None, include_step0=step0, track=track)
        except FileNotFoundError as e:
            fail(str(e))
        typer.echo(json.dumps({k: v for k, v in metrics.items() if k.startswith(("final.", "step0."))}, indent=1))
        typer.echo(f"all metrics: {cfg.paths.metrics}")

    @app.command("report")
    def report_cmd(
        overrides: list[str] = OverridesArgument,
        params: Path = ParamsOption,
        preset: str = PresetOption,
        runs: list[str] = typer.Option(None, "--runs", help="MLflow run ids to compare (repeat the option)"),
        experiment: str = typer.Option(None, "--experiment", help="compare every run of this experiment"),
        out: Path = typer.Option(None, "--out", help="output folder (default: <run_dir>/eval/report)"),
        track: bool = typer.Option(True, "--track/--no-track", help="log the report to MLflow"),
    ) -> None:
        """HTML report: loss curves of the chosen runs (fp16 vs bf16, lr, stages), metrics table, sample grids."""
        cfg = load_cli_config(params, preset, overrides)
        try:
            path = build_report(cfg, run_ids=runs or None, experiment=experiment, out_dir=out, track=track)
        except ValueError as e:
            fail(str(e))
        typer.echo(f"report: {path}")
