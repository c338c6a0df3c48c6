#!/usr/bin/env bash
# Prepare what scripts/gpu_bench.sh needs on a bare GPU machine (torch + transformers there,
# no network), in .gpu/ (git-ignored; carry it: run(..., carry=[".gpu"])), < 64 MiB in all:
#   .gpu/whl/      wheels of lm-eval and its missing dependencies, for CPython 3.12 x86-64
#   .gpu/tok/      the embedded SmolLM2 tokenizer, saved (the 98 MB GGUF wheel cannot travel)
#   .gpu/data.tgz  the data files of the benchmarks that gpu_bench.sh runs (BBH for genbbh too)
#
#   bash scripts/gpu_prep.sh [DATA_DIR]     # DATA_DIR default: $PHI2EVAL_DATA_DIR or ../shared/data
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-${PHI2EVAL_DATA_DIR:-../shared/data}}
PY=${PY:-.venv/bin/python}
rm -rf .gpu && mkdir -p .gpu/whl
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo /.gpu/ >> .git/info/exclude

# wheels: what lm-eval and datasets need beyond the GPU image's packages (see the device
# tool's KINDS.md); transformers pinned to the version tested here
PLAT="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any"
for req in lm_eval==0.4.13 datasets==5.2.0 evaluate==0.4.6 transformers==5.24.0 dill==0.4.1 \
           multiprocess==0.70.19 more_itertools pytablewriter DataProperty mbstrdecoder pathvalidate \
           tabledata tcolorpy typepy chardet rouge-score nltk; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    $PLAT -d .gpu/whl "$req"
done
# sdist-only packages: build pure-Python wheels here
"$PY" -m pip wheel -q --no-deps -w .gpu/whl sqlitedict word2number

# tokenizer
PHI2EVAL_TOKENIZER= "$PY" - <<'PY'
from evals.random_model import embedded_tokenizer
embedded_tokenizer().save_pretrained(".gpu/tok")
PY

# data: the folders of the benched tasks
tar czf .gpu/data.tgz -C "$DATA" MANIFEST.md hellaswag arc boolq piqa mmlu gsm8k bbh
du -sh .gpu/whl .gpu/tok .gpu/data.tgz .gpu
