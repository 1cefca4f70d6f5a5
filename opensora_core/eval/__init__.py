"""Evaluation: metrics read back from pixels (metrics), held-out diffusion loss (heldout), sampling (sample),
held-out prompts (prompts), the evaluate stage (evaluation) and the comparison report (report).

The stage functions import evaluation (torch) and report (matplotlib, mlflow) when called, so importing
opensora_core.eval stays light for the CLI and the pipeline.
"""

from __future__ import annotations

from typing import Any


def evaluate(cfg, **kwargs: Any) -> dict[str, float]:
    """The evaluate stage (see `opensora_core.eval.evaluation.evaluate`); imported lazily, it pulls in torch."""
    from opensora_core.eval.evaluation import evaluate as _evaluate

    return _evaluate(cfg, **kwargs)


def report(cfg, **kwargs: Any):
    """The comparison report (see `opensora_core.eval.report.build_report`)."""
    from opensora_core.eval.report import build_report

    return build_report(cfg, **kwargs)
