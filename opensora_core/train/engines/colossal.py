"""ColossalAI engine: Booster + LowLevelZeroPlugin (ZeRO stage 2) + HybridAdam, as Open-Sora 1.0 trained.

An optional extra for GPU clusters, imported only when `train.engine=colossalai` (ColossalAI pins an old torch,
so it lives in its own venv: `make test-colossal`). Same interface as `engine.TorchEngine`:

    engine.prepare(model) -> model            (on the device; the Booster wraps it in `boost`)
    engine.make_optimizer(model, lr, wd)      HybridAdam (GPU) / torch AdamW (CPU)
    engine.boost(model, optimizer)            booster.boost -> (ModelWrapper, OptimizerWrapper)
    engine.backward_step(loss, ...)           booster.backward + clip + step -> (stepped, grad_norm)
    engine.save_state / load_state            booster.save_model/save_optimizer/load_model/load_optimizer

Plugins (`OPENSORA_COLOSSAL_PLUGIN` overrides the choice; tests use it):
- GPU (default `low_level_zero`): LowLevelZeroPlugin(stage=2, precision=train.dtype, initial_scale=2**16,
  max_norm=train.grad_clip). The plugin owns precision: the model runs in bf16/fp16 with fp32 master weights
  sharded over the ranks, fp16 losses are scaled dynamically and overflowing steps skipped by ColossalAI's scaler
  (mirrored into the loop's LossScaler for logging and checkpoints).
- CPU (default `torch_ddp`): TorchDDPPlugin + torch AdamW; precision as in the torch engine (autocast + our
  LossScaler), so the same seed and data give the same losses. LowLevelZero refuses CPU by design; the tests run
  it there only after patching ColossalAI (tests/train/colossal_check.py), never here.

Checkpoints: the loop's layout stays the source for weights/EMA/meta (`step_XXXXXXX/`); the Booster's
CheckpointIO writes `colossal/step_XXXXXXX/{model.safetensors, optimizer.bin, scaler.json}` beside it *before*
`latest` moves, so a complete checkpoint always has its Booster files. Resume loads model and optimizer through
the Booster. Exact resume holds for fp32; with LowLevelZero in bf16/fp16 ColossalAI rebuilds the fp32 master
weights from the bf16/fp16 working weights on load (its own behaviour), so those resumes are close, not bitwise.

Sequence parallelism: the loop's own `enable_sequence_parallel` (all-to-all temporal attention) is applied to the
unwrapped model before `boost`; ZeRO averages gradients over all ranks like DDP, and the loop scales the loss
by sp_size, so no ColossalAI sequence-parallel group is needed (Open-Sora 1.0's ZeroSeqParallelPlugin did the
same bookkeeping by hand).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from opensora_core.train.distributed import broadcast_from_rank0, ensure_process_group
from opensora_core.train.engines.ddp import adamw

log = logging.getLogger("opensora.train")

INSTALL_HINT = (
    "train.engine=colossalai needs ColossalAI, which is not installed in this environment. Install it the slim "
    "way into a separate venv with `make colossal-venv` (or run its tests with `make test-colossal`: the project's "
    "torch first, then `pip install --no-deps colossalai==0.5.0` plus psutil, einops, peft, galore_torch), or "
    "`pip install -e .[colossalai]` on a GPU machine whose torch may be replaced; or use train.engine=torch "
    "(DistributedDataParallel; the CPU default)."
)
PLUGIN_ENV = "OPENSORA_COLOSSAL_PLUGIN"
PLUGINS = ("low_level_zero", "torch_ddp")
BOOSTER_DIR = "colossal"


def require_colossalai():
    """Import colossalai or raise RuntimeError with the install hint."""
    try:
        import colossalai
    except ImportError as e:
        raise RuntimeError(INSTALL_HINT) from e
    return colossalai


def _cpu_accelerator_sync_noop() -> None:
    """ColossalAI's checkpoint loading calls `get_accelerator().synchronize()`, which raises on its CPU
    accelerator; CPU work is synchronous, so a no-op is exact. Applied only when the accelerator is the CPU."""
    from colossalai.accelerator import get_accelerator

    acc = get_accelerator()
    if type(acc).__name__ == "CpuAccelerator":
        type(acc).synchronize = lambda self, device=None: None


class ColossalEngine:
    """Booster-backed engine; see the module docstring for plugins, precision and checkpoints."""

    name = "colossalai"

    def __init__(self, env, train_cfg=None, plugin: str | None = None):
        require_colossalai()
        self.env = env
        self.dtype = getattr(train_cfg, "dtype", "fp32")
        self.grad_clip = float(getattr(train_cfg, "grad_clip", 1.0))
        self.initial_scale = float(getattr(train_cfg, "initial_loss_scale", 2.0**16))
        plugin = plugin or os.environ.get(PLUGIN_ENV) or ("low_level_zero" if env.device.type == "cuda" else "torch_ddp")
        if plugin not in PLUGINS:
            raise ValueError(f"{PLUGIN_ENV}={plugin!r}: expected one of {PLUGINS}")
        self.plugin_name = plugin
        ensure_process_group(env.device)
        _cpu_accelerator_sync_noop()
        from colossalai.booster import Booster
        from colossalai.booster.plugin import LowLevelZeroPlugin, TorchDDPPlugin

        if plugin == "low_level_zero":
            # overlap_communication needs CUDA streams; on GPU it is ColossalAI's default and Open-Sora's choice
            self.plugin = LowLevelZeroPlugin(stage=2, precision=self.dtype, initial_scale=self.initial_scale,
                                             max_norm=self.grad_clip, verbose=False,
                                             overlap_communication=env.device.type == "cuda")
        else:
            # broadcast_buffers=False: as the torch engine (prepare gives every rank rank 0's buffers once)
            self.plugin = TorchDDPPlugin(broadcast_buffers=False)
        self.booster = Booster(plugin=self.plugin)
        self._skipped = False

    # ---- set-up ---------------------------------------------------------------------------------------------

    @property
    def owns_precision(self) -> bool:
        """True when the plugin casts the model and scales the loss itself (LowLevelZero)."""
        return self.plugin_name == "low_level_zero"

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move to the device and give every rank rank 0's weights. The loop seeds each rank differently
        (seed + dp rank) before building the model; DDP broadcasts rank 0's parameters when it wraps the model,
        LowLevelZero does not (each rank would keep its own initialization), so broadcast here for every plugin."""
        model.to(self.env.device)
        broadcast_from_rank0([*model.parameters(), *model.buffers()])
        return model

    @staticmethod
    def unwrap(model: nn.Module) -> nn.Module:
        return model.unwrap() if hasattr(model, "unwrap") else model

    def make_optimizer(self, model: nn.Module, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        if self.env.device.type == "cuda":
            try:
                from colossalai.nn.optimizer import HybridAdam

                return HybridAdam(params, lr=lr, weight_decay=weight_decay, eps=1e-8, adamw_mode=True)
            except Exception as e:  # its CUDA kernel is built on first use; a machine without nvcc cannot
                log.warning("HybridAdam unavailable (%s: %s): using torch AdamW", type(e).__name__, e)
        # HybridAdam/CPUAdam kernels are CUDA extensions ("No usable kernel found" on CPU); the torch engine's
        # AdamW, so both engines run the same update kernel

        return adamw(params, lr, weight_decay)

    def boost(self, model: nn.Module, optimizer):
        inner = type(optimizer).__name__
        model, optimizer, *_ = self.booster.boost(model, optimizer)
        if self.env.is_main:
            log.info("colossalai engine: %s (%s), optimizer %s, %d ranks", type(self.plugin).__name__,
                     self.dtype, inner, dist.get_world_size())
        if self.owns_precision and getattr(optimizer, "mixed_precision_mixin", None) is not None:
            mixin = optimizer.mixed_precision_mixin
            original = mixin.should_skip_step

            def should_skip_step() -> bool:  # record ColossalAI's overflow decision for the loop's counters
                self._skipped = bool(original())
                return self._skipped

            mixin.should_skip_step = should_skip_step
        return model, optimizer

    # ---- one step -------------------------------------------------------------------------------------------

    def loss_scale(self, optimizer) -> float | None:
        mixin = getattr(optimizer, "mixed_precision_mixin", None)
        return float(mixin.loss_scale) if mixin is not None else None

    def backward_step(self, loss, optimizer, model_ref, scaler, grad_clip: float, sp_size: int = 1):
        """booster.backward, clip to `grad_clip`, optimizer step. Returns (stepped, grad_norm)."""
        loss = loss * sp_size if sp_size > 1 else loss
        if self.owns_precision:
            # LowLevelZero scales (fp16), reduce-scatters into its gradient shards, checks overflow, unscales and
            # clips (max_norm) inside step(); p.grad stays empty under ZeRO-2
            self._skipped = False
            self.booster.backward(loss, optimizer)
            optimizer.step()
            ok = not self._skipped
            if scaler.enabled or self.dtype == "fp16":  # mirror ColossalAI's scaler into the loop's counters
                scaler.scale_value = self.loss_scale(optimizer) or scaler.scale_value
                if not ok:
                    scaler.skipped_steps += 1
            norm = optimizer.get_grad_norm() if ok else None
            return ok, float(norm) if norm is not None else float("nan")
        self.booster.backward(scaler.scale(loss), optimizer)
        params = [p for p in model_ref.parameters() if p.requires_grad]
        ok = scaler.unscale_and_check(params)
        grad_norm = float("nan")
        if ok:
            grad_norm = float(optimizer.clip_grad_by_norm(grad_clip))
            optimizer.step()
        scaler.update(ok)
        return ok, grad_norm

    # ---- checkpoints ----------------------------------------------------------------------------------------

    @staticmethod
    def booster_dir(ckpt_root: Path, step_name: str) -> Path:
        return Path(ckpt_root) / BOOSTER_DIR / step_name

    def save_state(self, ckpt_root: Path, step_name: str, model, optimizer, ema) -> dict:
        """Collective: write model + optimizer through the Booster's CheckpointIO into
        `ckpt_root/colossal/<step_name>/` (rank 0 writes; optimizer state is gathered from every rank).
        Returns what `checkpoint.save_checkpoint` writes besides: weights and EMA, no `optimizer.pt`."""
        d = self.booster_dir(ckpt_root, step_name)
        if self.env.is_main:
            if d.exists():
                shutil.rmtree(d)
            d.mkdir(parents=True)
        dist.barrier()
        self.booster.save_model(model, str(d / "model.safetensors"), shard=False, use_safetensors=True)
        self.booster.save_optimizer(optimizer, str(d / "optimizer.bin"), shard=False)
        if self.env.is_main:
            (d / "scaler.json").write_text(json.dumps(_scaler_state(optimizer)))
        dist.barrier()
        return {"model_state": self.unwrap(model).state_dict(), "ema_state": ema.state_dict(), "optimizer_state": None}

    def prune(self, ckpt_root: Path) -> None:
        """Rank 0: drop Booster dirs whose loop checkpoint was pruned (or never completed)."""
        root = Path(ckpt_root) / BOOSTER_DIR
        if not self.env.is_main or not root.is_dir():
            return
        for d in root.glob("step_*"):
            if not (Path(ckpt_root) / d.name).is_dir():
                shutil.rmtree(d, ignore_errors=True)

    def load_state(self, ckpt_dir: Path, model, optimizer, ema=None) -> None:
        """Resume from the Booster files beside the loop checkpoint `ckpt_dir` (model, optimizer, loss scale)."""
        d = self.booster_dir(Path(ckpt_dir).parent, Path(ckpt_dir).name)
        if not (d / "optimizer.bin").is_file():
            raise FileNotFoundError(f"{ckpt_dir} has no ColossalAI optimizer state ({d}/optimizer.bin): it was not "
                                    "written by train.engine=colossalai; resume it with the engine that wrote it")
        self.booster.load_model(model, str(d / "model.safetensors"))
        self.booster.load_optimizer(optimizer, str(d / "optimizer.bin"))
        if (d / "scaler.json").is_file():
            _load_scaler_state(optimizer, json.loads((d / "scaler.json").read_text()))


# ColossalAI's DynamicGradScaler.state_dict omits its growth/hysteresis counters; exact fp16 resume needs them
_SCALER_FIELDS = ("_growth_step", "_hysteresis_step")


def _scaler_state(optimizer) -> dict:
    mixin = getattr(optimizer, "mixed_precision_mixin", None)
    if mixin is None:
        return {}
    gs = mixin.grad_scaler
    return {"scale": float(gs.scale.item()), **{f: int(getattr(gs, f, 0)) for f in _SCALER_FIELDS}}


def _load_scaler_state(optimizer, state: dict) -> None:
    mixin = getattr(optimizer, "mixed_precision_mixin", None)
    if mixin is None or not state:
        return
    gs = mixin.grad_scaler
    gs._scale = torch.full_like(gs.scale, state["scale"])
    for f in _SCALER_FIELDS:
        if hasattr(gs, f):
            setattr(gs, f, int(state[f]))
