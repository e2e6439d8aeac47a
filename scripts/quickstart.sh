#!/usr/bin/env bash
# The README's first command: set everything up, then run the main job on the embedded defaults:
# SmolLM2-135M-Instruct in sandboxed PythonCalc-v0, a short warm-up on the scripted expert's
# demonstrations, then GRPO; held-out accuracy before, after the warm-up and after RL, and the
# plot in runs/quickstart/metrics.png.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
gymbox doctor
gymbox train --config configs/quickstart.toml "$@"
