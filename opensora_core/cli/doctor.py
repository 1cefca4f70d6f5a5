"""`opensora doctor`: will this config run here? Environment checks and per-GPU memory of each training stage.

Exit status: 0 when every check passed (warnings allowed) and every stage fits; 1 when a check failed or a
stage does not fit the GPU memory; 2 for bad input (unknown stage or engine, invalid parameters).

Heavy imports (torch) happen inside the commands, so `opensora --help` and the other commands start without
them.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import typer

from opensora_core.cli.common import OverridesArgument, ParamsOption, PresetOption, fail, load_cli_config
from opensora_core.doctor import memory, plan

STATUS_STYLE = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "skip": "[dim]skip[/]", "fail": "[red]FAIL[/]"}


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f}"


def _detected_gpu_memory_gib() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / 2**30


def memory_rows(cfg, stages: list[str], gpus: int | None, engine: str | None, gpu_memory: float | None, shapes=None):
    """(rows of the memory table, any stage does not fit, predictions) for `stages`."""
    budget = memory.usable_bytes(gpu_memory) if gpu_memory else None
    rows, too_big, predictions = [], False, []
    for stage in stages:
        st = cfg.stage(stage)
        w = plan.workload(cfg, stage, gpus, engine, shape=(shapes or {}).get(stage))
        p = memory.predict(w)
        predictions.append((stage, p))
        encoders = sum(v for k, v in p.parts.items() if k in ("encoder weights", "VAE encoding workspace"))
        activations = sum(v for k, v in p.parts.items() if k.startswith(("activations", "backward")))
        states = p.peak - encoders - activations
        if budget is None:
            verdict = "[dim]give --gpu-memory[/]"
        elif p.peak <= budget:
            verdict = "[green]fits[/]"
        else:
            too_big = True
            n = memory.largest_batch(w, budget)
            verdict = f"[red]does not fit[/]; largest batch that fits: {n}"
            if not w.grad_checkpoint:
                verdict += f" ({memory.largest_batch(replace(w, grad_checkpoint=True), budget)} with grad_checkpoint)"
        rows.append([stage, f"{st.num_frames}x{st.image_size}", str(w.batch), "yes" if w.grad_checkpoint else "no",
                     f"{w.engine} x{w.gpus}" + (f" sp{w.sp_size}" if w.sp_size > 1 else ""), w.dtype,
                     _gib(states), _gib(activations), _gib(encoders) if w.encoders else "cached", _gib(p.peak), verdict])
    return rows, too_big, predictions


def register(app: typer.Typer) -> None:
    @app.command("doctor")
    def doctor(
        stage: list[str] = typer.Option(None, "--stage", help="training stage(s) to predict (default: all)"),
        gpus: int = typer.Option(None, "--gpus", min=1, help="GPUs (ranks) of the job (default: train.processes)"),
        gpu_memory: float = typer.Option(None, "--gpu-memory", min=0.1,
                                         help="GiB per GPU (default: the detected GPU's; needed on CPU-only machines)"),
        engine: str = typer.Option(None, "--engine", help="torch | colossalai | fsdp, or ddp | zero2 "
                                   "(default: train.engine)"),
        breakdown: bool = typer.Option(False, "--breakdown", help="also print each stage's memory by part"),
        skip_checks: bool = typer.Option(False, "--skip-checks", help="only the memory table"),
        params: Path = ParamsOption,
        preset: str = PresetOption,
        overrides: list[str] = OverridesArgument,
    ) -> None:
        """Check torch/NCCL, the engine, H.264 decoding, disk, MLflow, Prefect, the DVC remote and S3, and predict
        each training stage's per-GPU memory ("fits" / "does not fit; largest batch that fits: N")."""
        from rich.console import Console
        from rich.table import Table

        from opensora_core.doctor import checks, plan

        cfg = load_cli_config(params, preset, overrides)
        stages = stage or cfg.stage_names()
        unknown = [s for s in stages if s not in cfg.stages]
        if unknown:
            fail(f"--stage: unknown stage {unknown[0]!r}; params.yaml defines {', '.join(cfg.stage_names())}")
        try:
            plan.memory_engine(cfg, engine)
        except ValueError as e:
            fail(f"--engine: {e}")

        # a terminal's own width; piped or captured output gets one line per row (greppable verdicts)
        console = Console(soft_wrap=False, width=None if sys.stdout.isatty() else 200)
        shapes = {s: plan.model_shape(cfg, s) for s in stages}  # one meta-device build per stage

        failed = []
        if not skip_checks:
            table = Table(title=f"opensora doctor: {cfg.preset} preset, project {cfg.project_dir}")
            for col in ("check", "status", "verdict"):
                table.add_column(col, overflow="fold")
            for c in checks.run_checks(cfg, plan.disk_needs(cfg, stages, shapes), gpus, engine):
                table.add_row(c.name, STATUS_STYLE[c.status], c.verdict)
                if c.failed:
                    failed.append(f"{c.name}: {c.verdict}")
            console.print(table)

        detected = _detected_gpu_memory_gib()
        memory_gib = gpu_memory or detected
        rows, too_big, predictions = memory_rows(cfg, stages, gpus, engine, memory_gib, shapes)
        title = "per-GPU memory (GiB): " + (f"{memory_gib:.0f} GiB per GPU" + (" (detected)" if gpu_memory is None else "")
                                            if memory_gib else "no GPU here and no --gpu-memory: predictions only")
        table = Table(title=title)
        for col in ("stage", "frames x size", "batch/GPU", "grad ckpt", "engine", "dtype", "model states",
                    "activations", "VAE+T5", "peak", "verdict"):
            table.add_column(col, overflow="fold")
        for row in rows:
            table.add_row(*row)
        console.print(table)
        if breakdown:
            for name, p in predictions:
                part_table = Table(title=f"{name}: predicted peak {p.peak / 2**30:.2f} GiB")
                part_table.add_column("part")
                part_table.add_column("GiB", justify="right")
                for part, value in p.parts.items():
                    part_table.add_row(part, f"{value / 2**30:.3f}")
                console.print(part_table)
        if memory_gib:
            console.print("[dim]fits = predicted peak <= (GPU memory - 1 GiB CUDA context) x 0.95 allocator slack[/]")
        if failed or too_big:
            for line in failed:
                typer.secho(f"error: {line}", fg=typer.colors.RED, err=True)
            if too_big:
                typer.secho("error: a stage does not fit the GPU memory (see the table)", fg=typer.colors.RED, err=True)
            raise typer.Exit(1)
