"""Training metrics (rank 0): `train_log.csv` + `train_log.jsonl` next to the checkpoints (DVC plots), MLflow
step metrics, and `final.json` at the end; the FLOP count and peak behind the MFU column.

A resumed job first drops the rows logged after its checkpoint (the killed run got further than what it
saved), so the log reads as one uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import math
import os
import resource
from pathlib import Path
from typing import Any

import torch

COLUMNS = ("step", "epoch", "loss", "lr", "grad_norm", "loss_scale", "skipped_steps", "samples_per_s",
           "tokens_per_s", "step_time", "memory_mb", "tflops", "mfu")

# Dense bf16/fp16 and fp32 (no TF32) peaks of one GPU, TFLOP/s, from NVIDIA's data sheets; matched in order
# against torch.cuda.get_device_name (H100 PCIe before the SXM default).
GPU_PEAK_TFLOPS: tuple[tuple[str, float, float], ...] = (
    ("H200", 989.4, 66.9), ("H100 PCIe", 756.0, 51.2), ("H100", 989.4, 66.9), ("A100", 312.0, 19.5),
)


def memory_mb(device: torch.device) -> float:
    """Peak memory of this process in MiB: allocated GPU memory on CUDA, the peak RSS (ru_maxrss) on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def flops_per_sample(model, latent_size) -> float:
    """Training FLOPs (forward + backward) of one sample: the model's own count (STDiT/DiT: 6 x params x tokens
    plus the spatial, temporal and cross-attention terms, see models.base), else 6 x params x tokens.
    The one place the loop asks for a FLOP count."""
    if hasattr(model, "flops_per_sample"):
        return float(model.flops_per_sample(latent_size))
    tokens = model.num_tokens(latent_size) if hasattr(model, "num_tokens") else 1
    return 6.0 * sum(p.numel() for p in model.parameters()) * tokens


def peak_tflops(device: torch.device, dtype: str, given: float | None = None) -> float | None:
    """Peak TFLOP/s of one device: `given` (train.peak_tflops), else the table's for a known GPU, else None."""
    if given:
        return float(given)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, half, single in GPU_PEAK_TFLOPS:
        if key in name:
            return single if dtype == "fp32" else half
    return None


class Throughput:
    """`tflops` (achieved by all ranks together) and `mfu` (over `world_size` x the device peak) of a step."""

    def __init__(self, model, latent_size, global_batch: int, world_size: int, peak: float | None):
        self.flops_per_step = flops_per_sample(model, latent_size) * global_batch
        self.peak_total = peak * 1e12 * world_size if peak else None

    def metrics(self, step_time: float) -> dict[str, float]:
        achieved = self.flops_per_step / step_time if step_time > 0 else math.nan
        out = {"tflops": achieved / 1e12}
        if self.peak_total:
            out["mfu"] = achieved / self.peak_total
        return out


class MetricsLog:
    """Writes rows to `<name>.csv`/`.jsonl` and (with `mlflow` given: anything with `log_metrics(metrics, step)`,
    e.g. tracking.BufferedRun) to the MLflow run, each metric named `prefix + column`. A missing value is an empty
    CSV cell."""

    def __init__(self, out_dir: Path, mlflow=None, resume_step: int = 0, name: str = "train_log",
                 columns: tuple[str, ...] = COLUMNS, prefix: str = ""):
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
        path = self.out_dir / "final.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=1))
        os.replace(tmp, path)
        return path
