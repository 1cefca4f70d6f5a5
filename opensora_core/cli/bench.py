"""`opensora bench model` (DiT vs STDiT), `bench reference` (ours vs Open-Sora 1.0's STDiT), `bench data`:
throughput tables (rich), logged to MLflow."""

from __future__ import annotations

from pathlib import Path

import typer

from opensora_core.cli.common import OverridesArgument, ParamsOption, PresetOption, fail, load_cli_config


def _rows_table(title: str, rows: list[dict], left: tuple[str, ...]):
    """A rich table of benchmark rows (one column per key; `left` columns left-aligned, numbers right)."""
    from rich.table import Table

    table = Table(title=title)
    for col in rows[0]:
        table.add_column(col, justify="left" if col in left else "right")
    for r in rows:
        table.add_row(*(str(v) for v in r.values()))
    return table


def register(app: typer.Typer) -> None:
    bench = typer.Typer(help="Benchmarks (throughput tables).", no_args_is_help=True)
    app.add_typer(bench, name="bench")

    @bench.command("model")
    def model(
        overrides: list[str] = OverridesArgument,
        device: str = typer.Option("cpu", "--device", help="cpu (tiny sizes, ~1 min) or cuda (XL/2 sizes)"),
        size: str = typer.Option(None, "--size", help="tiny | xl2 (default: tiny on cpu, xl2 on cuda)"),
        steps: int = typer.Option(None, "--steps", help="timed steps per row (default 5 cpu / 10 cuda)"),
        warmup: int = typer.Option(None, "--warmup", help="untimed steps first (default 2 cpu / 3 cuda)"),
        peak_tflops: float = typer.Option(None, "--peak-tflops", help="device peak TFLOP/s for an MFU column"),
        params: Path = ParamsOption,
        preset: str = PresetOption,
        no_track: bool = typer.Option(False, "--no-track", help="do not log to MLflow"),
        engines: str = typer.Option(None, "--engines", help="e.g. torch,fsdp: STDiT step time and memory per "
                                    "training engine on --nproc ranks, instead of DiT vs STDiT"),
        nproc: int = typer.Option(2, "--nproc", min=1, help="ranks for --engines (torchrun, this machine)"),
    ) -> None:
        """Training-step throughput (forward+backward+AdamW) of DiT (full attention) vs STDiT at shapes
        mirroring 16x256, 16x512 and 64x512 (64 frames with gradient checkpointing); with --engines, STDiT's
        step time and per-rank memory under each engine (DDP, FSDP2) on --nproc ranks."""
        import torch
        from rich.console import Console

        from opensora_core.models.benchmark import run_model_benchmark, speedups

        cfg = load_cli_config(params, preset, overrides)
        console = Console(width=max(Console().width, 130))  # the table is wide; never wrap it
        if engines:
            _engine_table(cfg, console, engines, nproc, steps, warmup, no_track, tiny=not device.startswith("cuda"))
            return
        tiny = (size or ("xl2" if device.startswith("cuda") else "tiny")) == "tiny"
        caption = dict(caption_channels=cfg.text_encoder.hidden_size, model_max_length=cfg.text_encoder.model_max_length) if tiny else {}
        with console.status("benchmarking DiT vs STDiT ..."):
            rows = run_model_benchmark(device, steps, warmup, size, peak_tflops=peak_tflops,
                                       on_row=lambda r: console.log(f"{r['model']} {r['shape']}: {r['samples/s']} samples/s"),
                                       **caption)
        console.print(_rows_table(f"DiT vs STDiT training throughput ({device})", rows, ("model", "shape")))
        ratio = speedups(rows)
        console.print("STDiT / DiT samples/s: " + ", ".join(f"{k}: {v}x" for k, v in ratio.items()))
        if no_track:
            return
        from opensora_core import tracking

        with tracking.start_run(cfg, run_name=f"bench-model-{device}", tags={"bench": "model", "device": device},
                                log_config=False) as run:
            import mlflow

            mlflow.log_params({"device": device, "size": "tiny" if tiny else "xl2", "torch": torch.__version__})
            for r in rows:
                key = f"{r['model'].replace('/', '_')}.{r['shape'].split(' ')[0]}"
                mlflow.log_metrics({f"{key}.samples_per_s": r["samples/s"], f"{key}.tokens_per_s": r["tokens/s"],
                                    f"{key}.step_ms": r["step_ms"]})
            mlflow.log_metrics({f"speedup.{k.split(' ')[0]}": v for k, v in ratio.items()})
            tracking.log_table("bench_model", rows)
            console.print(f"logged to MLflow run {run.info.run_id}")

    @bench.command("reference")
    def reference(
        reference_dir: Path = typer.Option(..., "--reference", help="checkout of hpcaitech/Open-Sora v1.0.0 (the folder "
                                           "holding opensora/); e.g. `git --git-dir=MIRROR archive v1.0.0 | tar -x -C DIR`"),
        rounds: int = typer.Option(9, "--rounds", min=1, help="timed rounds, interleaved (median, min-max)"),
        warmup: int = typer.Option(2, "--warmup", min=1, help="untimed steps per model first (the first also compiles)"),
        threads: int = typer.Option(1, "--threads", min=0, help="torch CPU threads (0: torch's default)"),
        latent: str = typer.Option("8x16x16", "--latent", help="latent T x H x W"),
        batch_size: int = typer.Option(2, "--batch-size", min=1),
        also: list[str] = typer.Option([], "--also", help="extra rows of ours: foreach | fused (AdamW forms), compile"),
        device: str = typer.Option("cpu", "--device"),
        params: Path = ParamsOption,
        preset: str = PresetOption,
        no_track: bool = typer.Option(False, "--no-track", help="do not log to MLflow"),
    ) -> None:
        """Training-step tokens/s of our STDiT vs Open-Sora 1.0's own (same weights and inputs, interleaved
        rounds in one process; STDiT depth 4, hidden 256, 4 heads, 24 caption tokens, half of one masked)."""
        from dataclasses import asdict, replace

        import torch
        from rich.console import Console
        from rich.table import Table

        from opensora_core.models.opensora_reference import ReferenceCheckoutError
        from opensora_core.models.reference_benchmark import (
            ReferenceBenchConfig,
            opensora_contender,
            ours_contender,
            run_reference_benchmark,
        )

        cfg_ = load_cli_config(params, preset, [])
        try:
            shape = tuple(int(v) for v in latent.lower().split("x"))
            assert len(shape) == 3 and min(shape) > 0
        except (ValueError, AssertionError):
            fail(f"--latent must be T x H x W, e.g. 8x16x16; got {latent!r}")
        unknown = [a for a in also if a not in ("foreach", "fused", "compile")]
        if unknown:
            fail(f"--also takes foreach, fused or compile; got {unknown[0]!r}")
        bench_cfg = replace(ReferenceBenchConfig(), rounds=rounds, warmup=warmup, threads=threads or None,
                            latent=shape, batch_size=batch_size)
        try:
            contenders = [opensora_contender(reference_dir), ours_contender()]
        except ReferenceCheckoutError as e:
            fail(f"--reference: {e}")
        for extra in also:
            contenders.append(ours_contender(f"ours, {extra}", optimizer=extra if extra != "compile" else "for-loop",
                                             compile=extra == "compile"))
        console = Console(width=max(Console().width, 150))
        with console.status("benchmarking ours vs Open-Sora 1.0 STDiT ..."):
            rows = run_reference_benchmark(
                contenders, bench_cfg, device,
                on_round=lambda r, t: console.log(f"round {r + 1}: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in t.items())),
                log=console.log)
        table = Table(title=f"STDiT training step, ours vs Open-Sora 1.0 ({device}, {bench_cfg.threads or 'default'} "
                            f"threads, latent {latent}, batch {batch_size}, median of {rounds} interleaved rounds)")
        for col in rows[0]:
            table.add_column(col, justify="left" if col in ("model", "optimizer") else "right")
        for r in rows:
            table.add_row(*(str(r.get(col, "")) for col in rows[0]))
        console.print(table)
        for r in rows[1:]:
            console.print(f"{r['model']} / Open-Sora 1.0 tokens/s: {r['ratio']}x")
        if no_track:
            return
        from opensora_core import tracking

        with tracking.start_run(cfg_, run_name=f"bench-reference-{device}", tags={"bench": "reference", "device": device},
                                log_config=False) as run:
            import mlflow

            mlflow.log_params({"device": device, "torch": torch.__version__, "reference": str(reference_dir),
                               **{k: str(v) for k, v in asdict(bench_cfg).items()}})
            for r in rows:
                key = r["model"].replace(" ", "_").replace(",", "").replace(".", "_")
                mlflow.log_metrics({f"{key}.tokens_per_s": r["tokens/s"], f"{key}.step_ms": r["step_ms"],
                                    f"{key}.ratio": r["ratio"], f"{key}.max_abs_diff": r["max|diff|"]})
            tracking.log_table("bench_reference", rows)
            console.print(f"logged to MLflow run {run.info.run_id}")

    def _engine_table(cfg, console, engines: str, nproc: int, steps, warmup, no_track: bool, tiny: bool) -> None:
        from opensora_core.cli.common import fail
        from opensora_core.train.bench_engines import run_engine_benchmark

        names = [e.strip() for e in engines.split(",") if e.strip()]
        if not names or any(e not in ("torch", "fsdp") for e in names):
            fail(f"--engines {engines!r}: a comma-separated list of torch, fsdp")
        caption = (cfg.text_encoder.hidden_size, cfg.text_encoder.model_max_length) if tiny else None
        with console.status(f"benchmarking engines {', '.join(names)} on {nproc} ranks ..."):
            try:
                rows = run_engine_benchmark(names, nproc, steps or 5, warmup or 2, "cpu" if tiny else "cuda", caption)
            except RuntimeError as e:
                fail(str(e), 1)
        console.print(_rows_table(f"STDiT training step per engine, {nproc} ranks", rows, ("engine", "shape")))
        if no_track:
            return
        from opensora_core import tracking

        with tracking.start_run(cfg, run_name=f"bench-engines-{nproc}", tags={"bench": "engines"},
                                log_config=False) as run:
            import mlflow

            mlflow.log_params({"engines": ",".join(names), "nproc": nproc})
            for r in rows:
                key = f"{r['engine']}.{r['shape']}"
                mlflow.log_metrics({f"{key}.step_ms": r["step_ms"], f"{key}.state_MiB_per_rank": r["state_MiB/rank"]})
            tracking.log_table("bench_engines", rows)
            console.print(f"logged to MLflow run {run.info.run_id}")

    @bench.command("data")
    def data(
        overrides: list[str] = OverridesArgument,
        stage: str = typer.Option(None, "--stage", help="stage whose frames/size/batch/model are timed (default: the first)"),
        steps: int = typer.Option(5, "--steps", help="timed training steps per mode"),
        warmup: int = typer.Option(1, "--warmup", help="untimed steps first"),
        batch_size: int = typer.Option(None, "--batch-size", help="default: the stage's batch size"),
        params: Path = ParamsOption,
        preset: str = PresetOption,
        no_track: bool = typer.Option(False, "--no-track", help="do not log to MLflow"),
    ) -> None:
        """Training throughput (forward+backward+AdamW) with the latent cache vs online decode + VAE + T5 encoding."""
        from rich.console import Console

        from opensora_core.data.bench import cache_speedup, run_data_benchmark

        cfg = load_cli_config(params, preset, overrides)
        stage = stage or cfg.stage_names()[0]
        console = Console(width=max(Console().width, 120))
        with console.status(f"benchmarking cached vs online data for {stage} ..."):
            rows, notes = run_data_benchmark(cfg, stage, steps=steps, warmup=warmup, batch_size=batch_size,
                                             on_row=lambda r: console.log(f"{r['mode']}: {r['samples/s']} samples/s"))
        console.print(_rows_table(f"Training throughput, latent cache vs online encoding ({stage}, cpu)", rows,
                                  ("mode", "stage")))
        ratio = cache_speedup(rows)
        console.print(f"cached / online samples/s: {ratio}x")
        for note in notes:
            console.print(f"note: {note}")
        if no_track:
            return
        from opensora_core import tracking

        with tracking.start_run(cfg, run_name=f"bench-data-{stage}", stage=stage, tags={"bench": "data"},
                                log_config=False) as run:
            import mlflow

            mlflow.log_params({"stage": stage, "steps": steps, "batch_size": rows[0]["batch"]})
            for r in rows:
                mlflow.log_metrics({f"{r['mode']}.samples_per_s": r["samples/s"], f"{r['mode']}.tokens_per_s": r["tokens/s"],
                                    f"{r['mode']}.data_ms": r["data_ms"], f"{r['mode']}.step_ms": r["step_ms"]})
            mlflow.log_metric("cache_speedup", ratio)
            mlflow.set_tag("notes", " | ".join(notes)[:4000])
            tracking.log_table("bench_data", rows)
            console.print(f"logged to MLflow run {run.info.run_id}")
