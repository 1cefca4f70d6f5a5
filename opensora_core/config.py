"""Typed configuration: `params.yaml` -> a validated `Config`.

`params.yaml` names a `preset` (a block of `presets`); the top-level sections override that preset key by key
(a null leaves the preset's value), then `key=value` overrides from the command line apply last. The result is
validated with pydantic before anything runs: an unknown key, a wrong type or an impossible value raises
`ConfigError` naming the field and the file (the CLI turns it into exit code 2).
"""

from __future__ import annotations

import copy
import json
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from opensora_core import project

OVERRIDABLE_SECTIONS = ("run_dir", "model", "vae", "text_encoder", "data", "train", "stages", "eval", "tracking")
STAGE_ORDER = ("pretrain_256", "finetune_512", "finetune_64f")
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's safe loader: ~10x faster, same results


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
    # null: the model's own (STDiT: "first_block", Open-Sora 1.0; DiT: "input"); see models.base
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
                                       "lr starts to decay (encoders.vae_train._LrSchedule)")


class TextEncoderConfig(_Strict):
    pretrained: str | None = None
    hidden_size: int = Field(gt=0)
    model_max_length: int = Field(gt=0)


class SyntheticVocabConfig(_Strict):
    """Which attributes synthetic clips are drawn from (null: all of them, see opensora_core.data.synthetic)."""
    colors: list[str] | None = None
    motions: list[str] | None = None
    backgrounds: list[str] | None = None
    two_object_fraction: float | None = Field(None, ge=0, le=1)
    lane_jitter: float | None = Field(None, ge=0, le=0.3)
    start: Literal["edge", "centre"] | None = None

    @model_validator(mode="after")
    def _known_names(self) -> SyntheticVocabConfig:
        from opensora_core.data.synthetic import Vocabulary  # numpy only: cheap, and the names live there

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
    # Watching training (opensora_core.train.watch): every `sample_every` steps (0 = never) rank 0 samples
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
            # rank 0 samples alone with the EMA weights; FSDP shards them across ranks (train/watch.py)
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


class RunPaths:
    """Where each stage reads and writes, under the run directory: one place, so stages agree."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.raw_dir = self.root / "data" / "raw"              # prepare: videos/ + manifest.csv + rejects.csv
        self.videos_dir = self.raw_dir / "videos"
        self.raw_manifest = self.raw_dir / "manifest.csv"
        self.rejects = self.raw_dir / "rejects.csv"
        self.manifest = self.root / "data" / "manifest.csv"    # caption: captioned clips with a split column
        self.encoders_dir = self.root / "encoders"
        self.vae_dir = self.encoders_dir / "vae"               # tiny preset: AutoencoderKL trained by the pipeline
        self.text_encoder_dir = self.encoders_dir / "text_encoder"
        self.eval_dir = self.root / "eval"
        self.metrics = self.eval_dir / "metrics.json"

    def cache_dir(self, stage: str) -> Path:
        return self.root / "cache" / stage

    def ckpt_dir(self, stage: str) -> Path:
        return self.root / "checkpoints" / stage


# --------------------------------------------------------------------------------------------------------
# Loading


def _deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            continue  # null in the top-level sections means "keep the preset's value"
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _unknown_null_keys(override: dict, model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted keys of `override` that are null and that `model` does not know: `_deep_merge` drops nulls (keep
    the preset's value), so without this a misspelt `lerning_rate: null` would vanish instead of failing."""
    found = []
    for key, value in override.items():
        field = model.model_fields.get(key) if isinstance(key, str) else None
        if field is None:
            found += [f"{prefix}{key}"] if value is None else []  # non-null unknown keys fail validation anyway
            continue
        inner = field.annotation
        if typing.get_origin(inner) is dict:  # stages: name -> StageConfig
            inner = typing.get_args(inner)[1]
            for name, sub in (value or {}).items() if isinstance(value, dict) else ():
                if isinstance(sub, dict):
                    found += _unknown_null_keys(sub, inner, f"{prefix}{key}.{name}.")
        elif isinstance(value, dict) and isinstance(inner, type) and issubclass(inner, BaseModel):
            found += _unknown_null_keys(value, inner, f"{prefix}{key}.")
    return found


def _parse_value(text: str) -> Any:
    """`key=value` values are YAML scalars/lists: `2e-5`, `true`, `[1,2,2]`, `null`, `bf16`."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:  # YAML 1.1 reads 2e-5 as a string; accept it as the float a user meant
            return float(value) if any(c.isdigit() for c in value) and value.lower().count("e") == 1 else value
        except ValueError:
            return value
    return value


def apply_overrides(tree: dict, overrides: list[str], source: str = "command line") -> dict:
    tree = copy.deepcopy(tree)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source}: override {item!r} is not key=value (e.g. train.lr=2e-5)")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = tree
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                if part in node:
                    raise ConfigError(f"{source}: {key}: {part!r} is not a section")
                node[part] = {}
            node = node[part]
        node[parts[-1]] = _parse_value(text)
    return tree


def _format_error(err: ValidationError, path: Path) -> str:
    lines = [f"invalid parameters in {path}:"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {field}: {msg}" + (f" (got {e['input']!r})" if e["type"] != "extra_forbidden" and not isinstance(e.get("input"), dict) else ""))
    return "\n".join(lines)


def _format_yaml_error(err: yaml.YAMLError, path: Path) -> str:
    """One line: where (line, column) and what PyYAML found, e.g. "line 3, column 7: expected ',' or ']'"."""
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    what = " ".join(str(getattr(err, "problem", None) or err).split())
    return f"{path} is not valid YAML: {where}{what}"


def params_path(path: str | Path | None = None) -> tuple[Path, Path]:
    """(params file, project root): the given file and the project it lives in (the nearest folder upward holding
    a params.yaml, else its own folder), or the project's params.yaml. Raises ConfigError outside any project."""
    if path:
        path = Path(path).expanduser().resolve()
        return path, project.find_root(path) or path.parent
    root = project.find_root()
    if root is None:
        raise ConfigError(project.NOT_FOUND)
    return root / project.PARAMS_FILE, root


def load_config(path: str | Path | None = None, preset: str | None = None, overrides: list[str] | None = None) -> Config:
    """Read params.yaml (default: the project's, see opensora_core.project), pick the preset, apply overrides,
    validate. Raises ConfigError naming field and file."""
    path, root = params_path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_YAML_LOADER) or {}
    except FileNotFoundError:
        raise ConfigError(f"parameters file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"parameters file {path} is a directory") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except yaml.YAMLError as e:
        raise ConfigError(_format_yaml_error(e, path)) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    allowed_top = {"preset", "seed", "presets", *OVERRIDABLE_SECTIONS}
    unknown = sorted(set(raw) - allowed_top, key=str)
    if unknown:
        raise ConfigError(f"invalid parameters in {path}:\n  {unknown[0]}: unknown key (allowed: {', '.join(sorted(allowed_top))})")
    # command-line overrides may also choose the preset
    overrides = list(overrides or [])
    top_over = apply_overrides({k: v for k, v in raw.items() if k != "presets"}, overrides)
    chosen = top_over.get("preset")
    name = preset or ("tiny" if chosen is None else chosen)  # `preset: 0` or `preset: {}` is an error, not tiny
    presets = raw.get("presets") or {}
    if not isinstance(presets, dict):
        raise ConfigError(f"invalid parameters in {path}:\n  presets: expected a mapping of preset names to sections (got {presets!r:.60})")
    if not isinstance(name, str) or name not in presets:
        raise ConfigError(f"invalid parameters in {path}:\n  preset: unknown preset {name!r:.60} (have {', '.join(map(str, presets)) or 'none: no presets section'})")
    if not isinstance(presets[name], dict):
        raise ConfigError(f"invalid parameters in {path}:\n  presets.{name}: expected a mapping of sections (got {presets[name]!r:.60})")
    sections = {k: v for k, v in top_over.items() if k in OVERRIDABLE_SECTIONS}
    unknown = _unknown_null_keys(sections, Config)
    if unknown:
        raise ConfigError(f"invalid parameters in {path}:\n  {unknown[0]}: unknown key")
    tree = _deep_merge(presets[name], sections)
    tree["preset"] = name
    tree["seed"] = top_over.get("seed", 42)
    try:
        cfg = Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_error(e, path)) from None
    cfg._project_dir = root
    return cfg


def config_from_json(text: str) -> Config:
    """Rebuild a resolved config (as stored in checkpoints and MLflow) without params.yaml."""
    return Config.model_validate(json.loads(text))
