"""ColossalAI engine (Booster + LowLevelZeroPlugin stage 2 + HybridAdam, as Open-Sora 1.0 trained): an optional
extra for GPU clusters, imported only when `train.engine=colossalai`.

Status: only the import check is implemented. Without ColossalAI installed the job stops at start-up with a
message naming how to install it; the Booster wiring (boost, booster.backward, CheckpointIO) is not written yet.
"""

from __future__ import annotations

INSTALL_HINT = (
    "train.engine=colossalai needs ColossalAI, which is not installed in this environment. Install it the slim "
    "way into a separate venv (`make test-colossal` does: the project's torch first, then "
    "`pip install --no-deps colossalai==0.5.0` plus psutil, einops, peft, galore_torch), or use train.engine=torch "
    "(DistributedDataParallel; the CPU default)."
)


class ColossalEngine:
    name = "colossalai"

    def __init__(self, env):
        try:
            import colossalai  # noqa: F401
        except ImportError as e:
            raise RuntimeError(INSTALL_HINT) from e
        raise NotImplementedError(
            "the ColossalAI engine (Booster + LowLevelZeroPlugin stage 2 + HybridAdam) is not implemented yet; "
            "use train.engine=torch")
