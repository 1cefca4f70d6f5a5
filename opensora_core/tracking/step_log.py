"""A log of rows (one per step) written to `<name>.csv` + `<name>.jsonl` beside a job's outputs (DVC plots) and
to MLflow step metrics. A resumed job first drops the rows logged after its checkpoint (the killed run got further
than what it saved), so the log reads as one uninterrupted run."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from opensora_core.io import atomic_write_json


class MetricsLog:
    """Writes rows to `<name>.csv`/`.jsonl` and (with `mlflow` given: anything with `log_metrics(metrics, step)`,
    e.g. tracking.BufferedRun) to the MLflow run, each metric named `prefix + column`. A missing value is an empty
    CSV cell."""

    def __init__(self, out_dir: Path, mlflow=None, resume_step: int = 0, name: str = "train_log", *,
                 columns: tuple[str, ...], prefix: str = ""):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.out_dir / f"{name}.csv"
        self.jsonl_path = self.out_dir / f"{name}.jsonl"
        self.mlflow, self.columns, self.prefix = mlflow, columns, prefix
        self._truncate_after(resume_step)

    def _truncate_after(self, step: int) -> None:
        rows = []
        if self.jsonl_path.is_file() and step > 0:
            rows = [r for r in (json.loads(line) for line in self.jsonl_path.read_text().splitlines() if line.strip())
                    if r["step"] <= step]
        with open(self.jsonl_path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        with open(self.csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    def log(self, row: dict[str, Any]) -> None:
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore").writerow(row)
        if self.mlflow is not None:
            metrics = {self.prefix + k: float(v) for k, v in row.items() if k not in ("step", "epoch") and v is not None}
            self.mlflow.log_metrics(metrics, step=int(row["step"]))

    def write_final(self, summary: dict[str, Any]) -> Path:
        return atomic_write_json(self.out_dir / "final.json", summary, indent=1)
