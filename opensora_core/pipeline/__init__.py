"""The pipeline: one implementation of every stage behind three front doors (the `opensora` CLI, `dvc.yaml`,
Prefect). graph.py: stage ids, upstream, outputs, fingerprints; records.py: what a stage did; bodies.py: what
each stage does (the `STAGES` registry); runner.py: running one stage; process.py: streaming a child's output.
"""

from opensora_core.config import Params
from opensora_core.pipeline.bodies import STAGES, Stage, StageContext, final_metrics
from opensora_core.pipeline.graph import STAGE_KEYS, fingerprint, outputs, split_id, stage_ids, upstream
from opensora_core.pipeline.process import LineCallback, stream_command
from opensora_core.pipeline.records import StageResult, is_up_to_date, lock_path, read_record, record_path, write_record
from opensora_core.pipeline.runner import run_stage

__all__ = [
    "STAGES", "STAGE_KEYS", "LineCallback", "Params", "Stage", "StageContext", "StageResult", "final_metrics",
    "fingerprint", "is_up_to_date", "lock_path", "outputs", "read_record", "record_path", "run_stage", "split_id",
    "stage_ids", "stream_command", "upstream", "write_record",
]
