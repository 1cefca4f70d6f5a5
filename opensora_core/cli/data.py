"""`opensora data ...`: synthetic videos, ingest, captioning, manifest stats, latent cache, prepare."""

from __future__ import annotations

from pathlib import Path

import typer

from opensora_core.cli.common import OverridesArgument, ParamsOption, PresetOption, load_cli_config


def _print_stats(stats: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{title}[/bold]: {stats['clips']} clips from {stats['files']} files, "
                  f"{stats['total_seconds']:.1f} s in total")
    if stats.get("duration"):
        d = stats["duration"]
        console.print(f"duration (s): min {d['min']:.2f}  mean {d['mean']:.2f}  max {d['max']:.2f}")
    if stats.get("caption_words"):
        c = stats["caption_words"]
        console.print(f"caption words: min {c['min']}  mean {c['mean']:.1f}  max {c['max']}  empty {c['empty']}")
    for key, label in (("duration_hist", "duration (s)"), ("resolutions", "resolution (WxH)"), ("splits", "split"),
                       ("color", "color"), ("shape", "shape"), ("motion", "motion"), ("background", "background")):
        if not stats.get(key):
            continue
        table = Table(label, "clips", "", title=None)
        top = max(stats[key].values()) or 1
        for name, n in stats[key].items():
            table.add_row(str(name), str(n), "#" * max(0, round(30 * n / top)))
        console.print(table)


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Data pipeline: synthetic clips, ingest, captions, manifests, latent cache.", no_args_is_help=True)

    @group.command("synthetic")
    def synthetic(
        overrides: list[str] = OverridesArgument,
        num: int = typer.Option(None, "--num", help="number of clips (default: data.num_videos)"),
        frames: int = typer.Option(None, "--frames", help="frames per clip (default: data.video_frames)"),
        size: int = typer.Option(None, "--size", help="frame side in pixels, even (default: data.video_size)"),
        seed: int = typer.Option(None, "--seed", help="dataset seed (default: seed)"),
        out: Path = typer.Option(None, "--out", help="output folder (default: the run's data/raw)"),
        workers: int = typer.Option(2, "--workers", help="rendering/encoding processes"),
        params: Path = ParamsOption,
        preset: str = PresetOption,
    ) -> None:
        """Render captioned synthetic clips (H.264 mp4) and their manifest with ground-truth attributes."""
        import time

        from opensora_core.data.synthetic import generate_synthetic

        cfg = load_cli_config(params, preset, overrides)
        d = cfg.data
        num, frames, size = num or d.num_videos, frames or d.video_frames, size or d.video_size
        if not (num and frames and size):
            typer.secho("error: --num, --frames and --size are needed (this preset has no synthetic defaults)", err=True, fg="red")
            raise typer.Exit(2)
        t0 = time.perf_counter()
        try:
            manifest = generate_synthetic(out or cfg.paths.raw_dir, num, frames, size, seed=cfg.seed if seed is None else seed,
                                          workers=workers)
        except ValueError as e:
            typer.secho(f"error: {e}", err=True, fg="red")
            raise typer.Exit(2) from None
        dt = time.perf_counter() - t0
        typer.echo(f"wrote {num} clips ({frames}x{size}x{size}) and {manifest} in {dt:.1f}s ({num / dt:.1f} clips/s)")

    @group.command("stats")
    def stats(manifest: Path = typer.Argument(..., help="manifest CSV"),
              as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
        """Counts, duration and resolution histograms, caption length statistics of a manifest."""
        import json

        from opensora_core.data.manifest import ManifestError, manifest_stats, read_manifest

        try:
            df = read_manifest(manifest)
        except (ManifestError, FileNotFoundError) as e:
            typer.secho(f"error: {e}", err=True, fg="red")
            raise typer.Exit(2) from None
        s = manifest_stats(df)
        if as_json:
            typer.echo(json.dumps(s, indent=2))
        else:
            _print_stats(s, str(manifest))

    app.add_typer(group, name="data")

