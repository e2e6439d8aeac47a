#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite against the real engine, the real model, real
# vLLM (CPU build), a real Ray cluster on loopback, and TRL/OpenEnv.
# Extra arguments go to pytest, e.g. `scripts/test.sh tests/runtime -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/install-extras.sh
exec python3 -m pytest "$@"
