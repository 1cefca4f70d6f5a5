"""Training-step time and memory per engine (torch DDP vs FSDP2) on N ranks, for `opensora bench model
--engines torch,fsdp --nproc N`.

Run under torchrun (`python -m torch.distributed.run --standalone --nproc-per-node N -m
opensora_core.train.bench_engines OUT.json ENGINES STEPS WARMUP DEVICE [CAPTION_CHANNELS MAX_LENGTH]`, or
`run_engine_benchmark`): every rank builds the STDiT of each shape of models/benchmark.py, wraps it with the engine, and times forward + backward + clip + AdamW step
(the loop's `engine.backward_step`) on random latents. Rank 0 writes one row per (shape, engine):

    step_ms          rank 0's wall time per step (the ranks run in lock-step)
    state_MiB/rank   the model state one rank holds: weights + gradients + AdamW moments (its shards under
                     FSDP, everything under DDP), the part of the memory an engine decides; activations excluded
    peak_mem_GiB     CUDA only: torch.cuda.max_memory_allocated, the largest over the ranks
"""

from __future__ import annotations

import json
import sys
import time

import torch
import torch.distributed as dist

from opensora_core.models.benchmark import CPU_SHAPES, GPU_SHAPES, BenchShape
from opensora_core.train.distributed import destroy_distributed, init_distributed
from opensora_core.train.engines import make_engine
from opensora_core.train.precision import LossScaler


def _local_bytes(t: torch.Tensor) -> int:
    t = t.to_local() if hasattr(t, "to_local") else t
    return t.numel() * t.element_size()


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of weights, gradients and optimizer state held by this rank."""
    params = list(model.parameters())
    total = sum(_local_bytes(p) for p in params) + sum(_local_bytes(p.grad) for p in params if p.grad is not None)
    return total + sum(_local_bytes(v) for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))


def bench_engine(engine_name: str, shape: BenchShape, env, steps: int, warmup: int, size: str,
                 model_overrides: dict) -> dict:
    from opensora_core.models.registry import build_model

    torch.manual_seed(0)
    name = "STDiT-XL/2" if size == "xl2" else "STDiT-tiny"
    model = build_model(name, input_size=shape.latent, grad_checkpoint=shape.grad_checkpoint, **model_overrides)
    engine = make_engine(engine_name, env)
    wrapped = engine.prepare(model)
    ref = engine.unwrap(wrapped)
    optimizer = engine.make_optimizer(ref, 2e-5)
    scaler = LossScaler(False)
    dev, b, n_cap = env.device, shape.batch_size, ref.model_max_length
    g = torch.Generator().manual_seed(env.rank)
    x = torch.randn(b, ref.in_channels, *shape.latent, generator=g).to(dev)
    y = torch.randn(b, 1, n_cap, ref.caption_channels, generator=g).to(dev)
    mask = torch.ones(b, n_cap, dtype=torch.long, device=dev)
    t = torch.randint(0, 1000, (b,), generator=g).to(dev)
    target = torch.randn(b, ref.out_channels, *shape.latent, generator=g).to(dev)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")

    def step():
        with amp:
            loss = torch.nn.functional.mse_loss(wrapped(x, t, y, mask), target)
        optimizer.zero_grad(set_to_none=True)
        engine.backward_step(loss, optimizer, ref, scaler, 1.0)

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for _ in range(warmup):
        step()
    if dist.is_initialized():
        dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = (time.perf_counter() - start) / steps
    row = {"engine": engine_name, "ranks": env.world_size, "shape": shape.name, "batch/rank": b,
           "ckpt": shape.grad_checkpoint, "step_ms": round(seconds * 1e3, 2),
           "samples/s": round(b * env.world_size / seconds, 3),
           "state_MiB/rank": round(state_bytes(ref, optimizer) / 2**20, 2)}
    if dev.type == "cuda":
        peak = torch.tensor([torch.cuda.max_memory_allocated(dev)], device=dev, dtype=torch.float64)
        if dist.is_initialized():
            dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        row["peak_mem_GiB"] = round(float(peak) / 2**30, 2)
    return row


def run_engine_benchmark(engines: list[str], nproc: int, steps: int = 5, warmup: int = 2, device: str = "cpu",
                         caption: tuple[int, int] | None = None) -> list[dict]:
    """Run this module under torchrun on `nproc` local ranks; returns rank 0's rows."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/rows.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "-m", "opensora_core.train.bench_engines", out, ",".join(engines), str(steps), str(warmup), device,
               *(str(c) for c in caption or ())]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"engine benchmark failed (exit {proc.returncode}): {last}")
        with open(out) as f:
            return json.load(f)


def main(out: str, engines: str, steps: str = "5", warmup: str = "2", device: str = "cpu",
         caption_channels: str = "", model_max_length: str = "") -> None:
    env = init_distributed(device)
    if env.device.type == "cpu":
        torch.set_num_threads(1)  # tiny ops on a shared machine: one thread per rank is faster and steadier
    size = "xl2" if env.device.type == "cuda" else "tiny"
    shapes = GPU_SHAPES if size == "xl2" else CPU_SHAPES
    overrides = {k: int(v) for k, v in (("caption_channels", caption_channels),
                                        ("model_max_length", model_max_length)) if v}
    rows = [bench_engine(e, shape, env, int(steps), int(warmup), size, overrides)
            for shape in shapes for e in engines.split(",")]
    if env.is_main:
        with open(out, "w") as f:
            json.dump(rows, f)
    destroy_distributed()


if __name__ == "__main__":
    main(*sys.argv[1:])
