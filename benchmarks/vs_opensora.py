"""Our STDiT vs Open-Sora 1.0's own STDiT; the same as `opensora bench reference` without the MLflow run.

    git --git-dir=MIRROR archive v1.0.0 | tar -x -C /tmp/opensora-v1.0.0     # a checkout, no network
    python benchmarks/vs_opensora.py /tmp/opensora-v1.0.0 [rounds] [threads]

(see opensora_core.models.reference_benchmark for what a step is and how rounds interleave).
"""

import json
import sys
from dataclasses import replace

from opensora_core.models.reference_benchmark import (
    ReferenceBenchConfig,
    opensora_contender,
    ours_contender,
    run_reference_benchmark,
)

if __name__ == "__main__":
    cfg = ReferenceBenchConfig()
    if len(sys.argv) > 2:
        cfg = replace(cfg, rounds=int(sys.argv[2]))
    if len(sys.argv) > 3:
        cfg = replace(cfg, threads=int(sys.argv[3]))
    contenders = [opensora_contender(sys.argv[1]), ours_contender(), ours_contender("ours, foreach AdamW", "foreach")]
    for row in run_reference_benchmark(contenders, cfg):
        print(json.dumps(row))
