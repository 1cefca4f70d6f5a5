"""The comparison report: loss curves of chosen MLflow runs (fp16 vs bf16, lr, stage by stage), a metrics table,
sample grids side by side; one HTML file with its PNGs alongside, logged to MLflow. `summary_markdown` gives
the short markdown the Prefect flow publishes as an artifact.

Heavy or optional imports (matplotlib, mlflow) happen inside the functions that need them, so importing this module
(the CLI, the stage processes, the Dask workers do) does not load them.
"""

from __future__ import annotations

import html
import json
import logging
import math
from pathlib import Path
from typing import Any

from opensora_core.config import Config
from opensora_core.tracking import configure, start_run

log = logging.getLogger(__name__)
CURVE_METRICS = ("loss", "grad_norm", "lr", "loss_scale")
KEY_METRICS = ("color_acc", "color_chance", "motion_acc", "motion_chance", "direction_acc", "axis_acc",
               "sign_acc", "shape_acc", "heldout_loss", "temporal_change", "fd_randproj")


def _label(run) -> str:
    t = run.data.tags
    parts = [run.info.run_name or run.info.run_id[:8]]
    parts += [f"{k}={t[k]}" for k in ("stage", "dtype", "lr") if k in t]
    return " ".join(parts)


def find_runs(client, experiment: str | None = None, run_ids: list[str] | None = None) -> list:
    """The runs asked for (ids, in order), or every run of an experiment (oldest first)."""
    if run_ids:
        return [client.get_run(r) for r in run_ids]
    exp = client.get_experiment_by_name(experiment) if experiment else None
    if exp is None:
        raise ValueError(f"experiment {experiment!r} not found in the tracking store")
    return list(reversed(client.search_runs([exp.experiment_id], max_results=1000, order_by=["attributes.start_time DESC"])))


def _plot_curves(client, runs: list, metric: str, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = 0
    for run in runs:
        hist = client.get_metric_history(run.info.run_id, metric)
        if len(hist) < 1:
            continue
        hist = sorted(hist, key=lambda m: m.step)
        ax.plot([m.step for m in hist], [m.value for m in hist], label=_label(run), marker="." if len(hist) < 20 else None)
        drawn += 1
    if drawn:
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        if metric == "loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return drawn > 0


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return html.escape(str(v))


def metrics_rows(runs: list) -> list[dict[str, Any]]:
    """One row per run: its label and final metric values (the last logged value of each metric)."""
    return [{"run": _label(r), "run_id": r.info.run_id, **dict(sorted(r.data.metrics.items()))} for r in runs]


def _sample_grids(client, runs: list, out: Path) -> list[tuple[str, list[Path]]]:
    """Download the grid PNGs each run logged under samples/ (evaluate and `opensora sample` runs)."""
    found = []
    for run in runs:
        try:
            local = Path(client.download_artifacts(run.info.run_id, "samples", str(out / "samples" / run.info.run_id)))
        except Exception:
            continue
        grids = sorted(p for p in local.rglob("*.png"))
        if grids:
            found.append((_label(run), grids))
    return found


def build_report(cfg: Config, run_ids: list[str] | None = None, experiment: str | None = None,
                 out_dir: str | Path | None = None, track: bool = True) -> Path:
    """Write `out_dir/report.html` (+ PNGs) for the chosen runs (default: the config's experiment); returns its path."""
    from mlflow.tracking import MlflowClient

    configure(cfg)
    client = MlflowClient()
    runs = find_runs(client, experiment or (None if run_ids else cfg.tracking.experiment), run_ids)
    out = Path(out_dir) if out_dir else cfg.paths.eval_dir / "report"
    out.mkdir(parents=True, exist_ok=True)

    plots = [m for m in CURVE_METRICS if _plot_curves(client, runs, m, out / f"{m}.png")]
    rows = metrics_rows(runs)
    grids = _sample_grids(client, runs, out)
    local_metrics = json.loads(cfg.paths.metrics.read_text()) if cfg.paths.metrics.is_file() else {}

    h = ["<!doctype html><html><head><meta charset='utf-8'><title>opensora-flow report</title>",
         "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
         "td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}</style></head><body>",
         f"<h1>opensora-flow report: {html.escape(cfg.preset)}</h1>",
         f"<p>{len(runs)} runs: " + ", ".join(html.escape(_label(r)) for r in runs) + "</p>", "<h2>Loss curves</h2>"]
    h += [f"<h3>{m}</h3><img src='{m}.png' alt='{m}'>" for m in plots] or ["<p>no step metrics logged</p>"]
    h.append("<h2>Metrics</h2>")
    h.append(_html_table(rows))
    if local_metrics:
        h.append("<h2>Evaluation (metrics.json)</h2>" + _html_table(_eval_table(local_metrics)))
    h.append("<h2>Samples (first / middle / last frame)</h2>")
    for label, files in grids:
        h.append(f"<h3>{html.escape(label)}</h3><div style='display:flex;flex-wrap:wrap;gap:8px'>")
        h += [f"<figure><img src='{p.relative_to(out).as_posix()}' width='260'><figcaption style='font-size:10px'>"
              f"{html.escape(p.parent.name)}/{html.escape(p.stem)}</figcaption></figure>" for p in files[:24]]
        h.append("</div>")
    h.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(h))
    (out / "summary.md").write_text(summary_markdown(local_metrics, runs))
    if track:
        with start_run(cfg, "report", stage="report", log_config=False) as _run:
            import mlflow

            mlflow.log_artifacts(str(out), artifact_path="report")
    log.info("report: %s (%d runs, %d plots, %d sample sets)", path, len(runs), len(plots), len(grids))
    return path


def _html_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>none</p>"
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _eval_table(metrics: dict[str, float]) -> list[dict[str, Any]]:
    """metrics.json `<model>.<metric>` -> one row per model (step0, stages, final, reference) with the key metrics."""
    models: dict[str, dict[str, Any]] = {}
    for key, value in metrics.items():
        model, _, name = key.partition(".")
        if name in KEY_METRICS:
            models.setdefault(model, {"model": model})[name] = value
    order = ["step0", *[m for m in models if m not in ("step0", "final", "reference")], "final", "reference"]
    return [models[m] for m in order if m in models]


def summary_markdown(metrics: dict[str, float], runs: list | None = None) -> str:
    """Markdown summary (for a Prefect artifact): the evaluation table, before/after training, and the runs."""
    lines = ["## opensora-flow evaluation", ""]
    table = _eval_table(metrics)
    if table:
        cols = ["model", *[c for c in KEY_METRICS if any(c in r for r in table)]]
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in table]
        s0, fin = metrics.get("step0.color_acc"), metrics.get("final.color_acc")
        if s0 is not None and fin is not None:
            lines += ["", f"Colour accuracy {s0:.2f} -> {fin:.2f} (chance {metrics.get('final.color_chance', float('nan')):.2f}); "
                      f"motion accuracy {metrics.get('step0.motion_acc', float('nan')):.2f} -> "
                      f"{metrics.get('final.motion_acc', float('nan')):.2f} (chance {metrics.get('final.motion_chance', float('nan')):.2f})."]
    else:
        lines.append("no evaluation metrics yet")
    if runs:
        lines += ["", "Runs: " + ", ".join(f"`{_label(r)}`" for r in runs)]
    return "\n".join(lines) + "\n"
