"""Training-step throughput of DiT (full attention) vs STDiT: the Open-Sora 1.0 report's ablation.

One step = forward + backward + AdamW step on random latents / captions (the model cost only: no VAE, no
T5, no data loading). Three shapes mirror the report's 16x256, 16x512 and 64x512 (the 64-frame one with
gradient checkpointing). On CUDA the real XL/2 sizes run in bf16 autocast; on CPU the tiny sizes run at a
quarter of the frames and of the latent side, so the whole table takes about a minute.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_one(model_name: str, shape: BenchShape, device: torch.device, steps: int, warmup: int,
              model_overrides: dict, amp_dtype: torch.dtype | None, peak_tflops: float | None) -> dict:
    """Time ``steps`` training steps after ``warmup`` ones; returns a table row."""
    from opensora_core.models.registry import build_model

    torch.manual_seed(0)
    model = build_model(model_name, input_size=shape.latent, grad_checkpoint=shape.grad_checkpoint,
                        **model_overrides).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.0)
    b, n_cap = shape.batch_size, model.model_max_length
    x = torch.randn(b, model.in_channels, *shape.latent, device=device)
    y = torch.randn(b, 1, n_cap, model.caption_channels, device=device)
    mask = torch.ones(b, n_cap, dtype=torch.long, device=device)
    mask[:, n_cap // 2:] = 0  # half-length captions: the masked path is the one training uses
    t = torch.randint(0, 1000, (b,), device=device)
    target = torch.randn(b, model.out_channels, *shape.latent, device=device)

    def step():
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = torch.nn.functional.mse_loss(model(x, t, y, mask), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)  # the only host sync: at the end of the timed steps
    seconds = (time.perf_counter() - start) / steps
    samples = b / seconds
    tflops = model.flops_per_sample(shape.latent) * samples / 1e12
    row = {
        "model": model_name, "shape": shape.name, "latent": "x".join(map(str, shape.latent)), "batch": b,
        "ckpt": shape.grad_checkpoint, "tokens": model.num_tokens(shape.latent),
        "step_ms": round(seconds * 1e3, 2), "samples/s": round(samples, 3),
        "tokens/s": round(samples * model.num_tokens(shape.latent), 1), "TFLOP/s": round(tflops, 4),
    }
    if peak_tflops:
        row["MFU"] = round(tflops / peak_tflops, 4)
    if device.type == "cuda":
        row["peak_mem_GiB"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
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
