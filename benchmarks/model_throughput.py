"""DiT vs STDiT training throughput; the same as `opensora bench model` (see opensora_core.models.benchmark).

    python benchmarks/model_throughput.py            # CPU, tiny sizes, about a minute
    python benchmarks/model_throughput.py cuda       # one GPU, XL/2 sizes, bf16 autocast
"""

import json
import sys

from opensora_core.models.benchmark import run_model_benchmark, speedups

if __name__ == "__main__":
    rows = run_model_benchmark(sys.argv[1] if len(sys.argv) > 1 else "cpu")
    for row in rows:
        print(json.dumps(row))
    print("STDiT / DiT samples/s:", speedups(rows))
