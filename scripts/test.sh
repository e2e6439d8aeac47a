#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite against the real engine and the real model.
# Extra arguments go to pytest, e.g. `scripts/test.sh tests/runtime -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec python3 -m pytest "$@"
