"""The fused LoRA matmul against merged and unfused torch, on GPT-2's projections (needs a CUDA GPU).

    python benchmarks/bench_lora_matmul.py                          # HBM bandwidth looked up from the GPU's name
    python benchmarks/bench_lora_matmul.py --bandwidth-tbps 2.0     # a card the lookup does not know
    python benchmarks/bench_lora_matmul.py --m 1 64 --dtype bf16 --layout linear --csv /tmp/lora.csv
    TRITON_INTERPRET=1 python benchmarks/bench_lora_matmul.py --device cpu --m 1 --shapes attn.c_proj   # dry run

Rows are appended to benchmarks/results/lora_matmul.csv. The method, the providers and the CSV's columns are
described in kdfast/bench/lora_matmul.py, where the code lives (the tests import it from the package).
"""

import sys

from kdfast.bench.lora_matmul import main

if __name__ == "__main__":
    sys.exit(main())
