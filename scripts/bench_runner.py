#!/usr/bin/env python3
"""Benchmark lm-eval's `hf` backend (HFLM) against evals.backends.fast.FastLM, side by side.

One model load; both backends wrap the same model. Each task's requests are built once
(lm-eval TaskManager over configs/tasks) and both backends run the same request list,
alternating which goes first on each repeat to cancel drift. Prints per task documents/s,
tokens/s, speed-up, peak memory, agreement (identical predictions, largest log-likelihood
difference), and on CUDA the MFU against the bf16 dense peak; writes JSON to results/bench/.

  python scripts/bench_runner.py --model smollm2-135m --tasks hellaswag,arc_easy --limit 40
  python scripts/bench_runner.py --model random:phi-2 --dtype bfloat16 --device cuda --limit 500
  python scripts/bench_runner.py --tasks gsm8k --limit 64 --max-gen-toks 64 --variant cuda_graphs=1

--variant KEY=VALUE (repeatable) adds a fast backend built with those FastLM options, timed in
the same alternation and compared with both (its speed-up over hf and over fast, its agreement
with each, its own runner stats), under each task's "variants".

"tokens" = context + continuation tokens of the requests (log-likelihood) or prompt +
generated tokens (generation): the same workload for both backends, so tokens/s ratios equal
the speed-up. "FLOP÷" (log-likelihood tasks) = HF's matrix-product FLOPs / the fast
backend's on the same requests, counted from the tokens each forwarded and the positions
where each computed logits (see ceiling()).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shlex
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from evals.run import cpu_model, git_commit  # noqa: E402

BF16_PEAK = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


# ----- model -------------------------------------------------------------------------
def load(spec: str, device: str, dtype: str):
    """(model, tokenizer, info): random:<preset> via evals.random_model, else evals.models."""
    if spec.startswith("random:"):
        from evals.random_model import build_random

        return build_random(spec.split(":", 1)[1], dtype, device)
    from evals.models import load_model

    lm = load_model(spec, device=device, dtype=dtype)
    return lm.model, lm.tokenizer, dict(lm.info)


# ----- requests ----------------------------------------------------------------------
def leaf_tasks(obj) -> list:
    """Flatten lm-eval's (possibly nested, group-keyed) task dict into task objects."""
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in leaf_tasks(v)]
    return [obj]


def build_requests(name: str, limit: int, tm, max_gen_toks: int | None, per_task: int | None = None) -> tuple[str, list]:
    """(request_type, instances) for a task or group, at most `limit` documents in all, or with
    `per_task` the first that many of every sub-task (as `phi2eval run --limit`)."""
    from lm_eval.api.instance import Instance
    from lm_eval.tasks import get_task_dict

    tasks = leaf_tasks(get_task_dict([name], tm))
    # a group (mmlu) gets whole-ish subtasks (>= 10 docs each), as in a real run, not 1 doc of each
    per = per_task or max(math.ceil(limit / len(tasks)), min(limit, 10))
    if per_task:
        limit = per_task * len(tasks)
    insts, docs = [], 0
    for task in tasks:
        if docs >= limit:
            break
        task.build_all_requests(limit=min(per, limit - docs), rank=0, world_size=1)
        for inst in task.instances:
            if max_gen_toks and inst.request_type == "generate_until":
                ctx, kw = inst.args
                inst = Instance(inst.request_type, inst.doc, (ctx, dict(kw, max_gen_toks=max_gen_toks)),
                                inst.idx, (inst.task_name, inst.doc_id, inst.repeats))
            insts.append(inst)
        docs += len({i.doc_id for i in task.instances})
    kinds = {i.request_type for i in insts}
    if len(kinds) != 1:
        raise ValueError(f"{name}: mixed request types {kinds}")
    return kinds.pop(), insts


def workload_tokens(lm, kind: str, insts, outputs) -> int:
    """Tokens of the workload (same for both backends)."""
    tok = lm.tokenizer
    if kind == "loglikelihood":
        return sum(len(tok.encode(c + x)) for c, x in (i.args for i in insts))
    return sum(len(tok.encode(i.args[0])) + len(tok.encode(o)) for i, o in zip(insts, outputs))


# ----- measurement -------------------------------------------------------------------
class PeakRSS:
    """Peak resident memory (bytes) above the starting level, sampled every 5 ms (CPU)."""

    def __enter__(self):
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())
        self.extra = self.peak - self.base


def run_once(lm, kind: str, insts, device: str) -> tuple[float, list, int]:
    """(seconds, outputs, peak bytes) of one backend call over all requests."""
    call = lm.loglikelihood if kind == "loglikelihood" else lm.generate_until
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        out = call(insts, disable_tqdm=True)
        torch.cuda.synchronize()
        return time.perf_counter() - t, out, int(torch.cuda.max_memory_allocated())
    with PeakRSS() as mem:
        t = time.perf_counter()
        out = call(insts, disable_tqdm=True)
        secs = time.perf_counter() - t
    return secs, out, mem.extra


# what torch.cuda.set_sync_debug_mode("warn") says at each operation that makes the host wait
# for the device (c10/cuda/CUDAFunctions.cpp)
SYNC_WARNING = "called a synchronizing CUDA operation"


def sync_summary(caught: list, stats: dict, top: int = 12) -> dict:
    """From the warnings of one call (warnings.WarningMessage) and the backend's stats over it:
    the synchronizing operations in all, per log-likelihood batch and per decoding step where
    the call had them, and the `top` source lines that made the most."""
    lines: dict[str, int] = defaultdict(int)
    for w in caught:
        if SYNC_WARNING in str(w.message):
            lines[f"{Path(w.filename).name}:{w.lineno}"] += 1
    n = sum(lines.values())
    out: dict = {"syncs": n, "by_line": dict(sorted(lines.items(), key=lambda kv: -kv[1])[:top])}
    batches = stats.get("ll_batches", 0)
    if batches:
        out["ll_batches"] = batches
        out["syncs_per_ll_batch"] = round(n / batches, 2)
    if stats.get("gen_tokens", 0):
        out["gen_tokens"] = stats["gen_tokens"]
    return out


def count_syncs(lm, kind: str, insts, device: str) -> dict | None:
    """On CUDA, one more call of the fast backend `lm` on `insts` under
    torch.cuda.set_sync_debug_mode("warn"): where and how often the host waited for the device
    (sync_summary); None on other devices."""
    if not device.startswith("cuda"):
        return None
    import warnings

    call = lm.loglikelihood if kind == "loglikelihood" else lm.generate_until
    before = dict(lm.stats)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            call(insts, disable_tqdm=True)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sync_summary(caught, {k: v - before.get(k, 0) for k, v in lm.stats.items()})


class HFOutOfMemory(Exception):
    """HFLM ran out of memory at its fixed batch size (the fast backend backs off by itself)."""


def timed_call(key: str, lm, kind: str, insts, device: str) -> tuple[float, list, int]:
    """run_once; HFLM's out-of-memory error becomes HFOutOfMemory (see bench_task_fitting)."""
    from evals.backends.batching import free_memory, is_oom
    from evals.errors import first_line

    try:
        return run_once(lm, kind, insts, device)
    except Exception as exc:
        if key != "hf" or not is_oom(exc):
            raise
        free_memory()
        raise HFOutOfMemory(first_line(exc)[-160:]) from exc


def bench_task_fitting(name, hf, fast, tm, args, n_params, head_params, variants: dict | None = None) -> dict:
    """bench_task, with HFLM's batch size halved while it runs out of memory: a batch size that
    does not fit is not a setting to compare against. The size it ran at is in the record
    (hf_batch_size); the next task starts again from --hf-batch-size."""
    size = hf.batch_size_per_gpu
    try:
        while True:
            try:
                rec = bench_task(name, hf, fast, tm, args, n_params, head_params, variants)
                rec["hf_batch_size"] = hf.batch_size_per_gpu
                return rec
            except HFOutOfMemory as exc:
                if hf.batch_size_per_gpu <= 1:
                    raise
                print(f"{name}: hf backend out of memory at batch size {hf.batch_size_per_gpu} ({exc}); "
                      f"trying {hf.batch_size_per_gpu // 2}", flush=True)
                hf.batch_size_per_gpu //= 2
    finally:
        hf.batch_size_per_gpu = size


def agreement(kind: str, insts, a: list, b: list) -> dict:
    """Identical predictions (per document: argmax of raw and length-normalised log-likelihood,
    or the generated string) and the largest absolute log-likelihood difference."""
    if kind == "generate_until":
        same = sum(x == y for x, y in zip(a, b))
        return {"identical_predictions": same / len(a), "n_predictions": len(a)}
    docs = defaultdict(list)
    for inst, x, y in zip(insts, a, b):
        docs[(inst.task_name, inst.doc_id)].append((inst.idx, len(inst.args[1]), x[0], y[0], x[1] == y[1]))
    same = 0
    for rows in docs.values():
        rows.sort()
        pa = (max(range(len(rows)), key=lambda k: rows[k][2]), max(range(len(rows)), key=lambda k: rows[k][2] / max(1, rows[k][1])))
        pb = (max(range(len(rows)), key=lambda k: rows[k][3]), max(range(len(rows)), key=lambda k: rows[k][3] / max(1, rows[k][1])))
        same += pa == pb
    diffs = [abs(x[0] - y[0]) for x, y in zip(a, b)]
    return {
        "identical_predictions": same / len(docs),
        "n_predictions": len(docs),
        "max_abs_loglik_diff": max(diffs),
        "is_greedy_identical": sum(x[1] == y[1] for x, y in zip(a, b)) / len(a),
    }


def hf_work(lm, insts) -> int:
    """Forward tokens HFLM computes for log-likelihood requests, padding not counted: one row
    ctx+cont[:-1] per request, except that single-token continuations sharing a context share
    one row (HFLM's one-token logits cache). HFLM computes logits at every one of them."""
    shared, tokens = set(), 0
    for inst in insts:
        ctx, cont = lm._encode_pair(*inst.args)
        row = tuple((ctx + cont)[-(lm.max_length + 1):][:-1])
        if len(cont) == 1:
            if row in shared:
                continue
            shared.add(row)
        tokens += len(row)
    return tokens


def ceiling(body: int, head: int, hf_tok: int, hf_pos: int, fast_tok: int, fast_pos: int) -> float:
    """HF's matrix-product FLOPs over the fast backend's for the same requests: the speed-up
    if both ran their matrix products equally fast and nothing else cost time. HF also
    pays a log-softmax over the vocabulary at every position and its padding, so measured
    speed-ups can exceed it; where matmuls dominate it is the ceiling of exact work-saving."""
    return (body * hf_tok + head * hf_pos) / max(1, body * fast_tok + head * fast_pos)


def peak_flops(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    for key, val in BF16_PEAK.items():
        if key in name:
            return val
    return None


def make_variant(model, tok, spec: str, **base):
    """A FastLM with the options of `spec` (KEY=VALUE[,KEY=VALUE]): its constructor's arguments
    (cuda_graphs=1, static_cache=1, token_budget=N ...) or its class switches (pool_clusters=0,
    grouped_rows=1 ...: a subclass with that attribute, so __init__ sees it too). `base`: the
    constructor arguments the variant does not set. Exits with a one-line error on an unknown key."""
    import inspect

    from evals.backends.fast import FastLM

    init = set(inspect.signature(FastLM.__init__).parameters) - {"self", "model", "tokenizer", "kwargs"}
    switches = {k for k, v in vars(FastLM).items() if not k.startswith("_") and isinstance(v, (bool, type(None)))}
    kwargs, attrs = dict(base), {}
    for kv in filter(None, spec.split(",")):
        key, _, value = kv.partition("=")
        if key in init:
            kwargs[key] = value
        elif key in switches:
            attrs[key] = value.strip().lower() in ("1", "true", "yes")
        else:
            raise SystemExit(f"bench_runner: --variant {spec}: unknown option {key!r}; use one of "
                             f"{', '.join(sorted(init | switches))}")
    cls = type("FastLMVariant", (FastLM,), attrs) if attrs else FastLM
    return cls(model, tok, **kwargs)


def bench_task(name, hf, fast, tm, args, n_params, head_params, variants: dict | None = None) -> dict:
    """Both backends on one task's requests, and each fast variant (--variant: name -> FastLM);
    returns the JSON record."""
    kind, insts = build_requests(name, args.limit, tm, args.max_gen_toks)
    n_docs = len({(i.task_name, i.doc_id) for i in insts})
    warm = insts[: min(len(insts), 8)]
    lms = [("hf", hf), ("fast", fast), *(variants or {}).items()]
    for key, lm in lms:
        timed_call(key, lm, kind, warm, args.device)
    times, peaks, outs = {k: 0.0 for k, _ in lms}, {k: 0 for k, _ in lms}, {}
    before = dict(fast.stats)
    vbefore = {k: dict(lm.stats) for k, lm in (variants or {}).items()}
    for rep in range(args.repeats):
        order = lms if rep % 2 == 0 else lms[::-1]
        for key, lm in order:
            secs, out, peak = timed_call(key, lm, kind, insts, args.device)
            times[key] += secs
            peaks[key] = max(peaks[key], peak)
            outs[key] = out
    tokens = workload_tokens(fast, kind, insts, outs["hf"])
    pf = peak_flops(args.device)
    rec = {"request_type": kind, "n_docs": n_docs, "n_requests": len(insts), "workload_tokens": tokens,
           "repeats": args.repeats}
    for key in ("hf", "fast"):
        t = times[key] / args.repeats
        rec[key] = {"seconds": round(t, 3), "docs_per_s": round(n_docs / t, 2), "tokens_per_s": round(tokens / t, 1),
                    "peak_mem_bytes": peaks[key]}
        if pf:  # workload basis: 2 x params x the requests' tokens (shared contexts counted per request)
            rec[key]["mfu"] = round(2 * n_params * tokens / t / pf, 4)
    rec["speedup"] = round(times["hf"] / times["fast"], 3)
    rec["agreement"] = agreement(kind, insts, outs["hf"], outs["fast"])
    for key, lm in (variants or {}).items():  # timed in the same alternation; compared with hf and fast
        t = times[key] / args.repeats
        rec.setdefault("variants", {})[key] = {
            "seconds": round(t, 3), "docs_per_s": round(n_docs / t, 2), "tokens_per_s": round(tokens / t, 1),
            "peak_mem_bytes": peaks[key], "speedup": round(times["hf"] / times[key], 3),
            "vs_fast": round(times["fast"] / times[key], 3),
            "agreement": agreement(kind, insts, outs["hf"], outs[key]),
            "agreement_with_fast": agreement(kind, insts, outs["fast"], outs[key]),
            "stats": {k: v - vbefore[key].get(k, 0) for k, v in lm.stats.items() if v != vbefore[key].get(k, 0)}}
    if args.count_syncs:  # after the timed calls, so the warnings cost none of their time
        for key, lm in [("fast", fast), *(variants or {}).items()]:
            counted = count_syncs(lm, kind, insts, args.device)
            if counted is not None:
                (rec[key] if key == "fast" else rec["variants"][key])["host_syncs"] = counted
                top = ", ".join(f"{k} {v}" for k, v in list(counted["by_line"].items())[:4])
                print(f"  {name} {key}: {counted['syncs']} host waits ({counted.get('syncs_per_ll_batch', '-')} "
                      f"per log-likelihood batch); most at {top or '-'}", flush=True)
    if kind == "loglikelihood":
        # the arithmetic ceiling of the speed-up (forward FLOPs of HFLM / of the fast backend)
        used = {k: (fast.stats.get(k, 0) - before.get(k, 0)) // args.repeats for k in fast.stats}
        hf_tok = hf_tok_pos = hf_work(fast, insts)
        # the rows' tokens and the few-shot prefixes run once per cluster as a KV cache
        fast_tok = used.get("ll_forward_tokens", 0) + used.get("ll_shared_prefix_tokens", 0)
        fast_pos = used.get("ll_scored_positions", 0)
        body = n_params - head_params
        rec["work"] = {"hf_forward_tokens": hf_tok, "hf_logit_positions": hf_tok_pos,
                       "fast_forward_tokens": fast_tok, "fast_logit_positions": fast_pos,
                       "flop_ratio": round(ceiling(body, head_params, hf_tok, hf_tok_pos,
                                                   fast_tok, fast_pos), 3)}
        if pf:
            # MFU of the matrix products each backend really executed (attention scores and
            # padding not counted), against the device's dense bf16 peak
            for key, tok_, pos_ in (("hf", hf_tok, hf_tok_pos), ("fast", fast_tok, fast_pos)):
                flops = 2 * (body * tok_ + head_params * pos_)
                rec[key]["executed_tflop"] = round(flops / 1e12, 2)
                rec[key]["mfu_executed"] = round(flops / (times[key] / args.repeats) / pf, 4)
    return rec


def write_report(out: Path, report: dict) -> None:
    """Write the JSON record atomically (temporary file, then rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out)


def measured_matmul_tflops(device: str) -> float | None:
    """bf16 TFLOP/s of an 8192^3 matrix product on this GPU (mean of 10 after 3 warm-ups)."""
    if not device.startswith("cuda"):
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    secs = (time.perf_counter() - t) / 10
    del a, b
    torch.cuda.empty_cache()
    return round(2 * 8192**3 / secs / 1e12, 1)


def fmt_mem(b: int) -> str:
    return f"{b / 2**30:.2f}G" if b >= 2**30 else f"{b / 2**20:.0f}M"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tasks", default="hellaswag,arc_easy,boolq,piqa,mmlu")
    p.add_argument("--limit", type=int, default=40, help="documents per task (a group shares it)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--hf-batch-size", type=int, default=None, help="HFLM batch size (default 64 CUDA, 16 CPU)")
    p.add_argument("--token-budget", type=int, default=None, help="FastLM token budget (default: auto)")
    p.add_argument("--static-cache", action="store_true",
                   help="fast backend: greedy generation with a static KV cache (transformers compiles it on CUDA)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="fast backend: decoding steps under a shared prefix replayed as CUDA graphs (graph_decode.py)")
    p.add_argument("--expanded-prefix", action="store_true",
                   help="fast backend: copy a shared few-shot prefix's KV cache to every decoding row (the "
                        "behaviour before prefix_attention.py), to compare with reading it once per batch")
    p.add_argument("--max-gen-toks", type=int, default=None, help="override generation length for both")
    p.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                   help="also run a fast backend with these FastLM options (e.g. cuda_graphs=1), timed in the "
                        "same alternation and compared with both; reported per task under 'variants'")
    p.add_argument("--count-syncs", action="store_true",
                   help="CUDA: after the timed calls, run the fast backend (and each variant) once more with "
                        "torch.cuda.set_sync_debug_mode('warn') and record where the host waited for the device "
                        "(per task: fast.host_syncs); ignored on other devices")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 avoids OpenMP stalls on a shared, oversubscribed CPU)")
    p.add_argument("--tasks-dir", default=str(ROOT / "configs" / "tasks"))
    p.add_argument("--out", default=None, help="JSON path (default results/bench/<date>_<device>_<model>.json)")
    args = p.parse_args(argv)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    args.hf_batch_size = args.hf_batch_size or (64 if args.device.startswith("cuda") else 16)
    os.environ.setdefault("PHI2EVAL_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    if args.threads:
        torch.set_num_threads(args.threads)

    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from evals.backends.device import SDPA_ENV
    from evals.backends.fast import FastLM
    from evals.errors import first_line

    t0 = time.time()
    model, tok, info = load(args.model, args.device, args.dtype)
    load_s = time.time() - t0
    max_len = int(info.get("max_length") or 2048)
    hf = HFLM(pretrained=model, tokenizer=tok, batch_size=args.hf_batch_size, max_length=max_len, device=args.device)
    fast = FastLM(model, tok, max_length=max_len, token_budget=args.token_budget, static_cache=args.static_cache,
                  cuda_graphs=args.cuda_graphs)
    if args.expanded_prefix:
        fast.shared_prefix_decode = fast._shared_decode = False
    variants = {spec: make_variant(model, tok, spec, max_length=max_len, token_budget=args.token_budget)
                for spec in args.variant}
    emb = model.get_input_embeddings().weight.numel()
    n_params = sum(q.numel() for q in model.parameters()) - emb
    head = model.get_output_embeddings().weight
    head_params = head.numel()  # counted in n_params when untied; tied: add it as work of its own
    if head is model.get_input_embeddings().weight:
        n_params += head_params
    tm = TaskManager(include_path=args.tasks_dir, include_defaults=False)
    dev_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu_model()
    report = {
        "schema": "phi2eval.bench/1",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]),
        "device": args.device, "device_name": dev_name, "host_cpus": os.cpu_count(),
        "commit": git_commit(),
        "loadavg_start": os.getloadavg(),
        # glibc allocator settings change both backends' page faults (see docs/speed.md)
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "model": {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool)) and k != "path"},
        "fast_sdpa_kernels": ("no-cudnn" if os.environ.get(SDPA_ENV) != "default" else "pytorch-default")
        if args.device.startswith("cuda") else "cpu",
        "dtype": args.dtype, "torch_threads": torch.get_num_threads(), "hf_batch_size": args.hf_batch_size, "fast_token_budget": fast.budget.tokens,
        "fast_static_cache": args.static_cache, "fast_cuda_graphs": args.cuda_graphs,
        "fast_prefix_in_place": fast._shared_decode,
        "limit": args.limit, "repeats": args.repeats, "model_load_s": round(load_s, 1),
        "matmul_params": n_params, "lm_head_params": head_params,
        "bf16_peak_tflops_spec": (peak_flops(args.device) or 0) / 1e12 or None,
        "bf16_matmul_tflops_measured": measured_matmul_tflops(args.device), "tasks": {},
    }
    hdr = f"{'task':<11}{'docs':>5} {'hf doc/s':>9} {'fast doc/s':>10} {'hf tok/s':>9} {'fast tok/s':>10} {'speedup':>8} {'FLOP÷':>8} {'hf mem':>7} {'fast mem':>8} {'same':>6} {'max|dLL|':>9}"
    if args.device.startswith("cuda"):
        hdr += f" {'hf MFU':>7} {'fast MFU':>8}"
    print(hdr, flush=True)
    out = Path(args.out) if args.out else ROOT / "results" / "bench" / (
        f"{report['date'][:10]}_{args.device.split(':')[0]}_{args.model.replace(':', '-').replace('/', '__')}.json")
    tot = {"hf": 0.0, "fast": 0.0}
    failed = []
    for name in [t for t in args.tasks.split(",") if t]:
        try:
            rec = bench_task_fitting(name, hf, fast, tm, args, n_params, head_params, variants)
        except Exception as exc:  # noqa: BLE001 - one task's failure is recorded; the others still run
            said = first_line(exc)[-200:]
            report["tasks"][name] = {"error": f"{type(exc).__name__}: {said}"}
            write_report(out, report)
            failed.append(name)
            print(f"{name}: failed ({type(exc).__name__}: {said}); recorded as its error, going on", flush=True)
            continue
        report["tasks"][name] = rec
        write_report(out, report)  # after every task: a run cut short keeps what finished
        for k in tot:
            tot[k] += rec[k]["seconds"]
        ag = rec["agreement"]
        line = (f"{name:<11}{rec['n_docs']:>5} {rec['hf']['docs_per_s']:>9.2f} {rec['fast']['docs_per_s']:>10.2f} "
                f"{rec['hf']['tokens_per_s']:>9.0f} {rec['fast']['tokens_per_s']:>10.0f} {rec['speedup']:>7.2f}x "
                f"{rec.get('work', {}).get('flop_ratio', float('nan')):>7.2f}x "
                f"{fmt_mem(rec['hf']['peak_mem_bytes']):>7} {fmt_mem(rec['fast']['peak_mem_bytes']):>8} "
                f"{ag['identical_predictions']:>6.1%} {ag.get('max_abs_loglik_diff', float('nan')):>9.1e}")
        if args.device.startswith("cuda"):
            # executed FLOPs for log-likelihood, workload tokens for generation
            mfu = {k: rec[k].get("mfu_executed", rec[k].get("mfu", 0)) for k in ("hf", "fast")}
            line += f" {mfu['hf']:>7.1%} {mfu['fast']:>8.1%}"
        print(line, flush=True)
        for key, v in rec.get("variants", {}).items():
            print(f"  fast with {key}: {v['docs_per_s']:.2f} doc/s, {v['speedup']:.2f}x hf, {v['vs_fast']:.2f}x fast, "
                  f"same as hf {v['agreement']['identical_predictions']:.1%}, as fast "
                  f"{v['agreement_with_fast']['identical_predictions']:.1%}", flush=True)
    report["overall"] = {"hf_seconds": round(tot["hf"], 2), "fast_seconds": round(tot["fast"], 2),
                         "speedup": round(tot["hf"] / tot["fast"], 3) if tot["fast"] else None,
                         "tasks": [n for n in report["tasks"] if n not in failed]}  # what the totals cover
    report["loadavg_end"] = os.getloadavg()
    report["fast_budget_events"] = fast.budget.events
    report["fast_stats"] = dict(fast.stats)
    print(f"overall{' (without ' + ', '.join(failed) + ')' if failed else ''}: hf {tot['hf']:.1f}s, fast {tot['fast']:.1f}s, speedup {report['overall']['speedup']}x "
          f"(loadavg {report['loadavg_start'][0]:.1f} -> {report['loadavg_end'][0]:.1f} on {os.cpu_count()} CPUs)")
    if failed:
        report["failed_tasks"] = failed
    write_report(out, report)
    print(f"wrote {out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
