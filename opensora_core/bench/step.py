"""The timed training step every benchmark shares.

``random_inputs`` shapes random latents and captions for a model, ``training_step`` builds one step on them
(forward, MSE loss, backward, optimizer step), and two timers run steps: ``time_steps`` (warm-up, then N timed
steps, one host sync at the end) and ``interleaved_times`` (contenders in alternating order, round by round).
The model, reference and engine benchmarks time ``training_step``; the data benchmark times its own step
(batches from the data, the diffusion loss) with ``time_steps``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

PADDING = ("none", "half", "last")


def random_inputs(model: nn.Module, latent: tuple[int, int, int], batch_size: int, device: torch.device | str,
                  seed: int = 0, padding: str = "half") -> dict[str, torch.Tensor]:
    """Random inputs of a training step of ``model`` at latent size (T, H, W), drawn on the CPU from ``seed``.

    Returns x [B, C_in, T, H, W], timestep [B] (float, in [0, 1000)), y [B, 1, N, C_cap], mask [B, N] and
    target [B, C_out, T, H, W], with C_in, C_out, C_cap and N (caption tokens) read from the model.
    padding: the caption tokens that are padding (mask 0): "none"; "half" (the second half of every caption: the
        masked path training takes); "last" (the second half of the last caption: Open-Sora's packed
        cross-attention path).
    """
    if padding not in PADDING:
        raise ValueError(f"padding must be one of {PADDING}, got {padding!r}")
    g = torch.Generator().manual_seed(seed)
    b, n = batch_size, model.model_max_length
    mask = torch.ones(b, n, dtype=torch.long)
    if padding == "half":
        mask[:, n // 2:] = 0
    elif padding == "last":
        mask[-1, n // 2:] = 0
    tensors = dict(
        x=torch.randn(b, model.in_channels, *latent, generator=g),
        timestep=torch.randint(0, 1000, (b,), generator=g).float(),
        y=torch.randn(b, 1, n, model.caption_channels, generator=g),
        mask=mask,
        target=torch.randn(b, model.out_channels, *latent, generator=g),
    )
    return {k: v.to(device) for k, v in tensors.items()}


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, inputs: dict[str, torch.Tensor],
                  amp_dtype: torch.dtype | None = None, backward: Callable[[torch.Tensor], None] | None = None,
                  forward: Callable | None = None) -> Callable[[], None]:
    """One training step of ``model`` on fixed ``inputs`` (see ``random_inputs``), as a function of no arguments.

    The forward pass (``forward``, default the model; e.g. a compiled or engine-wrapped model) runs in autocast
    to ``amp_dtype`` when given; the loss is the MSE to ``inputs["target"]``; after ``zero_grad``,
    ``backward(loss)`` runs (default: ``loss.backward()`` then ``optimizer.step()``).
    """
    forward = forward or model
    device_type = inputs["x"].device.type
    model.train()

    def step() -> None:
        with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = forward(inputs["x"], inputs["timestep"], inputs["y"], inputs["mask"])
            loss = F.mse_loss(out, inputs["target"])
        optimizer.zero_grad(set_to_none=True)
        if backward is not None:
            backward(loss)
        else:
            loss.backward()
            optimizer.step()

    return step


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    seconds: float  # wall time per timed step
    peak_mem_bytes: int | None  # CUDA only: torch.cuda.max_memory_allocated over warm-up and timed steps


def time_steps(step: Callable[[], None], steps: int, warmup: int, device: torch.device,
               barrier: Callable[[], None] | None = None) -> Timing:
    """Run ``warmup`` untimed steps, then time ``steps`` steps; the host syncs with the device only before and
    after the timed steps. ``barrier`` (e.g. ``dist.barrier``) lines up the ranks before the clock starts."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        step()
    sync(device)
    if barrier is not None:
        barrier()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    seconds = (time.perf_counter() - start) / steps
    return Timing(seconds, torch.cuda.max_memory_allocated(device) if cuda else None)


def interleaved_times(steps: dict[str, Callable[[], None]], rounds: int, steps_per_round: int,
                      device: torch.device, on_round=None) -> dict[str, dict[str, list[float]]]:
    """Seconds per step of each contender in each round, wall clock ("wall") and this process's CPU time
    ("cpu": on a CPU shared with other jobs it counts the work, not the waiting). Round r runs the contenders in
    order, round r+1 in reverse, so the load of a shared machine hits all alike. ``on_round(r, {name: wall})``."""
    names = list(steps)
    times = {name: {"wall": [], "cpu": []} for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            sync(device)
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(steps_per_round):
                steps[name]()
            sync(device)
            times[name]["cpu"].append((time.process_time() - cpu) / steps_per_round)
            times[name]["wall"].append((time.perf_counter() - wall) / steps_per_round)
        if on_round:
            on_round(r, {name: t["wall"][-1] for name, t in times.items()})
    return times
