#!/usr/bin/env bash
# The GPU figures of issue 13 on a CUDA machine, in about 8 minutes (make bench-gpu-check):
#   1. the tensor image pipeline on CUDA against the PIL path: 256 images, base model, fp32 and fp16
#      (largest pixel difference, identical inputs, identical titles, fast decoder == generate);
#   2. make bench's GPU figures alone (gpu_service_img_s, gpu_inprocess_img_s, gpu_p99_ms, gpu_name),
#      quick phases, with a local broker unless KAFKA_BOOTSTRAP_SERVERS is set.
# Output: .local/bench/gpu-check-<time>/{agreement,gpu}.txt; the JSON lines are also printed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=.local/bench/gpu-check-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device")'
infra/kafka/broker.sh fetch >/dev/null
timeout 240 "$PY" -m bench.gpu --agreement --device cuda --dtypes float16 --images 256 --models .local/models \
  | tee "$OUT/agreement.txt"
BENCH_QUICK=1 timeout 300 "$PY" -m bench.gpu_phase | tee "$OUT/gpu.txt"
