#!/usr/bin/env bash
# Set up lightning-diffusion in ./.venv (or in the active virtualenv) on a fresh machine.
#
#   bash setup.sh            # CPU machine: CPU torch, the package and its dev tools
#   TORCH_SPEC="torch>=2.10" bash setup.sh --xformers    # CUDA machine: CUDA torch + xformers
#
# On a CPU machine plain `pip install torch` from PyPI pulls the CUDA build (several GB). This script pins
# torch to TORCH_SPEC (default torch==2.13.0, which pip takes from a local CPU wheel where the machine has one)
# and installs it from TORCH_INDEX_URL when set (e.g. https://download.pytorch.org/whl/cpu).
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  PY=.venv/bin/python
fi

# Versions are read from package metadata, not by importing torch: before the package's own dependencies are in,
# `import torch` warns "Failed to initialize NumPy" (numpy is not installed yet), which no one needs to act on.
version_of() { "$PY" -c "from importlib.metadata import version; print(version('$1'))"; }

TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if "$PY" -c "import torch" 2>/dev/null; then
  echo "setup: torch $(version_of torch) already installed"
elif [ -n "${TORCH_INDEX_URL:-}" ]; then
  "$PY" -m pip install "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL"
else
  "$PY" -m pip install "$TORCH_SPEC"
fi

# Keep whatever torch is installed now: the package's own `torch>=` lower bound must not pull another build.
TORCH_VERSION=$(version_of torch | cut -d+ -f1)
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"

EXTRAS="dev"
if [ "${1:-}" = "--xformers" ]; then EXTRAS="dev,xformers"; fi
"$PY" -m pip install -c "$CONSTRAINTS" -e ".[$EXTRAS]"
echo "setup: done (lightning_diffusion $(version_of lightning-diffusion) | torch $(version_of torch))"
