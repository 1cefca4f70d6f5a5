"""`opensora data ...`: synthetic videos, ingest, captioning, manifest stats, latent cache, prepare.

Heavy imports (pandas) happen inside the commands, so `opensora --help` and the other commands start without
them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from opensora_core.cli.common import OverridesArgument, ParamsOption, PresetOption, fail, load_cli_config
from opensora_core.config import ConfigError
from opensora_core.data.cache import build_latent_cache
from opensora_core.data.stages import caption_data, prepare_data
from opensora_core.data.synthetic import Vocabulary, generate_synthetic
from opensora_core.remote import dvc_sync


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
        """Render captioned synthetic clips (H.264 mp4) of the preset's vocabulary (data.synthetic) and their
        manifest with ground-truth attributes."""
        cfg = load_cli_config(params, preset, overrides)
        d = cfg.data
        num, frames, size = num or d.num_videos, frames or d.video_frames, size or d.video_size
        if not (num and frames and size):
            fail("--num, --frames and --size are needed (this preset has no synthetic defaults)")
        t0 = time.perf_counter()
        try:
            manifest = generate_synthetic(out or cfg.paths.raw_dir, num, frames, size, seed=cfg.seed if seed is None else seed,
                                          workers=workers, vocab=Vocabulary.from_config(d.synthetic))
        except ValueError as e:
            fail(str(e))
        dt = time.perf_counter() - t0
        typer.echo(f"wrote {num} clips ({frames}x{size}x{size}) and {manifest} in {dt:.1f}s ({num / dt:.1f} clips/s)")

    @group.command("stats")
    def stats(manifest: Path = typer.Argument(..., help="manifest CSV"),
              as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
        """Counts, duration and resolution histograms, caption length statistics of a manifest."""
        from opensora_core.data.manifest import ManifestError, manifest_stats, read_manifest

        try:
            df = read_manifest(manifest)
        except (ManifestError, FileNotFoundError) as e:
            fail(str(e))
        s = manifest_stats(df)
        if as_json:
            typer.echo(json.dumps(s, indent=2))
        else:
            _print_stats(s, str(manifest))

    @group.command("ingest")
    def ingest_cmd(
        src: str = typer.Argument(..., help="local folder or s3://bucket/prefix (AWS credentials/endpoint from the "
                                  "environment), or a captions CSV (path,text) whose captions are kept"),
        out: Path = typer.Option(None, "--out", help="output folder (default: the run's data/raw)"),
        overrides: list[str] = OverridesArgument,
        min_duration: float = typer.Option(None, help="shortest clip kept, s (default: data.min_duration)"),
        max_duration: float = typer.Option(None, help="longer scenes are cut into pieces of at most this, s (default: data.max_duration)"),
        min_resolution: int = typer.Option(None, help="smallest short side kept, px (default: data.min_resolution)"),
        max_aspect: float = typer.Option(3.0, help="widest aspect ratio kept"),
        workers: int = typer.Option(2, help="files processed at once"),
        scene_split: bool = typer.Option(None, "--scene-split/--no-scene-split",
                                         help="cut files at scene changes (default: yes for a folder, no for a CSV)"),
        params: Path = ParamsOption,
        preset: str = PresetOption,
    ) -> None:
        """Probe, de-duplicate and scene-split videos into DIR/manifest.csv (clip ranges) and DIR/rejects.csv."""
        from opensora_core.data.csv_source import ingest_csv
        from opensora_core.data.ingest import ingest
        from opensora_core.data.manifest import ManifestError

        cfg = load_cli_config(params, preset, overrides)
        d = cfg.data
        out = out or cfg.paths.raw_dir
        is_csv = src.lower().endswith(".csv")
        kwargs = dict(min_duration=d.min_duration if min_duration is None else min_duration,
                      max_duration=max_duration or d.max_duration,
                      min_resolution=d.min_resolution if min_resolution is None else min_resolution,
                      max_aspect=max_aspect, workers=workers,
                      scene_split=(not is_csv) if scene_split is None else scene_split)
        try:
            s = ingest_csv(src, out, **kwargs) if is_csv else ingest(src, out, **kwargs)
        except (FileNotFoundError, ManifestError) as e:
            fail(str(e))
        typer.echo(f"{s['clips']} clips from {s['files']} files ({s['processed']} processed this run); "
                   f"{s['rejected']} rejected ({s['rejected_files']} files), see {Path(out) / 'rejects.csv'}")

    @group.command("caption")
    def caption_cmd(
        overrides: list[str] = OverridesArgument,
        captioner: str = typer.Option(None, "--captioner", help="synthetic | existing | llava (default: data.captioner)"),
        model: str = typer.Option(None, "--model", help="llava: hub id or local path (default: data.llava_model)"),
        manifest_in: Path = typer.Option(None, "--in", help="manifest to caption (default: the run's raw manifest)"),
        manifest_out: Path = typer.Option(None, "--out", help="captioned manifest (default: the run's data/manifest.csv)"),
        batch_size: int = typer.Option(8, "--batch-size"),
        params: Path = ParamsOption,
        preset: str = PresetOption,
    ) -> None:
        """Caption every clip (resumable) and assign the train/val split."""
        from opensora_core.data.caption import build_captioner, caption_manifest

        cfg = load_cli_config(params, preset, overrides)
        if captioner is None and model is None and manifest_in is None and manifest_out is None:
            typer.echo(f"wrote {caption_data(cfg)}")
            return
        name = captioner or cfg.data.captioner
        cap = build_captioner(name, **({"model": model or cfg.data.llava_model} if name == "llava" else {}))
        out = caption_manifest(manifest_in or cfg.paths.raw_manifest, manifest_out or cfg.paths.manifest, cap,
                               val_fraction=cfg.data.val_fraction, batch_size=batch_size)
        typer.echo(f"wrote {out}")

    @group.command("cache")
    def cache_cmd(
        overrides: list[str] = OverridesArgument,
        stage: str = typer.Option(..., "--stage", help="training stage whose frames/stride/size to encode"),
        force: bool = typer.Option(False, "--force", help="rebuild even if up to date"),
        params: Path = ParamsOption,
        preset: str = PresetOption,
    ) -> None:
        """Encode every clip (VAE) and caption (text encoder) of the manifest once, into safetensors shards."""
        from opensora_core.data.manifest import ManifestError

        cfg = load_cli_config(params, preset, overrides)
        try:
            out = build_latent_cache(cfg, stage, force=force)
        except (ConfigError, FileNotFoundError, ManifestError) as e:
            fail(str(e))
        meta = json.loads((out / "index.json").read_text())
        counts = ", ".join(f"{k} {v['count']}" for k, v in meta["splits"].items())
        typer.echo(f"latent cache {out}: {counts} clips ({meta.get('clips_per_second')} clips/s when built)")

    @group.command("prepare")
    def prepare_cmd(overrides: list[str] = OverridesArgument, params: Path = ParamsOption, preset: str = PresetOption) -> None:
        """The prepare stage: synthetic clips, an ingest of data.src or its captions CSV into the run's data/raw
        (idempotent)."""
        from opensora_core.data.manifest import ManifestError

        cfg = load_cli_config(params, preset, overrides)
        try:
            typer.echo(f"wrote {prepare_data(cfg)}")
        except (FileNotFoundError, ManifestError) as e:
            fail(str(e))

    def _sync(command: str, remote: str | None, targets: list[str] | None) -> None:
        typer.echo(dvc_sync(command, remote, targets).rstrip())

    @group.command("push")
    def push_cmd(targets: list[str] = typer.Argument(None, help="DVC targets (default: everything tracked)"),
                 remote: str = typer.Option(None, "--remote", "-r", help="DVC remote (default: the default remote)")) -> None:
        """`dvc push` with a one-line error naming the remote and its endpoint when it is down or refuses."""
        _sync("push", remote, targets)

    @group.command("pull")
    def pull_cmd(targets: list[str] = typer.Argument(None, help="DVC targets (default: everything tracked)"),
                 remote: str = typer.Option(None, "--remote", "-r", help="DVC remote (default: the default remote)")) -> None:
        """`dvc pull` with a one-line error naming the remote and its endpoint when it is down or refuses."""
        _sync("pull", remote, targets)

    app.add_typer(group, name="data")

