"""Typed configuration: `params.yaml` -> a validated `Config` (schema.py), loaded with its preset and overrides
(loading.py); the run directory's layout (paths.py)."""

from opensora_core.config.loading import (
    Params,
    apply_overrides,
    config_from_json,
    load_config,
    params_path,
)
from opensora_core.config.paths import RunPaths
from opensora_core.config.schema import (
    OVERRIDABLE_SECTIONS,
    STAGE_ORDER,
    Config,
    ConfigError,
    DataConfig,
    EvalConfig,
    ModelConfig,
    StageConfig,
    SyntheticVocabConfig,
    TextEncoderConfig,
    TrackingConfig,
    TrainConfig,
    VAEConfig,
)

__all__ = [
    "OVERRIDABLE_SECTIONS", "STAGE_ORDER", "Config", "ConfigError", "DataConfig", "EvalConfig", "ModelConfig",
    "Params", "RunPaths", "StageConfig", "SyntheticVocabConfig", "TextEncoderConfig", "TrackingConfig", "TrainConfig",
    "VAEConfig", "apply_overrides", "config_from_json", "load_config", "params_path",
]
