#!/usr/bin/env bash
# The README's first command: set everything up, then run the main job on the embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
gymbox doctor
