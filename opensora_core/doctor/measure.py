"""Measured peak memory of one training step, to check `opensora_core.doctor.memory` against.

On a GPU: `torch.cuda.max_memory_allocated` over the step. On the CPU there is no allocator counter, so the
step runs under `torch.profiler` with `profile_memory=True`, whose memory events carry the allocator's running
total of bytes allocated since the profile started; the peak is the state alive before the step (weights,
gradients, AdamW, EMA, the batch: counted tensor by tensor) plus the highest point of that running total above
its value when the step began.

The step is the training loop's (opensora_core.train.loop): IDDPM loss under autocast, gradients of the last step
freed after the forward pass, backward, clip, AdamW, EMA update; one warm-up step first, so AdamW's states exist.
Single process (no DDP buckets): the engine the prediction is compared with is `ddp` on one rank.

Heavy or optional imports (opensora_core.train.engines) happen inside the functions that need them, so importing
this module (the CLI, the stage processes, the Dask workers do) does not load them.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from opensora_core.config import Config
from opensora_core.diffusion.training import training_diffusion
from opensora_core.models.stage import build_stage_model, latent_size
from opensora_core.train.distributed import DistEnv
from opensora_core.train.ema import EMA
from opensora_core.train.precision import LossScaler, autocast


def _unique_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is None or not isinstance(t, torch.Tensor):
            continue
        storage = t.untyped_storage()
        key = (storage.data_ptr(), t.device)
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


def _cpu_peak_during(fn) -> int:
    """Highest point of the CPU allocator's running total (bytes since the start) while `fn()` runs."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    memory = [e["args"] for e in events if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type") == 0]
    if not memory:
        return 0
    # the running total carries over from earlier profiles in this process: take it relative to the window's start
    start = memory[0]["Total Allocated"] - memory[0]["Bytes"]
    return max(0, max(m["Total Allocated"] for m in memory) - start)


def measure_step_peak(cfg: Config, stage: str, device: str = "cpu") -> int:
    """Peak bytes of one training step of `stage` (random latents and captions of the stage's shapes)."""
    from opensora_core.train.engines import TorchEngine

    torch.manual_seed(0)
    dev = torch.device(device)
    st, tc = cfg.stage(stage), cfg.train
    engine = TorchEngine(DistEnv(device=dev))
    model = engine.prepare(build_stage_model(cfg, stage))
    model.train()
    ema = EMA(model, tc.ema_decay)
    optimizer = engine.make_optimizer(model, cfg.train.lr)
    scaler = LossScaler(tc.dtype == "fp16", tc.initial_loss_scale)
    diffusion = training_diffusion(cfg)
    b, n = st.batch_size, cfg.text_encoder.model_max_length
    x = torch.randn(b, cfg.vae.latent_channels, *latent_size(cfg, stage), device=dev)
    y = torch.randn(b, 1, n, cfg.text_encoder.hidden_size, device=dev)
    mask = torch.ones(b, n, dtype=torch.long, device=dev)

    def step():
        t = diffusion.sample_timesteps(b, dev)
        with autocast(tc.dtype, dev):
            loss = diffusion.training_losses(model, x, t, model_kwargs={"y": y, "mask": mask})["loss"].mean()
        optimizer.zero_grad(set_to_none=True)  # after the forward pass, as the loop does
        engine.backward_step(loss, optimizer, model, scaler, tc.grad_clip)
        ema.update(model)

    step()  # warm-up: AdamW creates its states in the first step
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        step()
        torch.cuda.synchronize(dev)
        return torch.cuda.max_memory_allocated(dev)
    state = [*model.parameters(), *(p.grad for p in model.parameters()), *model.buffers(), x, y, mask,
             *ema.shadow.values(),
             *(v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor))]
    return _unique_bytes(state) + _cpu_peak_during(step)
