"""What a training step measures: the columns of `train_log.csv` (written by opensora_core.tracking.MetricsLog),
throughput, memory, and the FLOP count and peak behind the MFU column."""

from __future__ import annotations

import math
import resource

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
    plus the spatial, temporal and cross-attention terms, see models.flops), else 6 x params x tokens.
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
