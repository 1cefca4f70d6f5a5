"""Training-step time and memory per engine (torch DDP vs FSDP2) on N ranks, for `opensora bench model
--engines torch,fsdp --nproc N`.

``run_engine_benchmark`` runs this module under torchrun (`python -m torch.distributed.run --standalone
--nproc-per-node N -m opensora_core.bench.engines OUT.json ENGINES STEPS WARMUP DEVICE [CAPTION_CHANNELS
MAX_LENGTH [SHAPES_JSON]]`): every rank builds the STDiT of each shape of ``bench.model`` (or the shapes given), wraps it with the engine, and times
``step.training_step`` with the loop's ``engine.backward_step`` (backward + clip + AdamW step) on random
latents. Rank 0 writes one row per (shape, engine):

    step_ms          rank 0's wall time per step (the ranks run in lock-step)
    state_MiB/rank   the model state one rank holds: weights + gradients + AdamW moments (its shards under
                     FSDP, everything under DDP), the part of the memory an engine decides; activations excluded
    peak_mem_GiB     CUDA only: torch.cuda.max_memory_allocated, the largest over the ranks
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import asdict

import torch
import torch.distributed as dist

from opensora_core.bench.model import CPU_SHAPES, GPU_SHAPES, BenchShape
from opensora_core.bench.reporter import Report
from opensora_core.bench.step import random_inputs, time_steps, training_step
from opensora_core.models.registry import build_model
from opensora_core.train.distributed import destroy_distributed, init_distributed
from opensora_core.train.engines import make_engine
from opensora_core.train.precision import LossScaler

ENGINES = ("torch", "fsdp")


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
    """One row: STDiT at ``shape`` wrapped by ``engine_name`` on this process group, timed."""
    torch.manual_seed(0)
    name = "STDiT-XL/2" if size == "xl2" else "STDiT-tiny"
    model = build_model(name, input_size=shape.latent, grad_checkpoint=shape.grad_checkpoint, **model_overrides)
    engine = make_engine(engine_name, env)
    wrapped = engine.prepare(model)
    ref = engine.unwrap(wrapped)
    optimizer = engine.make_optimizer(ref, 2e-5)
    scaler = LossScaler(False)
    dev, b = env.device, shape.batch_size
    inputs = random_inputs(ref, shape.latent, b, dev, seed=env.rank, padding="none")
    step = training_step(wrapped, optimizer, inputs, torch.bfloat16 if dev.type == "cuda" else None,
                         backward=lambda loss: engine.backward_step(loss, optimizer, ref, scaler, 1.0))
    timing = time_steps(step, steps, warmup, dev, barrier=dist.barrier if dist.is_initialized() else None)
    row = {"engine": engine_name, "ranks": env.world_size, "shape": shape.name, "batch/rank": b,
           "ckpt": shape.grad_checkpoint, "step_ms": round(timing.seconds * 1e3, 2),
           "samples/s": round(b * env.world_size / timing.seconds, 3),
           "state_MiB/rank": round(state_bytes(ref, optimizer) / 2**20, 2)}
    if timing.peak_mem_bytes is not None:
        peak = torch.tensor([timing.peak_mem_bytes], device=dev, dtype=torch.float64)
        if dist.is_initialized():
            dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        row["peak_mem_GiB"] = round(float(peak) / 2**30, 2)
    return row


def run_engine_benchmark(engines: list[str], nproc: int, steps: int = 5, warmup: int = 2, device: str = "cpu",
                         caption: tuple[int, int] | None = None,
                         shapes: tuple[BenchShape, ...] | None = None) -> list[dict]:
    """Run this module under torchrun on `nproc` local ranks; returns rank 0's rows. ``caption``: (caption
    channels, caption tokens) of the model; ``shapes``: default ``bench.model``'s GPU or CPU shapes."""
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/rows.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "-m", "opensora_core.bench.engines", out, ",".join(engines), str(steps), str(warmup), device,
               *(str(c) for c in caption or ("", "")), json.dumps([asdict(s) for s in shapes or ()])]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            lines = [line for line in proc.stderr.splitlines() if line.strip().strip("=*-")]
            errors = [line for line in lines if "Error" in line]  # the rank's exception, not torchrun's banner
            last = (errors or lines or ["no output"])[-1].strip()
            raise RuntimeError(f"engine benchmark failed (exit {proc.returncode}): {last}")
        with open(out) as f:
            return json.load(f)


def engines_report(rows: list[dict], engines: list[str], nproc: int) -> Report:
    """The table and the MLflow params and metrics of an engine benchmark."""
    metrics = {}
    for r in rows:
        key = f"{r['engine']}.{r['shape']}"
        metrics.update({f"{key}.step_ms": r["step_ms"], f"{key}.state_MiB_per_rank": r["state_MiB/rank"]})
    return Report("engines", f"STDiT training step per engine, {nproc} ranks", rows, left=("engine", "shape"),
                  params={"engines": ",".join(engines), "nproc": nproc}, metrics=metrics,
                  run_name=f"bench-engines-{nproc}")


def main(out: str, engines: str, steps: str = "5", warmup: str = "2", device: str = "cpu",
         caption_channels: str = "", model_max_length: str = "", shapes_json: str = "") -> None:
    env = init_distributed(device)
    if env.device.type == "cpu":
        torch.set_num_threads(1)  # tiny ops on a shared machine: one thread per rank is faster and steadier
    size = "xl2" if env.device.type == "cuda" else "tiny"
    shapes = [BenchShape(s["name"], tuple(s["latent"]), s["batch_size"], s["grad_checkpoint"])
              for s in json.loads(shapes_json or "[]")] or (GPU_SHAPES if size == "xl2" else CPU_SHAPES)
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
