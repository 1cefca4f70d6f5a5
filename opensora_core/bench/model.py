"""Training-step throughput of DiT (full attention) vs STDiT: the Open-Sora 1.0 report's ablation
(`opensora bench model`).

One step = forward + backward + AdamW step on random latents and captions (``step.training_step``: the model
cost only, no VAE, no T5, no data loading). Three shapes mirror the report's 16x256, 16x512 and 64x512 (the
64-frame one with gradient checkpointing). On CUDA the XL/2 sizes run in bf16 autocast; on the CPU the tiny
sizes run at a quarter of the frames and of the latent side.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from opensora_core.bench.reporter import Report
from opensora_core.bench.step import random_inputs, time_steps, training_step
from opensora_core.models.registry import build_model


@dataclass(frozen=True)
class BenchShape:
    name: str  # the video it mirrors, frames x pixels
    latent: tuple[int, int, int]  # (T, H, W) latent size
    batch_size: int
    grad_checkpoint: bool


# Latent sizes of Open-Sora 1.0 (sd-vae /8): 16x256 -> 16x32x32; 16x512 -> 16x64x64; 64x512 -> 64x64x64.
GPU_SHAPES = (
    BenchShape("16x256", (16, 32, 32), 8, False),
    BenchShape("16x512", (16, 64, 64), 8, True),
    BenchShape("64x512", (64, 64, 64), 1, True),
)
CPU_SHAPES = (
    BenchShape("16x256", (4, 8, 8), 4, False),
    BenchShape("16x512", (4, 16, 16), 2, True),
    BenchShape("64x512", (16, 16, 16), 1, True),
)


def bench_one(model_name: str, shape: BenchShape, device: torch.device, steps: int, warmup: int,
              model_overrides: dict, amp_dtype: torch.dtype | None, peak_tflops: float | None) -> dict:
    """Time ``steps`` training steps after ``warmup`` ones; returns a table row."""
    torch.manual_seed(0)
    model = build_model(model_name, input_size=shape.latent, grad_checkpoint=shape.grad_checkpoint,
                        **model_overrides).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.0)
    inputs = random_inputs(model, shape.latent, shape.batch_size, device, padding="half")
    timing = time_steps(training_step(model, opt, inputs, amp_dtype), steps, warmup, device)
    b, tokens = shape.batch_size, model.num_tokens(shape.latent)
    samples = b / timing.seconds
    tflops = model.flops_per_sample(shape.latent) * samples / 1e12
    row = {
        "model": model_name, "shape": shape.name, "latent": "x".join(map(str, shape.latent)), "batch": b,
        "ckpt": shape.grad_checkpoint, "tokens": tokens,
        "step_ms": round(timing.seconds * 1e3, 2), "samples/s": round(samples, 3),
        "tokens/s": round(samples * tokens, 1), "TFLOP/s": round(tflops, 4),
    }
    if peak_tflops:
        row["MFU"] = round(tflops / peak_tflops, 4)
    if timing.peak_mem_bytes is not None:
        row["peak_mem_GiB"] = round(timing.peak_mem_bytes / 2**30, 2)
    del model, opt
    return row


def run_model_benchmark(device: str = "cpu", steps: int | None = None, warmup: int | None = None,
                        size: str | None = None, caption_channels: int | None = None,
                        model_max_length: int | None = None, peak_tflops: float | None = None,
                        on_row=None) -> list[dict]:
    """DiT vs STDiT at the three shapes; ``size`` "xl2" (default on CUDA) or "tiny" (default on CPU)."""
    dev = torch.device(device)
    size = size or ("xl2" if dev.type == "cuda" else "tiny")
    shapes = GPU_SHAPES if dev.type == "cuda" else CPU_SHAPES
    steps = steps or (10 if dev.type == "cuda" else 5)
    warmup = warmup or (3 if dev.type == "cuda" else 2)
    amp = torch.bfloat16 if dev.type == "cuda" else None
    if dev.type == "cpu":
        torch.set_num_threads(1)  # tiny ops: one thread is faster and steadier on a shared machine
    overrides = {"caption_channels": caption_channels, "model_max_length": model_max_length}
    names = ("DiT-XL/2", "STDiT-XL/2") if size == "xl2" else ("DiT-tiny", "STDiT-tiny")
    rows = []
    for shape in shapes:
        for name in names:
            row = bench_one(name, shape, dev, steps, warmup, overrides, amp, peak_tflops)
            rows.append(row)
            if on_row:
                on_row(row)
    return rows


def speedups(rows: list[dict]) -> dict[str, float]:
    """STDiT samples/s over DiT samples/s, per shape."""
    by = {(r["shape"], r["model"].split("-")[0]): r["samples/s"] for r in rows}
    return {shape: round(by[(shape, "STDiT")] / by[(shape, "DiT")], 2)
            for shape, kind in by if kind == "STDiT" and (shape, "DiT") in by}


def model_report(rows: list[dict], device: str, size: str) -> Report:
    """The table, the STDiT / DiT line and the MLflow params and metrics of a model benchmark."""
    ratio = speedups(rows)
    metrics = {f"speedup.{k.split(' ')[0]}": v for k, v in ratio.items()}
    for r in rows:
        key = f"{r['model'].replace('/', '_')}.{r['shape'].split(' ')[0]}"
        metrics.update({f"{key}.samples_per_s": r["samples/s"], f"{key}.tokens_per_s": r["tokens/s"],
                        f"{key}.step_ms": r["step_ms"]})
    return Report(
        "model", f"DiT vs STDiT training throughput ({device})", rows, left=("model", "shape"),
        lines=["STDiT / DiT samples/s: " + ", ".join(f"{k}: {v}x" for k, v in ratio.items())],
        params={"device": device, "size": size, "torch": torch.__version__}, metrics=metrics,
        tags={"device": device}, run_name=f"bench-model-{device}")
