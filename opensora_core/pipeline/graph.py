"""The stage graph: stage ids, what each stage depends on (upstream stages, config keys), what it writes.

A stage id names one unit of work, spelled the same everywhere (CLI, DVC stage name, Prefect task):

    prepare -> caption -> encoders -> cache@<stage> -> train@<stage> (one per training stage) -> evaluate

A stage's fingerprint hashes the config keys it depends on (`STAGE_KEYS`) chained with its upstream stages'
fingerprints, so a changed parameter reruns the same stages as `dvc repro` does from `dvc.lock`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from opensora_core.config import Config

# Config keys (dotted paths in the resolved config) each kind of stage depends on. dvc.yaml lists the same keys
# as `params` (under `presets.${preset}.`), so a changed parameter reruns the same stages through either door.
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "prepare": ("seed", "data.source", "data.src", "data.num_videos", "data.video_frames", "data.video_size",
                "data.min_duration", "data.max_duration", "data.min_resolution", "data.synthetic",
                "data.scene_split"),
    "caption": ("seed", "data.captioner", "data.llava_model", "data.val_fraction"),
    "encoders": ("seed", "vae", "text_encoder"),
    "cache": ("train.use_latent_cache", "stages.{s}.num_frames", "stages.{s}.frame_interval", "stages.{s}.image_size"),
    "train": ("seed", "model", "train", "stages.{s}"),
    "evaluate": ("eval",),
}
PER_TRAINING_STAGE = ("cache", "train")  # kinds with one stage per training stage: cache@<stage>, train@<stage>


def stage_ids(cfg: Config) -> list[str]:
    """Every stage id in pipeline order."""
    ids = ["prepare", "caption", "encoders"]
    for s in cfg.stage_names():
        ids += [f"cache@{s}", f"train@{s}"]
    return ids + ["evaluate"]


def split_id(stage_id: str) -> tuple[str, str | None]:
    """`train@pretrain_256` -> ("train", "pretrain_256"); `prepare` -> ("prepare", None)."""
    kind, _, sub = stage_id.partition("@")
    if kind not in STAGE_KEYS or bool(sub) != (kind in PER_TRAINING_STAGE):
        raise ValueError(f"unknown stage {stage_id!r}: expected one of prepare, caption, encoders, cache@<stage>, train@<stage>, evaluate")
    return kind, sub or None


def upstream(cfg: Config, stage_id: str) -> list[str]:
    kind, sub = split_id(stage_id)
    if kind == "prepare":
        return []
    if kind in ("caption", "encoders"):
        return ["prepare"]
    if kind == "cache":
        return ["caption", "encoders"]
    if kind == "train":
        prev = cfg.previous_stage(sub)
        return [f"cache@{sub}"] + ([f"train@{prev}"] if prev else [])
    return ["caption", "encoders", f"train@{cfg.stage_names()[-1]}"]


def outputs(cfg: Config, stage_id: str) -> list[Path]:
    """The paths a stage writes (DVC `outs` of the same stage)."""
    kind, sub = split_id(stage_id)
    p = cfg.paths
    return {
        "prepare": lambda: [p.raw_dir],
        "caption": lambda: [p.manifest],
        "encoders": lambda: [p.vae_dir, p.text_encoder_dir],
        "cache": lambda: [p.cache_dir(sub)],
        "train": lambda: [p.ckpt_dir(sub)],
        "evaluate": lambda: [p.metrics, p.eval_dir / "samples", p.eval_dir / "adherence.json"],
    }[kind]()


def _lookup(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def fingerprint(cfg: Config, stage_id: str) -> str:
    """Hash of the config keys the stage depends on, chained with its upstream stages' fingerprints."""
    kind, sub = split_id(stage_id)
    tree = cfg.model_dump(mode="json")
    own = {k.format(s=sub): _lookup(tree, k.format(s=sub)) for k in STAGE_KEYS[kind]}
    ups = [fingerprint(cfg, u) for u in upstream(cfg, stage_id)]
    text = json.dumps({"stage": stage_id, "keys": own, "upstream": ups}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
