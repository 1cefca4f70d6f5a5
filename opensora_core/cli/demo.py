"""`opensora demo`: the main job, the whole tiny pipeline through the Prefect flow, then where to look.

    opensora demo [--force]
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from opensora_core import pipeline
from opensora_core.cli.common import OverridesArgument, ParamsOption, PresetOption
from opensora_core.cli.pipeline import cli_params, print_rows, run_flow
from opensora_core.tracking import experiment_url


def demo_cmd(
    force: bool = typer.Option(False, "--force", help="rerun every stage even if up to date"),
    params: Path = ParamsOption,
    preset: str = PresetOption,
    overrides: list[str] = OverridesArgument,
) -> None:
    """The main job: the whole tiny pipeline on CPU through the Prefect flow, then where to look."""
    t0 = time.time()
    p = cli_params(params, preset, overrides)
    cfg = p.load()
    typer.secho(f"opensora demo: preset {cfg.preset}, {len(pipeline.stage_ids(cfg))} stages, run dir {cfg.root}", bold=True)
    rows = run_flow(p, None, force, 1, None)
    wall = time.time() - t0
    print_rows(rows)
    task_s = sum(r.get("seconds", 0) for r in rows)
    body_s = sum(r.get("stage_seconds", 0) for r in rows)
    final_samples = cfg.paths.eval_dir / "samples" / cfg.stage_names()[-1]  # the final model's videos first
    samples = sorted(final_samples.glob("*.mp4"))[:4] or (sorted(cfg.paths.eval_dir.rglob("*.mp4"))[:4]
                                                          if cfg.paths.eval_dir.exists() else [])
    typer.secho(f"\ndone in {wall:.0f} s: {body_s:.0f} s in the stages' own work, {task_s - body_s:.0f} s starting stage "
                f"processes + DVC + MLflow, {wall - task_s:.0f} s in Prefect (flow, tasks, temporary API). Where to look:", bold=True)

    typer.echo(f"  MLflow UI:       make mlflow-ui   ->  {experiment_url(cfg)}  (parent run 'progressive-training-...')")
    typer.echo(f"  metrics:         .venv/bin/dvc metrics show   ({cfg.paths.metrics})")
    typer.echo(f"  sample videos:   {cfg.paths.eval_dir}" + "".join(f"\n                   {s}" for s in samples))
    typer.echo(f"  loss curves:     .venv/bin/dvc plots show   ({cfg.paths.ckpt_dir('*')}/train_log.csv)")
    typer.echo("  Prefect runs:    .venv/bin/opensora pipeline server  (UI at http://127.0.0.1:4200)")
    typer.echo("  rerun:           make demo (reuses what is up to date; --force retrains)")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)
