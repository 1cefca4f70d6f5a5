"""What the config's stages will need: per-GPU memory workloads (opensora_core.doctor.memory) and disk.

The model is built on the meta device to count its parameters (nothing is allocated, STDiT-XL/2 included).

Heavy or optional imports (safetensors, torch) happen inside the functions that need them, so importing this module
(the CLI, the stage processes, the Dask workers do) does not load them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from opensora_core import project
from opensora_core.config import Config
from opensora_core.doctor.memory import CONFIG_ENGINES, EncoderLoad, ModelShape, Workload

# Parameter counts of the released encoders Open-Sora 1.0 runs online (facts of those checkpoints), used when the
# weights are not on this machine; local folders are counted from their safetensors headers.
KNOWN_ENCODER_PARAMS = {
    "stabilityai/sd-vae-ft-ema": 83_653_863,      # AutoencoderKL, encoder + decoder
    "DeepFloyd/t5-v1_1-xxl": 4_762_310_656,       # T5EncoderModel (encoder only)
}


def model_shape(cfg: Config, stage: str) -> ModelShape:
    import torch

    from opensora_core.models.stage import build_stage_model

    with torch.device("meta"):
        model = build_stage_model(cfg, stage)
    return ModelShape.from_model(model)


def stage_grad_checkpoint(cfg: Config, stage: str) -> bool:
    st = cfg.stage(stage)
    return st.grad_checkpoint if st.grad_checkpoint is not None else cfg.model.grad_checkpoint


def memory_engine(cfg: Config, engine: str | None = None) -> str:
    """The memory model's engine (ddp | zero2 | fsdp) for `train.engine` or an explicit choice."""
    choice = engine or cfg.train.engine
    if choice in CONFIG_ENGINES.values():
        return choice
    if choice not in CONFIG_ENGINES:
        raise ValueError(f"engine {choice!r}: one of {', '.join([*CONFIG_ENGINES, 'ddp', 'zero2'])}")
    return CONFIG_ENGINES[choice]


def _count_local_params(folder: Path) -> int | None:
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                n = 1
                for s in st.get_slice(key).get_shape():
                    n *= s
                total += n
    return total


def encoder_params(cfg: Config, pretrained: str | None, tiny_folder: Path) -> int | None:
    """Parameters of an encoder: a local folder's safetensors, or the known released size; None when unknown."""
    if pretrained is None:
        return _count_local_params(tiny_folder) if tiny_folder.is_dir() else None
    local = Path(project.resolve_local_or_id(cfg.project_dir, pretrained))
    if local.is_dir():
        return _count_local_params(local)
    return KNOWN_ENCODER_PARAMS.get(pretrained)


def encoder_load(cfg: Config, stage: str) -> EncoderLoad | None:
    """The online encoders of a stage (None with the latent cache); unknown sizes count as 0 (the CLI says so)."""
    if cfg.train.use_latent_cache:
        return None
    vae = encoder_params(cfg, cfg.vae.pretrained, cfg.paths.vae_dir) or 0
    text = encoder_params(cfg, cfg.text_encoder.pretrained, cfg.paths.text_encoder_dir) or 0
    return EncoderLoad(vae_params=vae, text_params=text, frames_per_vae_call=cfg.vae.micro_batch_size,
                       image_size=cfg.stage(stage).image_size)


def workload(cfg: Config, stage: str, gpus: int | None = None, engine: str | None = None,
             shape: ModelShape | None = None) -> Workload:
    """The per-GPU workload of `stage` on `gpus` ranks (default: train.processes)."""
    from opensora_core.models.stage import latent_size

    st = cfg.stage(stage)
    return Workload(model=shape or model_shape(cfg, stage), batch=st.batch_size, latent=latent_size(cfg, stage),
                    dtype=cfg.train.dtype, engine=memory_engine(cfg, engine), gpus=gpus or cfg.train.processes,
                    sp_size=st.sp_size, grad_checkpoint=stage_grad_checkpoint(cfg, stage),
                    encoders=encoder_load(cfg, stage))


# ---------------------------------------------------------------------------------------------------------
# Disk


@dataclass
class DiskNeed:
    what: str
    bytes: float


def clip_count(cfg: Config) -> int | None:
    """Clips the caches will hold: the captioned manifest's rows if it exists, else the synthetic data's count."""
    if cfg.paths.manifest.is_file():
        with open(cfg.paths.manifest) as f:
            return max(0, sum(1 for _ in f) - 1)
    if cfg.data.source == "synthetic":
        return cfg.data.num_videos
    return None


def disk_needs(cfg: Config, stages: list[str], shapes: dict[str, ModelShape] | None = None) -> list[DiskNeed]:
    """What the stages write under run_dir: latent caches (fp32 latents + caption embeddings + mask per clip) and
    checkpoints (model + EMA safetensors and the AdamW state, keep_last of them plus one being written)."""
    from opensora_core.models.stage import latent_size

    needs = []
    clips = clip_count(cfg)
    for stage in stages:
        shape = (shapes or {}).get(stage) or model_shape(cfg, stage)
        if cfg.train.use_latent_cache and clips is not None:
            t, h, w = latent_size(cfg, stage)
            n, cc = cfg.text_encoder.model_max_length, cfg.text_encoder.hidden_size
            per_clip = 4 * cfg.vae.latent_channels * t * h * w + 4 * n * cc + 8 * n
            needs.append(DiskNeed(f"latent cache {stage} ({clips} clips)", clips * per_clip))
        per_ckpt = 4 * (shape.params + shape.buffers) * 2 + 8 * shape.trainable
        if cfg.train.engine == "colossalai":  # the Booster's own model + optimizer files beside ours
            per_ckpt += 4 * shape.params + 8 * shape.trainable
        needs.append(DiskNeed(f"checkpoints {stage} ({cfg.train.keep_last} kept + 1 in flight)",
                              (cfg.train.keep_last + 1) * per_ckpt))
    return needs
