"""The schema of params.yaml: one pydantic model per section, validated before anything runs.

An unknown key, a wrong type or an impossible value fails validation naming the field; opensora_core.config.loading
turns that into a ConfigError that also names the file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from opensora_core import project
from opensora_core.config.paths import RunPaths
from opensora_core.vocabulary import Vocabulary

OVERRIDABLE_SECTIONS = ("run_dir", "model", "vae", "text_encoder", "data", "train", "stages", "eval", "tracking")
STAGE_ORDER = ("pretrain_256", "finetune_512", "finetune_64f")


class ConfigError(ValueError):
    """Invalid parameters; the message names the file and the field."""


class _Strict(BaseModel):
    # inf/nan are never a meaningful learning rate, size or probability
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)


class ModelConfig(_Strict):
    name: str = Field(description="registry name in opensora_core.models, e.g. STDiT-XL/2 or STDiT-tiny")
    hidden_size: int = Field(gt=0)
    depth: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    patch_size: tuple[int, int, int] = (1, 2, 2)
    mlp_ratio: float = Field(4.0, gt=0)
    class_dropout_prob: float = Field(0.1, ge=0, le=1)
    drop_path: float = Field(0.0, ge=0, lt=1)
    grad_checkpoint: bool = False
    freeze: Literal["not_temporal", "text"] | None = None
    init_from: str | None = None
    # null: the model's own (STDiT: "first_block", Open-Sora 1.0; DiT: "input"); see models.stdit and models.dit
    temporal_pos: Literal["first_block", "input"] | None = None

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> ModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if min(self.patch_size) < 1:
            raise ValueError(f"patch_size {self.patch_size} must be positive")
        return self


class VAEConfig(_Strict):
    pretrained: str | None = None
    scaling_factor: float = Field(0.18215, gt=0)
    downsample: int = Field(8, gt=0)
    latent_channels: int = Field(4, gt=0)
    micro_batch_size: int = Field(16, gt=0)
    train_steps: int = Field(0, ge=0)
    train_batch_size: int = Field(0, ge=0)
    train_lr: float = Field(0.0, ge=0)
    train_decay_at_psnr: float = Field(27.0, gt=0, description="dB of the training frames at which the tiny VAE's "
                                       "lr starts to decay (encoders.vae_schedule.StableDecaySchedule)")


class TextEncoderConfig(_Strict):
    pretrained: str | None = None
    hidden_size: int = Field(gt=0)
    model_max_length: int = Field(gt=0)


class SyntheticVocabConfig(_Strict):
    """Which attributes synthetic clips are drawn from (null: all of them, see opensora_core.vocabulary)."""
    colors: list[str] | None = None
    motions: list[str] | None = None
    backgrounds: list[str] | None = None
    two_object_fraction: float | None = Field(None, ge=0, le=1)
    lane_jitter: float | None = Field(None, ge=0, le=0.3)
    start: Literal["edge", "centre"] | None = None

    @model_validator(mode="after")
    def _known_names(self) -> SyntheticVocabConfig:
        Vocabulary.from_config(self)
        return self


class DataConfig(_Strict):
    # synthetic: rendered clips; ingest: every video under src (a folder or s3:// prefix); csv: a captions CSV
    # in Open-Sora 1.0's format (path,text[,num_frames,fps,height,width]) at src, see data/csv_source.py
    source: Literal["synthetic", "ingest", "csv"] = "synthetic"
    src: str | None = None
    scene_split: bool | None = None  # cut files at scene changes; null: yes for ingest, no for csv
    captioner: Literal["synthetic", "llava", "existing"] = "synthetic"
    llava_model: str = "llava-hf/llava-1.5-7b-hf"
    num_videos: int = Field(0, ge=0)
    video_frames: int = Field(0, ge=0)
    video_size: int = Field(0, ge=0)
    val_fraction: float = Field(0.1, ge=0, lt=1)
    min_duration: float = Field(0.0, ge=0)
    max_duration: float = Field(60.0, gt=0)
    min_resolution: int = Field(0, ge=0)
    synthetic: SyntheticVocabConfig = SyntheticVocabConfig()
    # Dask cluster for the parallel data work (ingest's probe/hash/scene split, latent-cache shards), through
    # prefect-dask: null (single process), "local", "local:N" (N workers here), or a scheduler address
    # (tcp://host:8786). The outputs are the same either way, so it is not part of any stage's fingerprint.
    dask: str | None = None
    # work items per Dask chunk: items / (worker threads x this); a chunk is one Dask future (ms of overhead), so
    # a few per worker balance the load without the per-task cost of one Prefect task run per file or shard
    dask_chunks_per_worker: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _source_is_complete(self) -> DataConfig:
        if self.source == "synthetic" and not (self.num_videos and self.video_frames and self.video_size):
            raise ValueError("synthetic data needs num_videos, video_frames and video_size > 0")
        if self.source == "ingest" and not self.src:
            raise ValueError("ingest needs src (a local folder or s3://bucket/prefix)")
        if self.source == "csv" and not self.src:
            raise ValueError("source csv needs src (a captions CSV with columns path,text)")
        if self.source == "csv" and self.captioner == "synthetic":
            raise ValueError("captioner synthetic reads the ground truth of synthetic clips; a csv source keeps its "
                             "captions with captioner: existing (or recaptions them with llava)")
        local = self.dask is not None and (self.dask == "local" or self.dask.startswith("local:"))
        if self.dask is not None and not (re.fullmatch(r"local(:[1-9][0-9]*)?", self.dask) if local
                                          else re.fullmatch(r"[a-z]+://\S+|[\w.-]+:\d+", self.dask)):
            raise ValueError(f"dask {self.dask!r}: expected local, local:N (N >= 1 workers) or a scheduler address (tcp://host:8786)")
        if self.min_duration > self.max_duration:
            raise ValueError(f"min_duration {self.min_duration} > max_duration {self.max_duration}")
        return self


class TrainConfig(_Strict):
    # torch: DDP; fsdp: FSDP2 (fully_shard per block + root, DCP checkpoints); colossalai: Booster + ZeRO-2
    engine: Literal["torch", "fsdp", "colossalai"] = "torch"
    # fsdp: free the gathered weights after each block's forward (ZeRO-3); false keeps them to the backward
    # (ZeRO-2-like: more memory, one all-gather less per block)
    fsdp_reshard_after_forward: bool = True
    # how long a collective waits for a missing rank (gloo and NCCL) before the job fails, instead of hanging
    collective_timeout_s: float = Field(600.0, gt=0)
    dtype: Literal["fp32", "bf16", "fp16"] = "bf16"
    lr: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    ema_decay: float = Field(0.9999, ge=0, le=1)
    ckpt_every: int = Field(1000, gt=0)
    keep_last: int = Field(2, gt=0)
    log_every: int = Field(10, gt=0)
    nan_patience: int = Field(5, gt=0)
    initial_loss_scale: float = Field(65536.0, gt=0)
    num_workers: int = Field(0, ge=0)
    use_latent_cache: bool = True
    init_from_ema: bool = True
    # "eps": Open-Sora 1.0's plain noise-prediction MSE; "v": the same MSE weighted into the v-prediction loss;
    # "min_snr": Min-SNR-gamma, weight min(SNR, gamma) / SNR (opensora_core.diffusion.GaussianDiffusion.mse_weight)
    loss_weighting: Literal["eps", "v", "min_snr"] = "eps"
    min_snr_gamma: float = Field(5.0, gt=0)
    # the cap on the "v" weight 1 + 1/SNR (the noisiest steps would otherwise weigh up to 25000x the clean ones)
    max_loss_weight: float = Field(1000.0, ge=1)
    processes: int = Field(1, gt=0)
    # Watching training (opensora_core.eval.watch): every `sample_every` steps (0 = never) rank 0 samples
    # `sample_prompts` fixed held-out prompts with the EMA weights and logs a gif grid and adherence metrics.
    sample_every: int = Field(0, ge=0)
    sample_prompts: int = Field(8, gt=0)
    sample_steps: int = Field(25, gt=0)
    sample_cfg_scale: float | None = Field(None, ge=0, description="null: eval.cfg_scale")
    # MFU's denominator: dense TFLOP/s of one device at the training dtype (null: a known GPU's, none on CPU)
    peak_tflops: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _watching_needs_whole_weights(self) -> TrainConfig:
        if self.engine == "fsdp" and self.sample_every:
            # rank 0 samples alone with the EMA weights; FSDP shards them across ranks (eval/watch.py)
            raise ValueError("sample_every > 0 is not supported with engine fsdp yet (the EMA weights are sharded); "
                             "set train.sample_every=0 or evaluate the checkpoints")
        return self


class StageConfig(_Strict):
    num_frames: int = Field(gt=0)
    frame_interval: int = Field(gt=0)
    image_size: int = Field(gt=0)
    space_scale: float = Field(gt=0)
    time_scale: float = Field(gt=0)
    batch_size: int = Field(gt=0)
    max_steps: int = Field(gt=0)
    sp_size: int = Field(1, gt=0)
    grad_checkpoint: bool | None = None
    lr: float | None = Field(None, gt=0)
    init_from: str | None = Field(None, description="previous (default after the first stage), scratch, or a path")


class EvalConfig(_Strict):
    cfg_scale: float = Field(7.0, ge=0)
    sampling_steps: int = Field(100, gt=0)
    num_prompts: int = Field(8, gt=0)
    seed: int = Field(1234, ge=0, lt=2**32)  # numpy's seed range
    seeds: int = Field(1, ge=1, description="sampling seeds per prompt (seed, seed+1, ...): each trained model's "
                       "adherence is scored over prompts x seeds; the untrained step-0 model samples one")
    prompts: str | None = None
    batch_size: int = Field(16, gt=0, description="prompts sampled together (CFG doubles the model batch)")


class TrackingConfig(_Strict):
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "opensora-flow"


class Config(_Strict):
    """The resolved configuration of one preset (what every stage receives)."""

    preset: str
    seed: int = Field(42, ge=0, lt=2**32)  # numpy's seed range
    run_dir: str = Field(min_length=1)  # "" would put every output in the project root
    model: ModelConfig
    vae: VAEConfig
    text_encoder: TextEncoderConfig
    data: DataConfig
    train: TrainConfig
    stages: dict[str, StageConfig] = Field(min_length=1)
    eval: EvalConfig
    tracking: TrackingConfig

    @model_validator(mode="after")
    def _stages_fit_the_model(self) -> Config:
        pt, ph, pw = self.model.patch_size
        for name, st in self.stages.items():
            where = f"stages.{name}"
            if st.num_frames % pt:
                raise ValueError(f"{where}.num_frames {st.num_frames} is not divisible by patch_size[0] {pt}")
            if st.image_size % self.vae.downsample:
                raise ValueError(f"{where}.image_size {st.image_size} is not divisible by vae.downsample {self.vae.downsample}")
            latent = st.image_size // self.vae.downsample
            if latent % ph or latent % pw:
                raise ValueError(f"{where}.image_size {st.image_size}: latent size {latent} is not divisible by patch {ph}x{pw}")
            if (st.num_frames // pt) % st.sp_size:
                raise ValueError(f"{where}.sp_size {st.sp_size} does not divide the {st.num_frames // pt} latent frames")
            if self.train.processes % st.sp_size:
                raise ValueError(f"{where}.sp_size {st.sp_size} does not divide train.processes {self.train.processes}")
            if self.data.source == "synthetic" and (st.num_frames - 1) * st.frame_interval + 1 > self.data.video_frames:
                raise ValueError(
                    f"{where}: {st.num_frames} frames at stride {st.frame_interval} need "
                    f"{(st.num_frames - 1) * st.frame_interval + 1} source frames, data.video_frames is {self.data.video_frames}"
                )
        return self

    # the project this config was loaded from (the folder of params.yaml); not a parameter
    _project_dir: Path | None = PrivateAttr(default=None)

    # --- derived values, so no stage recomputes them differently ---
    @property
    def project_dir(self) -> Path:
        """The project root: every relative path of the config is taken from here (opensora_core.project)."""
        return self._project_dir or project.find_root() or Path.cwd()

    def resolve_path(self, value: str | Path) -> Path:
        """A relative path of the config (run_dir, data.src, eval.prompts, ...) taken from the project root."""
        return project.resolve(self.project_dir, value)

    @property
    def root(self) -> Path:
        """Run directory of this preset (absolute; relative paths are taken from the project root)."""
        return self.resolve_path(self.run_dir)

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.root)

    def stage_names(self) -> list[str]:
        """Training stages in pipeline order: the known Open-Sora 1.0 stages first, user-added ones after."""
        known = [s for s in STAGE_ORDER if s in self.stages]
        return known + [s for s in self.stages if s not in STAGE_ORDER]

    def stage(self, name: str) -> StageConfig:
        if name not in self.stages:
            raise ConfigError(f"unknown stage {name!r}; params.yaml defines {', '.join(self.stage_names())}")
        return self.stages[name]

    def previous_stage(self, name: str) -> str | None:
        order = self.stage_names()
        i = order.index(name)
        return order[i - 1] if i > 0 else None

    def to_flat_dict(self) -> dict[str, Any]:
        """`section.key -> value` for logging as MLflow params."""
        out: dict[str, Any] = {}

        def walk(prefix: str, obj: Any) -> None:
            if isinstance(obj, dict):
                for k, v in obj.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                out[prefix] = obj

        walk("", self.model_dump(mode="json"))
        return out
