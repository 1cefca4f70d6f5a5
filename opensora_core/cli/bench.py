"""`opensora bench model` (DiT vs STDiT, or one engine against another), `bench reference` (ours vs Open-Sora
1.0's STDiT), `bench data` (latent cache vs online encoding): parse the options, run the benchmark of
opensora_core.bench, hand its report to the reporter (a table, logged to MLflow)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer

from opensora_core.bench.reporter import publish, wide_console
from opensora_core.cli.common import OverridesArgument, ParamsOption, PresetOption, fail, load_cli_config

NoTrackOption = typer.Option(False, "--no-track", help="do not log to MLflow")


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
        no_track: bool = NoTrackOption,
        engines: str = typer.Option(None, "--engines", help="e.g. torch,fsdp: STDiT step time and memory per "
                                    "training engine on --nproc ranks, instead of DiT vs STDiT"),
        nproc: int = typer.Option(2, "--nproc", min=1, help="ranks for --engines (torchrun, this machine)"),
    ) -> None:
        """Training-step throughput (forward+backward+AdamW) of DiT (full attention) vs STDiT at shapes
        mirroring 16x256, 16x512 and 64x512 (64 frames with gradient checkpointing); with --engines, STDiT's
        step time and per-rank memory under each engine (DDP, FSDP2) on --nproc ranks."""
        # torch and the models load only when a benchmark runs: `opensora --help` stays fast
        from opensora_core.bench import engines as engine_bench
        from opensora_core.bench import model as model_bench

        cfg = load_cli_config(params, preset, overrides)
        console = wide_console()
        tiny = not device.startswith("cuda")
        if engines:
            names = [e.strip() for e in engines.split(",") if e.strip()]
            if not names or any(e not in engine_bench.ENGINES for e in names):
                fail(f"--engines {engines!r}: a comma-separated list of {', '.join(engine_bench.ENGINES)}")
            caption = (cfg.text_encoder.hidden_size, cfg.text_encoder.model_max_length) if tiny else None
            with console.status(f"benchmarking engines {', '.join(names)} on {nproc} ranks ..."):
                try:
                    rows = engine_bench.run_engine_benchmark(names, nproc, steps or 5, warmup or 2,
                                                             "cpu" if tiny else "cuda", caption)
                except RuntimeError as e:
                    fail(str(e), 1)
            publish(engine_bench.engines_report(rows, names, nproc), cfg, console, track=not no_track)
            return
        size = size or ("tiny" if tiny else "xl2")
        caption = {}
        if size == "tiny":
            caption = dict(caption_channels=cfg.text_encoder.hidden_size, model_max_length=cfg.text_encoder.model_max_length)
        with console.status("benchmarking DiT vs STDiT ..."):
            rows = model_bench.run_model_benchmark(
                device, steps, warmup, size, peak_tflops=peak_tflops,
                on_row=lambda r: console.log(f"{r['model']} {r['shape']}: {r['samples/s']} samples/s"), **caption)
        publish(model_bench.model_report(rows, device, size), cfg, console, track=not no_track)

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
        no_track: bool = NoTrackOption,
    ) -> None:
        """Training-step tokens/s of our STDiT vs Open-Sora 1.0's own (same weights and inputs, interleaved
        rounds in one process; STDiT depth 4, hidden 256, 4 heads, 24 caption tokens, half of one masked)."""
        # torch and the models load only when a benchmark runs: `opensora --help` stays fast
        from opensora_core.bench import reference as ref_bench
        from opensora_core.bench.opensora_reference import ReferenceCheckoutError

        cfg = load_cli_config(params, preset, [])
        try:
            shape = tuple(int(v) for v in latent.lower().split("x"))
            assert len(shape) == 3 and min(shape) > 0
        except (ValueError, AssertionError):
            fail(f"--latent must be T x H x W, e.g. 8x16x16; got {latent!r}")
        unknown = [a for a in also if a not in ref_bench.EXTRA_ROWS]
        if unknown:
            fail(f"--also takes foreach, fused or compile; got {unknown[0]!r}")
        bench_cfg = replace(ref_bench.ReferenceBenchConfig(), rounds=rounds, warmup=warmup, threads=threads or None,
                            latent=shape, batch_size=batch_size)
        try:
            contenders = ref_bench.contenders_for(reference_dir, also)
        except ReferenceCheckoutError as e:
            fail(f"--reference: {e}")
        console = wide_console()
        with console.status("benchmarking ours vs Open-Sora 1.0 STDiT ..."):
            rows = ref_bench.run_reference_benchmark(
                contenders, bench_cfg, device,
                on_round=lambda r, t: console.log(f"round {r + 1}: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in t.items())),
                log=console.log)
        publish(ref_bench.reference_report(rows, bench_cfg, device, reference_dir), cfg, console, track=not no_track)

    @bench.command("data")
    def data(
        overrides: list[str] = OverridesArgument,
        stage: str = typer.Option(None, "--stage", help="stage whose frames/size/batch/model are timed (default: the first)"),
        steps: int = typer.Option(5, "--steps", help="timed training steps per mode"),
        warmup: int = typer.Option(1, "--warmup", help="untimed steps first"),
        batch_size: int = typer.Option(None, "--batch-size", help="default: the stage's batch size"),
        params: Path = ParamsOption,
        preset: str = PresetOption,
        no_track: bool = NoTrackOption,
    ) -> None:
        """Training throughput (forward+backward+AdamW) with the latent cache vs online decode + VAE + T5 encoding."""
        # torch, the encoders and the data stack load only when a benchmark runs: `opensora --help` stays fast
        from opensora_core.bench import data as data_bench

        cfg = load_cli_config(params, preset, overrides)
        stage = stage or cfg.stage_names()[0]
        console = wide_console()
        with console.status(f"benchmarking cached vs online data for {stage} ..."):
            rows, notes = data_bench.run_data_benchmark(
                cfg, stage, steps=steps, warmup=warmup, batch_size=batch_size,
                on_row=lambda r: console.log(f"{r['mode']}: {r['samples/s']} samples/s"))
        publish(data_bench.data_report(rows, notes, stage, steps), cfg, console, track=not no_track)
