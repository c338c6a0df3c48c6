#!/usr/bin/env bash
# One prepared GPU check (H100 / H200): lm-eval's hf backend vs the fast backend on a
# random-weight Phi-2 (bf16, sdpa): a smoke run, the multiple-choice tasks, then GSM8K-style
# generation. Under 8 minutes in all (each step has its own timeout, all within BENCH_DEADLINE_S).
#
#   bash scripts/gpu_prep.sh                        # here, once: fills .gpu/ (wheels, tokenizer, data)
#   bash scripts/gpu_bench.sh                       # on a GPU machine; JSON in results/bench/
#   run(command="OUT=$OUT bash scripts/gpu_bench.sh", carry=[".gpu"], timeout_s=540)   # device tool
#
# The machine has torch + transformers; the rest comes from .gpu/ (see gpu_prep.sh).
# BENCH_STEPS picks steps (default smoke,mc,gen; also decodestep, probe, gengraph, genbbh, genexpanded,
# genstatic, fp32). Next GPU session: BENCH_STEPS=smoke,decodestep,mc,gen,genbbh,genstatic
# (gen times the --cuda-graphs decoding in the same process since 2026-12-06: gengraph is not needed)
# BENCH_DEVICE=cpu BENCH_SCALE=smoke BENCH_MODEL=random:tiny-phi rehearse it on a CPU machine
# (tests/scripts/test_gpu_bench.py does); every step: BENCH_HF_BATCH=16 BENCH_TIME_FACTOR=5
# BENCH_DEADLINE_S=5000 BENCH_STEPS=smoke,decodestep,probe,mc,gen,gengraph,genbbh,genexpanded,genstatic,fp32
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
OUTDIR=${OUT:-results/bench}
mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu_bench.log"
exec > >(tee -a "$LOG") 2>&1
DEVICE=${BENCH_DEVICE:-cuda}
SCALE=${BENCH_SCALE:-full}
MODEL=${BENCH_MODEL:-random:phi-2}
# HFLM's batch size in the timed steps (fp32 keeps 16): 64 on the GPU; a CPU rehearsal of the mc
# step needs 16 (at 64, HFLM's MMLU logits alone ask for 26 GB of a 24 GiB machine)
HFB=${BENCH_HF_BATCH:-64}
# TOKENIZERS_PARALLELISM is left alone, as a user's run leaves it: the fast backend tokenises a
# call's strings in batches that the tokenizer encodes on every core (pretokenize.py)
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
elapsed() { echo $(( $(date +%s) - START )); }
# every step ends 10 s before BENCH_DEADLINE_S (default 480: the whole script in under 8 minutes,
# as the issue asks, well inside the device call's 540 s): its timeout is cut to what is left, and
# a step with under 45 s left is skipped, so a run of too many steps still returns what the
# earlier ones wrote
DEADLINE=${BENCH_DEADLINE_S:-480}
# BENCH_TIME_FACTOR (default 1) multiplies every step's own timeout: a CPU rehearsal of the
# long steps needs more than the GPU's seconds
FACTOR=${BENCH_TIME_FACTOR:-1}
cap() {  # cap <seconds>: prints the step's timeout within the deadline; fails under 45 s
  local left=$(( DEADLINE - $(elapsed) - 10 ))
  local want=$(( $1 * FACTOR ))
  local t=$(( want < left ? want : left ))
  if [ "$t" -lt 45 ]; then echo "skipped: ${left}s left before the ${DEADLINE}s deadline" >&2; return 1; fi
  echo "$t"
}

# --- setup: wheels, tokenizer, data ------------------------------------------------------
if compgen -G ".gpu/whl/*.whl" > /dev/null; then
  SITE=${SITE:-/tmp/site}
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .gpu/whl/*.whl \
    || { echo "wheel install failed"; exit 3; }
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
  # the carried transformers needs newer dependencies than the machine may have: fall back
  if ! python3 -c "import transformers" 2>/dev/null; then
    echo "carried transformers does not import here; using the machine's own"
    python3 -c "import transformers" 2>&1 | tail -1
    rm -rf "$SITE"/transformers "$SITE"/transformers-*.dist-info
  fi
fi
[ -d .gpu/tok ] && export PHI2EVAL_TOKENIZER=$PWD/.gpu/tok
if [ -f .gpu/data.tgz ]; then
  mkdir -p /tmp/phi2data && tar xzf .gpu/data.tgz -C /tmp/phi2data && export PHI2EVAL_DATA_DIR=/tmp/phi2data
fi
if [ -z "${PHI2EVAL_DATA_DIR:-}" ]; then
  for d in shared/data ../shared/data; do
    if [ -f "$d/MANIFEST.md" ]; then export PHI2EVAL_DATA_DIR=$(cd "$d" && pwd); break; fi
  done
fi
echo "setup done after $(elapsed)s"

nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader || true
python3 - <<'PY' || { echo "missing packages: run scripts/gpu_prep.sh and carry .gpu"; exit 3; }
import importlib, os
for m in ("torch", "transformers", "lm_eval", "datasets", "yaml", "tokenizers", "accelerate"):
    mod = importlib.import_module(m)
    print(f"{m} {getattr(mod, '__version__', '')}")
import torch
if os.environ.get("BENCH_DEVICE", "cuda") == "cuda":
    assert torch.cuda.is_available(), "no CUDA device"
    print(torch.cuda.get_device_name(), torch.version.cuda)
print("data dir:", os.environ.get("PHI2EVAL_DATA_DIR"), "tokenizer:", os.environ.get("PHI2EVAL_TOKENIZER"))
PY

bench() {  # bench <timeout_s> <json name> <bench_runner args...>
  local limit name=$2
  limit=$(cap "$1") || { echo "$name: not run"; return 5; }
  shift 2
  timeout "$limit" python3 scripts/bench_runner.py --model "$MODEL" --device "$DEVICE" "$@" \
    --out "$OUTDIR/$name" 2>&1 | grep --line-buffered -v -E "it/s\]|examples/s\]|Custom kwargs|metadata="
  local rc=${PIPESTATUS[0]}
  echo "$name: rc=$rc after $(elapsed)s"
  return "$rc"
}

STEPS=",${BENCH_STEPS:-smoke,mc,gen},"
step() { [[ "$STEPS" == *",$1,"* ]]; }

# --- smoke: every code path once, small (fails fast, before the long steps); then the fast
# backend with and without its host/device overlap once more under CUDA's sync debug mode:
# where the host waits for the device (tasks.<task>.fast.host_syncs, variants["overlap=0"])
if step smoke; then
  bench 150 gpu_smoke.json --tasks arc_easy,mmlu,gsm8k --limit 16 --repeats 1 --max-gen-toks 16 \
    --count-syncs --variant overlap=0 || { echo "smoke step failed: stopping"; exit 4; }
fi
[ "$SCALE" = smoke ] && exit 0

# --- decodestep: one greedy decoding step (64 rows, a 900-token few-shot prefix): operations
# dispatched and ms, the prefix read in place (prefix_attention) vs expanded to every row, and
# the in-place step replayed as a CUDA graph (graph_decode.py; graph_replays > 0 if it captured)
if step decodestep && t=$(cap 120); then
  timeout "$t" python3 scripts/bench_decode_step.py --model "$MODEL" --device "$DEVICE" --rows 64 --prefix 900 \
    --repeats 2 --out "$OUTDIR/gpu_phi2_decode_step.json" 2>&1 | grep -v -E "USDT|Warning"
  echo "decodestep: rc=${PIPESTATUS[0]} after $(elapsed)s"
fi

# --- probe: forward time per new batch shape, PyTorch's attention kernels vs the backend's
if step probe && t=$(cap 90); then
  timeout "$t" python3 scripts/gpu_probe.py --model "$MODEL" --device "$DEVICE" --out "$OUTDIR/gpu_probe.json" 2>&1 \
    | grep -v -E "FutureWarning|forward_call|USDT"
  echo "probe: rc=${PIPESTATUS[0]} after $(elapsed)s"
fi

# --- mc: multiple choice, log-likelihood (HFLM batch 64 vs token budget); the fast backend
# without its overlap of host and device (each batch read back before the next is prepared, host
# copies that wait for the device) runs as a variant in the same alternation:
# tasks.<task>.variants["overlap=0"]
if step mc; then
  bench 220 gpu_phi2_mc.json --tasks hellaswag,arc_easy,boolq,piqa,mmlu --limit 400 --repeats 2 --hf-batch-size $HFB \
    --variant overlap=0
fi

# --- gen: GSM8K 8-shot prompts, greedy, 256 new tokens (random weights never stop early);
# the fast backend with its decoding steps replayed as CUDA graphs (graph_decode.py) runs as a
# variant in the same alternation: the record's tasks.gsm8k.variants["cuda_graphs=1"]
if step gen; then
  bench 200 gpu_phi2_gsm8k.json --tasks gsm8k --limit 128 --repeats 1 --hf-batch-size $HFB --max-gen-toks 256 \
    --variant cuda_graphs=1
fi

# --- gengraph: the same generation with --cuda-graphs as the fast backend itself (gen also
# times it, as a variant); compare its fast docs/s with gen's
if step gengraph; then
  bench 150 gpu_phi2_gsm8k_graphs.json --tasks gsm8k --limit 128 --repeats 1 --hf-batch-size $HFB --max-gen-toks 256 --cuda-graphs
fi

# --- genbbh: BBH, the first GENBBH_LIMIT (10) prompts of each of its 27 tasks, fast backend only,
# 512 tokens: the clusters of 10 join the pool (their prefixes copied to the rows), 388k tokens
# of KV cache in three batches, two of them filling the generation budget (half the free memory,
# about 207k tokens for Phi-2 on an H200; rows leaving compacted in place). The result's runner stats say whether they fit (gen_oom_events), the
# peak memory and the prefill passes; the wall time is printed
if step genbbh && t=$(cap 150); then
  t0=$(date +%s)
  timeout "$t" python3 -m evals.cli run bbh --model "$MODEL" --device "$DEVICE" --limit "${GENBBH_LIMIT:-10}" --no-cache ${GENBBH_FLAGS:-} \
    --output-dir "$OUTDIR/genbbh" 2>&1 | grep --line-buffered -v -E "it/s\]|examples/s\]|Custom kwargs|metadata="
  echo "genbbh: rc=${PIPESTATUS[0]} in $(( $(date +%s) - t0 ))s after $(elapsed)s"
fi

# --- genexpanded: the same generation with the few-shot prefix's KV cache copied to every row
# (as before prefix_attention.py): how much reading it once per batch gains on this GPU
if step genexpanded; then
  bench 150 gpu_phi2_gsm8k_expanded.json --tasks gsm8k --limit 128 --repeats 1 --hf-batch-size $HFB --max-gen-toks 256 --expanded-prefix
fi

# --- genstatic: the same generation with --static-cache (transformers' static KV cache,
# compiled with CUDA graphs); the first batches pay the compile time, so 256 documents
if step genstatic; then
  bench 200 gpu_phi2_gsm8k_static.json --tasks gsm8k --limit 256 --repeats 1 --hf-batch-size $HFB --max-gen-toks 256 --static-cache
fi

# --- fp32: the same model in float32 on the GPU, to separate bf16 rounding from bugs -----
if step fp32; then
  bench 90 gpu_phi2_fp32.json --tasks piqa,hellaswag,mmlu --limit 60 --repeats 1 --dtype float32 --hf-batch-size 16
fi

nvidia-smi --query-gpu=name,memory.used --format=csv,noheader || true
# the issue's targets against this run's records: met, not met, or not measured (and why)
recs=$(ls "$OUTDIR"/gpu_phi2_mc.json "$OUTDIR"/gpu_phi2_gsm8k.json 2>/dev/null)
[ -n "$recs" ] && { python3 scripts/bench_targets.py $recs || true; }
# on the GPU machine, also into its checkout's results/bench/ (not in a CPU rehearsal, whose
# numbers would replace the GPU records here)
if [ -n "${OUT:-}" ] && [ "$DEVICE" = cuda ]; then cp -f "$OUTDIR"/gpu_phi2_*.json results/bench/ 2>/dev/null || true; fi
echo "all steps done after $(elapsed)s"
