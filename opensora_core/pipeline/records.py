"""Stage records: what a stage did, kept at `<run_dir>/.stages/<id>.json`, and whether it is up to date.

A direct call skips a stage whose record is done with the current fingerprint and whose outputs exist, as
`dvc repro` skips a stage from `dvc.lock`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from opensora_core.config import Config
from opensora_core.io import atomic_write_json
from opensora_core.pipeline.graph import fingerprint, outputs


@dataclass
class StageResult:
    """What a stage did: `ran` false means it was up to date and skipped."""

    stage: str
    ran: bool
    seconds: float
    fingerprint: str
    outputs: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    finished_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def record_path(cfg: Config, stage_id: str) -> Path:
    return cfg.root / ".stages" / f"{stage_id}.json"


def lock_path(cfg: Config, stage_id: str) -> Path:
    return cfg.root / ".stages" / f"{stage_id}.lock"


def read_record(cfg: Config, stage_id: str) -> dict | None:
    try:
        return json.loads(record_path(cfg, stage_id).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_record(cfg: Config, stage_id: str, data: dict) -> None:
    path = record_path(cfg, stage_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, data, indent=1, default=str)


def is_up_to_date(cfg: Config, stage_id: str) -> bool:
    rec = read_record(cfg, stage_id)
    return bool(rec and rec.get("status") == "done" and rec.get("fingerprint") == fingerprint(cfg, stage_id)
                and all(o.exists() for o in outputs(cfg, stage_id)))
