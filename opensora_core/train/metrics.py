"""Training metrics (rank 0): `train_log.csv` + `train_log.jsonl` next to the checkpoints (DVC plots), MLflow
step metrics, and `final.json` at the end.

A resumed job first drops the rows logged after its checkpoint (the killed run got further than what it
saved), so the log reads as one uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import torch

COLUMNS = ("step", "epoch", "loss", "lr", "grad_norm", "loss_scale", "skipped_steps", "samples_per_s",
           "tokens_per_s", "step_time", "memory_mb")


def memory_mb(device: torch.device) -> float:
    """Peak allocated GPU memory, or the process's current RSS on CPU, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


class MetricsLog:
    """Writes rows to CSV/JSONL and (with `mlflow` given: anything with `log_metrics(metrics, step)`, e.g.
    tracking.BufferedRun) to the MLflow run."""

    def __init__(self, out_dir: Path, mlflow=None, resume_step: int = 0):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.out_dir / "train_log.csv"
        self.jsonl_path = self.out_dir / "train_log.jsonl"
        self.mlflow = mlflow
        self._truncate_after(resume_step)

    def _truncate_after(self, step: int) -> None:
        rows = []
        if self.jsonl_path.is_file() and step > 0:
            rows = [r for r in (json.loads(line) for line in self.jsonl_path.read_text().splitlines() if line.strip())
                    if r["step"] <= step]
        with open(self.jsonl_path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        with open(self.csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    def log(self, row: dict[str, Any]) -> None:
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore").writerow(row)
        if self.mlflow is not None:
            metrics = {k: float(v) for k, v in row.items() if k not in ("step", "epoch") and v is not None}
            self.mlflow.log_metrics(metrics, step=int(row["step"]))

    def write_final(self, summary: dict[str, Any]) -> Path:
        path = self.out_dir / "final.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=1))
        os.replace(tmp, path)
        return path
