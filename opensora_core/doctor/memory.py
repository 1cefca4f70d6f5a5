"""Per-GPU memory of a training stage, predicted from the model's structure (no lookup table of measurements).

peak = model states (weights, gradients, AdamW, EMA; what each engine shards) + activations saved for backward
       + the transient of one block's backward.

Model states, P = parameters, P_t = trainable ones, N = ranks that share the shards:

    engine  weights               gradients               AdamW m+v     EMA        other
    ddp     4P (fp32)             4P_t (+4P_t buckets)    8P_t          4P (fp32)  2P bf16/fp16 weight casts
    zero2   2P bf16 (4P fp32)     2P_t/N + reduce bucket  8P_t/N        4P         4P_t/N fp32 master shard
    fsdp    4P/N + 2 blocks whole 4P_t/N + 1 block whole  8P_t/N        4P/N       2P bf16/fp16 weight casts

Why: the torch engine keeps fp32 weights and runs autocast (opensora_core.train.precision), whose bf16 copies of
the weights are saved by every linear for its backward; DDP (more than one rank) copies the gradients into its
own buckets (gradient_as_bucket_view is off). ColossalAI's LowLevelZeroPlugin casts the model to bf16/fp16 and
keeps fp32 master weights, AdamW states and gradients partitioned over the ranks (ZeRO-2; a 12M-element reduce
bucket is its default). FSDP2 (fully_shard per block) also shards the weights: one block is gathered while the
next is prefetched, and one block's full gradient waits for its reduce-scatter. The EMA (opensora_core.train.ema)
is an fp32 copy of every floating tensor of the state dict on the training device, whatever the engine.
The loop zeroes gradients after the forward pass, so last step's gradients are still alive at the end of the
forward: the peak is then max(gradients, one block's backward transient) on top of the saved activations.

Activations: the STDiT block saves, per video token, the tensors listed in ``BLOCK_SAVED`` (in units of the
hidden size D) for its backward. Three dtypes matter: ``compute`` tensors (matmul inputs/outputs: bf16/fp16 under
autocast, else fp32), ``norm`` tensors (LayerNorm runs in fp32 under autocast) and ``residual`` tensors (the
token stream: the dtype of the weights). Attention goes through scaled_dot_product_attention, whose flash /
memory-efficient kernels (CUDA, and the CPU flash kernel torch picks for these shapes, with or without the
caption mask) save only the output and a log-sum-exp per head and query: no [S, S] / [T, T] score matrix.
With gradient checkpointing a block keeps only its input; one block's activations exist again while it is
recomputed in the backward pass.

Checked against measured peaks (opensora_core.doctor.measure, one CPU rank, tests/doctor): predicted/measured
1.03-1.09 for the tiny preset's stages in fp32 and bf16 and with checkpointing, 1.21 for a half-width model with
checkpointing in bf16 (it over-predicts there: the weight casts and the recomputed block are counted together).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

GiB = 2**30

# What each block saves for backward, per video token, in units of hidden_size: (what, units, dtype class).
# "mlp" units are multiplied by mlp_ratio. Derived from opensora_core.models.stdit.STDiTBlock.forward.
SPATIAL_SAVED = (
    ("block input (norm1's input)", 1, "residual"),
    ("norm1 output (kept by the modulation's multiply)", 1, "norm"),
    ("modulated input of qkv", 1, "compute"),
    ("qkv", 3, "compute"),
    ("attention output", 1, "compute"),
    ("heads merged: proj input", 1, "compute"),
    ("proj output (kept by the gate's multiply)", 1, "compute"),
)
TEMPORAL_SAVED = (
    ("frames-major copy: qkv input", 1, "compute"),
    ("qkv", 3, "compute"),
    ("attention output", 1, "compute"),
    ("heads merged: proj input", 1, "compute"),
    ("proj output back in token order (gate's multiply)", 1, "compute"),
)
CROSS_SAVED = (
    ("q_linear input", 1, "compute"),
    ("queries", 1, "compute"),
    ("attention output", 1, "compute"),
    ("masked, heads merged: proj input", 1, "compute"),
)
MLP_SAVED = (
    ("norm2 input (residual)", 1, "residual"),
    ("norm2 output", 1, "norm"),
    ("modulated input of fc1", 1, "compute"),
    ("fc1 output (GELU input)", "mlp", "compute"),
    ("GELU output (fc2 input)", "mlp", "compute"),
    ("fc2 output (gate's multiply)", 1, "compute"),
)
# per token and block, not per D: LayerNorm mean+rstd (2 norms) in fp32, SDPA log-sum-exp per head (3 attentions)
NORM_STATS_PER_TOKEN = 4
LSE_ATTENTIONS = 3
# one block's backward: the incoming and outgoing residual gradient, and the gradients of the MLP's hidden layer
# (fc1 output and GELU input), the largest tensors alive at once while a block runs backward
WORKSPACE = (("residual gradients", 2, "residual"), ("MLP hidden gradients", "mlp", "compute"),
             ("GELU input gradient", "mlp", "compute"))
# the IDDPM hybrid loss keeps a handful of fp32 copies of the model output (eps, variance, targets, KL terms)
LOSS_COPIES = 10

ENGINES = ("ddp", "zero2", "fsdp")
# `train.engine` of params.yaml -> what it shards (fsdp: FSDP2, once the config accepts it)
CONFIG_ENGINES = {"torch": "ddp", "colossalai": "zero2", "fsdp": "fsdp"}
ZERO2_REDUCE_BUCKET = 12 * 2**20  # elements: LowLevelZeroPlugin(reduce_bucket_size_in_m=12)


@dataclass(frozen=True)
class ModelShape:
    """What the memory of a diffusion transformer depends on (counts from the built model, see `from_model`)."""

    params: int              # all parameters
    trainable: int           # parameters with requires_grad
    buffers: int             # floating buffer elements (position embeddings, null caption): fp32
    block_params: int        # parameters of one block (FSDP gathers one at a time)
    depth: int
    hidden: int
    heads: int
    mlp_ratio: float
    temporal_attention: bool  # STDiT (spatial + temporal) or DiT (one attention over all tokens)
    patch: tuple[int, int, int]
    in_channels: int
    out_channels: int
    caption_channels: int
    caption_tokens: int

    @classmethod
    def from_model(cls, model) -> ModelShape:
        """Counts of a built model (build it on the meta device: nothing is allocated)."""
        block = model.blocks[0]
        buffers = sum(b.numel() for b in model.buffers() if b.is_floating_point())
        return cls(
            params=sum(p.numel() for p in model.parameters()),
            trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
            buffers=buffers, block_params=sum(p.numel() for p in block.parameters()), depth=len(model.blocks),
            hidden=model.hidden_size, heads=model.num_heads, mlp_ratio=model.mlp_ratio,
            temporal_attention=hasattr(block, "attn_temp"), patch=tuple(model.patch_size),
            in_channels=model.in_channels, out_channels=model.out_channels,
            caption_channels=model.caption_channels, caption_tokens=model.model_max_length)


@dataclass(frozen=True)
class Workload:
    """One training stage on one GPU: the model, the batch per GPU and its latent size, how it is trained."""

    model: ModelShape
    batch: int
    latent: tuple[int, int, int]   # latent (T, H, W) of one sample
    dtype: str = "bf16"            # fp32 | bf16 | fp16
    engine: str = "ddp"            # ddp | zero2 | fsdp
    gpus: int = 1                  # ranks of the job (ZeRO / FSDP shard over all of them)
    sp_size: int = 1               # sequence parallelism: each rank holds 1/sp of the tokens
    grad_checkpoint: bool = False
    encoders: EncoderLoad | None = None  # VAE + T5 on the GPU when the stage encodes online

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"engine {self.engine!r}: one of {', '.join(ENGINES)}")

    @property
    def tokens(self) -> int:
        """Video tokens one rank holds per sample."""
        t, h, w = (-(-s // p) for s, p in zip(self.latent, self.model.patch))
        return t * h * w // self.sp_size

    @property
    def frames(self) -> int:
        return -(-self.latent[0] // self.model.patch[0])


@dataclass(frozen=True)
class EncoderLoad:
    """Frozen encoders that run on the training GPU when the latent cache is off (Open-Sora 1.0's default)."""

    vae_params: int
    text_params: int
    frames_per_vae_call: int      # micro batch of frames through the VAE encoder
    image_size: int
    vae_first_channels: int = 128  # SD VAE's widest full-resolution feature map (block_out_channels[0])
    weight_bytes: int = 4          # the encoders are loaded in fp32 (opensora_core.encoders)

    def bytes(self) -> dict[str, float]:
        # no-grad VAE encoder: about three full-resolution feature maps alive at once (input, norm, conv output)
        work = 3 * self.frames_per_vae_call * self.vae_first_channels * self.image_size**2 * 4
        return {"encoder weights": (self.vae_params + self.text_params) * self.weight_bytes,
                "VAE encoding workspace": work}


@dataclass
class Prediction:
    workload: Workload
    parts: dict[str, float] = field(default_factory=dict)  # bytes

    @property
    def peak(self) -> float:
        return sum(self.parts.values())


def _bytes(dtype_class: str, w: Workload) -> int:
    low = 4 if w.dtype == "fp32" else 2
    if dtype_class == "compute":
        return low
    if dtype_class == "norm":
        return 4
    # residual stream: the weights' dtype (ZeRO-2 casts the model; the torch engines keep fp32 weights)
    return low if w.engine == "zero2" else 4


def _per_token(table, w: Workload) -> float:
    """Bytes per token of one block (or of the workspace) for a table of (what, units, dtype class)."""
    d, r = w.model.hidden, w.model.mlp_ratio
    return sum((d * r if units == "mlp" else d * units) * _bytes(kind, w) for _, units, kind in table)


def block_activation_bytes(w: Workload) -> float:
    """What one block saves for backward, for the whole per-GPU batch."""
    m = w.model
    table = SPATIAL_SAVED + (TEMPORAL_SAVED if m.temporal_attention else ()) + CROSS_SAVED + MLP_SAVED
    attentions = LSE_ATTENTIONS if m.temporal_attention else LSE_ATTENTIONS - 1
    per_token = _per_token(table, w) + 4 * (NORM_STATS_PER_TOKEN + attentions * m.heads)
    # cross-attention: each block's kv_linear input (its own cast of the caption under autocast) and keys/values
    caption = 3 * m.caption_tokens * m.hidden * _bytes("compute", w)
    return w.batch * (w.tokens * per_token + caption)


def activation_parts(w: Workload) -> dict[str, float]:
    m = w.model
    block = block_activation_bytes(w)
    parts = {}
    if w.grad_checkpoint:
        # checkpoint(...) keeps each block's input tensor; the recomputed block lives again during its backward
        parts["activations: block inputs (checkpointed)"] = m.depth * w.batch * w.tokens * m.hidden * _bytes("residual", w)
        parts["activations: one recomputed block"] = block
    else:
        parts["activations: blocks"] = m.depth * block
    out_per_token = math.prod(m.patch) * m.out_channels
    in_per_token = math.prod(m.patch) * m.in_channels
    # embedding (latent input, its patch-embedding copy), final layer (norm in/out, modulated input), the loss
    edge = w.tokens * (in_per_token * 8 + m.hidden * (_bytes("residual", w) + 4 + _bytes("compute", w))
                       + out_per_token * 4 * LOSS_COPIES)
    caption = m.caption_tokens * (m.caption_channels * 8 + 3 * m.hidden * _bytes("compute", w))
    parts["activations: embeddings, final layer, loss"] = w.batch * (edge + caption)
    return parts


def state_parts(w: Workload) -> dict[str, float]:
    m, n = w.model, w.gpus
    mixed = w.dtype != "fp32"
    ema = 4 * (m.params + m.buffers)
    if w.engine == "ddp":
        parts = {"weights (fp32)": 4 * m.params + 4 * m.buffers, "gradients (fp32)": 4 * m.trainable,
                 "AdamW m+v (fp32)": 8 * m.trainable, "EMA (fp32)": ema}
        if n > 1:
            parts["DDP gradient buckets"] = 4 * m.trainable
        if mixed:
            parts[f"{w.dtype} weight casts (autocast)"] = 2 * m.params
    elif w.engine == "zero2":
        low = 2 if mixed else 4
        parts = {f"weights ({w.dtype})": low * m.params + 4 * m.buffers,
                 "gradients (sharded)": low * m.trainable / n + low * min(ZERO2_REDUCE_BUCKET, m.trainable),
                 "AdamW m+v (sharded)": 8 * m.trainable / n, "EMA (fp32)": ema}
        if mixed:
            parts["fp32 master weights (sharded)"] = 4 * m.trainable / n
    else:  # fsdp
        gathered = 2 * m.block_params if n > 1 else 0
        parts = {"weights (fp32, sharded + 2 blocks gathered)": 4 * m.params / n + 4 * gathered + 4 * m.buffers,
                 "gradients (sharded + 1 block)": 4 * m.trainable / n + (4 * m.block_params if n > 1 else 0),
                 "AdamW m+v (sharded)": 8 * m.trainable / n, "EMA (fp32, sharded)": ema / n}
        if mixed:
            parts[f"{w.dtype} weight casts (autocast)"] = 2 * m.params
    return parts


def _gradient_key(parts: dict) -> str:
    return next(k for k in parts if k.startswith("gradients"))


def predict(w: Workload) -> Prediction:
    """Peak bytes per GPU of one training step of `w`, by part."""
    parts = state_parts(w)
    parts.update(activation_parts(w))
    workspace = w.batch * w.tokens * _per_token(WORKSPACE, w)
    # the loop frees last step's gradients after the forward pass: they and the backward transient never coexist
    grads = parts[_gradient_key(parts)]
    parts["backward transient beyond the gradients"] = max(0.0, workspace - grads)
    if w.encoders is not None:
        parts.update(w.encoders.bytes())
    return Prediction(w, parts)


def largest_batch(w: Workload, budget_bytes: float, limit: int = 1 << 16) -> int:
    """The largest batch per GPU whose predicted peak fits `budget_bytes` (0: not even batch 1)."""
    if predict(replace(w, batch=1)).peak > budget_bytes:
        return 0
    lo, hi = 1, 2
    while hi <= limit and predict(replace(w, batch=hi)).peak <= budget_bytes:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # the peak grows with the batch: bisect
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if predict(replace(w, batch=mid)).peak <= budget_bytes else (lo, mid)
    return lo


# What the GPU cannot give to tensors: the CUDA context and kernels (~1 GiB) and the caching allocator's
# fragmentation (a few percent of what it holds).
CUDA_CONTEXT_BYTES = 1 * GiB
ALLOCATOR_SLACK = 0.05


def usable_bytes(gpu_memory_gib: float) -> float:
    return (gpu_memory_gib * GiB - CUDA_CONTEXT_BYTES) * (1 - ALLOCATOR_SLACK)
