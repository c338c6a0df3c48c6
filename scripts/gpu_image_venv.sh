#!/usr/bin/env bash
# Build, on a CPU machine, a virtual environment shaped like the GPU machines' image (the device
# tool's KINDS.md: Python 3.12, torch 2.11.0, transformers 5.17.0, huggingface-hub 1.33.0,
# tokenizers 0.23.2, no lm-eval and no datasets), so that scripts/gpu_bench.sh can be rehearsed
# with the wheels that gpu_prep.sh carries, as the GPU machine will install them, at no device time.
# Downloads torch's CUDA build from PyPI (about 3 GB; it runs on the CPU).
#
#   bash scripts/gpu_image_venv.sh [DIR]          # DIR default /tmp/gpu-image-venv
#   bash scripts/gpu_prep.sh                      # fills .gpu/ (remove it afterwards: it makes
#                                                 # tests/scripts/test_gpu_bench.py skip)
#   PATH=DIR/bin:$PATH SITE=/tmp/site-rehearsal OUT=/tmp/rehearsal BENCH_DEVICE=cpu \
#     BENCH_MODEL=random:tiny-phi BENCH_SCALE=smoke bash scripts/gpu_bench.sh
set -euo pipefail
DIR=${1:-/tmp/gpu-image-venv}
PY=${PY312:-}
if [ -z "$PY" ]; then
  for p in python3.12 /root/.pyenv/versions/3.12*/bin/python3.12; do
    if command -v "$p" > /dev/null 2>&1 && "$p" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2> /dev/null; then
      PY=$p; break
    fi
  done
fi
[ -n "$PY" ] || { echo "no Python 3.12 found: set PY312=/path/to/python3.12"; exit 2; }
[ -x "$DIR/bin/python" ] || "$PY" -m venv "$DIR"
"$DIR/bin/python" -m pip install -q --upgrade pip
# the image's versions where KINDS.md gives them; the rest of what lm-eval, datasets and the
# harness import from the image, at whatever version pip picks
"$DIR/bin/python" -m pip install -q torch==2.11.0 transformers==5.17.0 huggingface_hub==1.33.0 \
  accelerate==1.15.0 numpy==2.5.2 safetensors==0.8.0 tokenizers==0.23.2 sentencepiece==0.2.2 \
  tiktoken pandas pyarrow xxhash requests tqdm pyyaml fsspec aiohttp sacrebleu scikit-learn jinja2 \
  regex psutil tabulate peft pybind11 matplotlib scipy pytest
"$DIR/bin/python" -c 'import sys, torch, transformers; print("gpu-image venv:", sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__)'
