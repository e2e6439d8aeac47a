#!/usr/bin/env bash
# The README's first command: set everything up, then run the main job on the embedded defaults:
# GRPO on SmolLM2-135M-Instruct in sandboxed PythonMath-v0, held-out accuracy before and after,
# and the plot in runs/quickstart/metrics.png.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
gymbox doctor
gymbox train --config configs/quickstart.toml "$@"
