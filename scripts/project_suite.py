#!/usr/bin/env python3
"""Project the wall time of the full Phi-2 suite for a model architecture on one device.

Counts the work of every request of the fourteen benchmarks on the full data (lm-eval builds
the requests from configs/tasks, exactly as a run does), then turns it into time two ways:

  floor     matrix-product FLOPs at a stated model FLOPs utilisation of the device's bf16
            peak (log-likelihood and prompt prefill), plus decoding bounded by memory reads:
            the weights once per step (batch rows decode together) and, for every row at
            every step, the KV cache of its own prompt tokens and of the tokens generated so
            far; a few-shot prefix shared by a cluster of prompts is read once per batch and
            step, as the backend's decoding does where the model's attention allows
            (evals/backends/prefix_attention.py).
  launch    the decoding steps' fixed cost alone: the generation batches the fast backend's
            planner cuts on the device (its memory sets the token budget), every row running to
            max_gen_toks, at GPU_FORWARD_OVERHEAD_S per step (25 ms, measured on an H200 when a
            step was launch-bound); a lower bound for decoding unless that cost falls. With
            --decode-step, a bench_decode_step.py record: measured on the CPU, a step that reads
            its prefix in place costs 25 ms x its operations over the expanded step's; measured
            on CUDA, each kind of step costs its measured time, and with --cuda-graphs every
            step the time of a step replayed as a CUDA graph (step_costs). Log-likelihood
            forward passes (the backend's batches on the device, and one prefix pass per
            few-shot cluster) cost the same 25 ms each.
  measured  (--bench, from scripts/bench_runner.py JSON of the same model and device) each
            benchmark's workload tokens over the measured tokens/s of the fast backend for
            that task, or for its request type when the task was not measured.

  python scripts/project_suite.py --preset phi-2 --data-dir ../shared/data
  python scripts/project_suite.py --bench results/bench/gpu_phi2_mc.json --bench results/bench/gpu_phi2_gsm8k.json

Work counted as the fast backend does it: each distinct context once, continuation tokens but
the last, few-shot prefixes shared by a cluster of prompts once, logits only where scored;
generation counts max_gen_toks new tokens per prompt (an upper bound: real models stop early).
Attention score FLOPs are left out. Token counts use --tokenizer (default: the embedded SmolLM2
tokenizer, since Phi-2's own is not available offline); the label says which.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections import OrderedDict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

DEVICES = {  # bf16 dense peak FLOP/s and memory bandwidth (bytes/s), vendor datasheets (SXM)
    "h200": (989e12, 4.8e12),
    "h100": (989e12, 3.35e12),
    "a100": (312e12, 2.0e12),
}
MEMORY = {"h200": 141e9, "h100": 80e9, "a100": 80e9}  # bytes of device memory (SXM)


def matmul_params(preset: str) -> tuple[int, int, int, float]:
    """(body, lm_head, embedding) parameter counts of a random-model preset, built on the meta
    device, and the fast backend's merge ratio for it (device.merge_ratio)."""
    from evals.backends.device import merge_ratio
    from evals.random_model import build_random

    model, _, _ = build_random(preset, "bfloat16", "meta")
    head = model.get_output_embeddings().weight
    emb = model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    tied = head is emb
    return total - emb.numel() - (0 if tied else head.numel()), head.numel(), emb.numel(), merge_ratio(model)


def once_tokens(seqs: list) -> int:
    """Tokens the fast backend forwards for `seqs` when each cluster's shared prefix runs once."""
    from evals.backends.planning import share_clusters

    keys, shared = share_clusters(seqs)
    prefix_once = {k: s for k, s in zip(keys, shared) if k is not None}
    return sum(len(q) - s for q, s in zip(seqs, shared)) + sum(prefix_once.values())


def token_counter(tokenizer, max_length: int, max_gen_toks: int = 256):
    """A FastLM that tokenises like the backend but holds no model (for counting work)."""
    from evals.backends.fast import FastLM

    lm = FastLM.__new__(FastLM)
    lm.tokenizer, lm._max_length, lm._max_gen_toks = tokenizer, max_length, max_gen_toks
    lm._recent_enc, lm.add_bos_token = OrderedDict(), None
    return lm


def count_work(name: str, insts, lm, ratio: float | None = None, gen_plan: tuple | None = None,
               ll_plan: tuple | None = None) -> dict:
    """Request counts, tokens and the fast backend's work for one benchmark's requests
    (`ratio`: the merge ratio of the model; default from lm.model). `gen_plan` (generation
    batches' token budget, padding allowance[, mix]: gen_batches_of): also the decoding loops the backend's batch
    planner makes (gen_batches) and their steps at max_gen_toks (decode_steps). `ll_plan`
    (log-likelihood token budget, pool_tokens, packed[, attention_waste]: ll_batches_of): also its
    log-likelihood forward passes (ll_batches, ll_prefix_passes)."""
    from bench_runner import hf_work

    from evals.backends.device import merge_ratio
    from evals.backends.planning import plan_loglikelihood

    kind = insts[0].request_type
    rec = {"request_type": kind, "n_docs": len({(i.task_name, i.doc_id) for i in insts}), "n_requests": len(insts)}
    if kind == "loglikelihood":
        pairs = [lm._encode_pair(*inst.args) for inst in insts]
        plan = plan_loglikelihood(pairs, lm.max_length, ratio if ratio is not None else merge_ratio(lm.model),
                                  pool_tokens=ll_plan[1] if ll_plan else 0)
        hf_tok = hf_work(lm, insts)
        rec.update(workload_tokens=sum(len(c) + len(x) for c, x in pairs), fast_forward_tokens=plan.forward_tokens(),
                   fast_logit_positions=plan.scored_positions(), hf_forward_tokens=hf_tok, hf_logit_positions=hf_tok)
        if ll_plan is not None:
            rec.update(ll_batches_of(plan, ll_plan[0], *ll_plan[2:]))
    else:
        from evals.backends.planning import share_clusters

        prompts, gens = [], []
        for inst in insts:
            ctx, kw = inst.args
            g = int(kw.get("max_gen_toks", lm.max_gen_toks))
            prompts.append(lm.tok_encode(ctx)[-max(1, lm.max_length - g):])  # cut as the backend does
            gens.append(g)
        keys, shared = share_clusters(prompts)
        # step t (0..g-1) of a row reads its own prompt tokens and t generated ones; a cluster's
        # shared prefix is read once per batch and step (prefix_clusters: rows, prefix, steps)
        kv_reads = sum(g * (len(q) - s) + g * (g - 1) // 2 for q, s, g in zip(prompts, shared, gens))
        clusters: dict = {}
        for k, s, g in zip(keys, shared, gens):
            if k is not None:
                n, _, steps = clusters.get(k, (0, s, 0))
                clusters[k] = (n + 1, s, max(steps, g))
        rec.update(workload_tokens=sum(map(len, prompts)) + sum(gens), prompt_tokens=sum(map(len, prompts)),
                   fast_prefill_tokens=once_tokens(prompts), max_new_tokens=sum(gens), kv_token_reads=kv_reads,
                   prefix_clusters=[list(c) for c in clusters.values()])
        if gen_plan is not None:
            rec.update(gen_batches_of(prompts, gens, *gen_plan))
    return rec


def ll_batches_of(plan, budget_tokens: int, packed: bool, attention_waste: float = 0.0) -> dict:
    """Log-likelihood forward passes as the fast backend runs a plan (plan_loglikelihood):
    run_batched's batches at `budget_tokens` (`packed`: cut by real tokens, as on CUDA; else by
    padded size and the padding ratio, as on the CPU, with `attention_waste`, see
    device.cpu_attention_waste), and one prefix pass per cluster."""
    from evals.backends.batching import TokenBudget, plan_batches

    batches = plan_batches(plan.lengths, TokenBudget(budget_tokens), plan.row_keys, plan.pad, packed=packed,
                           attention_waste=attention_waste)
    return {"ll_batches": len(batches), "ll_prefix_passes": len({k for k in plan.row_keys if k is not None})}


def gen_batches_of(prompts: list, gens: list[int], budget_tokens: int, pad_waste: int, mix: bool = False) -> dict:
    """Generation batches as the fast backend plans them (per max_gen_toks: plan_generation,
    then run_batched's cuts at `budget_tokens` and `pad_waste`, shared prefixes read in
    place; clusters mixed in batches if `mix`, as on the CPU, not on CUDA): their number and
    their decoding steps when every row runs to max_gen_toks; of these, the batches of a few-shot
    cluster (or of mixed clusters), which read their prefix in place (prefix_attention), and
    their steps."""
    from evals.backends.batching import TokenBudget, plan_batches
    from evals.backends.greedy import GEN_PAD_RATIO
    from evals.backends.planning import plan_generation

    by_gen: dict = {}
    for q, g in zip(prompts, gens):
        by_gen.setdefault(g, []).append(q)
    batches = steps = shared = shared_steps = 0
    for g, qs in by_gen.items():
        keys, _, lengths, pad = plan_generation(qs, g, True, pad_waste, budget_tokens if mix else 0)
        rule = TokenBudget(budget_tokens, max_pad_ratio=GEN_PAD_RATIO, max_pad_waste=pad_waste)
        cut = plan_batches(lengths, rule, keys, pad)
        n, m = len(cut), sum(keys[b[0]] is not None for b in cut)
        batches, steps, shared, shared_steps = batches + n, steps + n * g, shared + m, shared_steps + m * g
    return {"gen_batches": batches, "decode_steps": steps, "gen_batches_prefix_in_place": shared,
            "decode_steps_prefix_in_place": shared_steps}


def floor_seconds(rec: dict, body: int, head: int, peak: float, mfu: float, bw: float, gen_batch: int,
                  kv_bytes: int = 0) -> float:
    """Time floor of one benchmark: FLOPs at `mfu` of `peak`; decoding at least one weight read
    per step plus every row's own KV cache read per step (`kv_bytes` per cached token) and each
    cluster's shared prefix once per batch of `gen_batch` rows and step."""
    if rec["request_type"] == "loglikelihood":
        flops = 2 * body * rec["fast_forward_tokens"] + 2 * head * rec["fast_logit_positions"]
        rec["flops"] = flops
        return flops / (peak * mfu)
    n = rec["n_requests"]
    flops = 2 * body * rec["fast_prefill_tokens"] + 2 * head * n + 2 * (body + head) * rec["max_new_tokens"]
    rec["flops"] = flops
    prefill = (2 * body * rec["fast_prefill_tokens"] + 2 * head * n) / (peak * mfu)
    steps = -(-n // gen_batch) * (rec["max_new_tokens"] / n)  # batches x tokens per prompt
    prefix_reads = sum(-(-n // gen_batch) * g * S for n, S, g in rec.get("prefix_clusters", []))
    reads = steps * 2 * (body + head) + (rec.get("kv_token_reads", 0) + prefix_reads) * kv_bytes
    rec["decode_read_bytes"] = int(reads)
    decode = max(reads / bw, 2 * (body + head) * rec["max_new_tokens"] / (peak * mfu))
    return prefill + decode


def measured_rates(paths: list[str], backend: str = "fast") -> tuple[dict, dict, dict]:
    """Per task and per request type, a backend's ("fast" or "hf") workload tokens/s from bench JSONs."""
    per_task, per_kind, meta = {}, {}, {}
    for p in paths:
        rep = json.loads(Path(p).read_text())
        meta[p] = {k: rep.get(k) for k in ("date", "device_name", "dtype", "command", "fast_sdpa_kernels")}
        for name, rec in rep["tasks"].items():
            per_task[name] = rec[backend]["tokens_per_s"]
            tok, sec = per_kind.get(rec["request_type"], (0, 0.0))
            per_kind[rec["request_type"]] = (tok + rec["workload_tokens"], sec + rec[backend]["seconds"])
    return per_task, {k: t / s for k, (t, s) in per_kind.items()}, meta


def step_costs(record: dict | None, cuda_graphs: bool = False) -> tuple[float, float, str]:
    """Seconds of a decoding step's fixed cost (a step reading a prefix copied into its rows'
    cache, one reading it in place) and how they were had, from a bench_decode_step.py record
    (None: GPU_FORWARD_OVERHEAD_S for both). A CPU record scales the in-place step by its
    operations over the expanded one's; a CUDA record gives each step's measured time, or with
    `cuda_graphs` the time of a step replayed as a CUDA graph for both."""
    from bench_decode_step import EXPANDED, GRAPHS, IN_PLACE

    from evals.backends.device import GPU_FORWARD_OVERHEAD_S

    base = f"{GPU_FORWARD_OVERHEAD_S * 1000:.0f} ms per step as measured on an H200 on 2026-11-27"
    if record is None:
        if cuda_graphs:
            raise SystemExit("--cuda-graphs needs --decode-step with a record measured on CUDA")
        return GPU_FORWARD_OVERHEAD_S, GPU_FORWARD_OVERHEAD_S, base
    modes, where = record["modes"], f"{record.get('device_name')}, {record.get('date')}"
    if record.get("device") != "cuda":
        if cuda_graphs:
            raise SystemExit("--cuda-graphs needs a --decode-step record measured on CUDA (a CPU has no graphs)")
        ratio = modes[IN_PLACE]["ops_per_step"] / modes[EXPANDED]["ops_per_step"]
        return (GPU_FORWARD_OVERHEAD_S, GPU_FORWARD_OVERHEAD_S * ratio,
                f"{base}, {ratio:.2f}x that where the prefix is read in place, as its operations per step ({where})")
    # bench_decode_step.py leaves ms_per_step null where its two timings were noise
    untimed = [m for m in ((GRAPHS,) if cuda_graphs else (EXPANDED, IN_PLACE)) if not (modes.get(m) or {}).get("ms_per_step")]
    if untimed:
        raise SystemExit(f"--decode-step record has no step time for {', '.join(untimed)}: rerun "
                         "scripts/bench_decode_step.py on an idle machine")
    if cuda_graphs:
        graph = modes[GRAPHS]
        if not graph.get("timed_graph_replays"):  # the timed decodes really replayed graphs
            raise SystemExit("--cuda-graphs: the --decode-step record has no step replayed as a CUDA graph")
        s = graph["ms_per_step"] / 1e3
        return s, s, f"{graph['ms_per_step']} ms per step replayed as a CUDA graph ({where})"
    e, i = modes[EXPANDED]["ms_per_step"] / 1e3, modes[IN_PLACE]["ms_per_step"] / 1e3
    return e, i, f"{e * 1e3:.1f} ms per step, {i * 1e3:.1f} ms where the prefix is read in place, measured ({where})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="phi-2", help="random-model preset in configs/models/random (architecture)")
    p.add_argument("--tokenizer", default=None, help="HF tokenizer id or folder (default: embedded SmolLM2)")
    p.add_argument("--data-dir", default=os.environ.get("PHI2EVAL_DATA_DIR") or str(ROOT.parent / "shared" / "data"))
    p.add_argument("--benchmarks", default=None, help="comma list (default: the phi2 suite)")
    p.add_argument("--device", default="h200", choices=sorted(DEVICES))
    p.add_argument("--mfu", type=float, default=0.4, help="assumed utilisation for the floor (default 0.4)")
    p.add_argument("--gen-batch", type=int, default=64, help="prompts decoded together (floor)")
    p.add_argument("--bench", action="append", default=[], help="bench_runner JSON with measured rates")
    p.add_argument("--decode-step", default=None,
                   help="bench_decode_step.py JSON: from a CPU, a step that reads its prefix in place costs 25 ms "
                        "times its operations over the expanded step's; from CUDA, each step its measured time "
                        "(default: 25 ms for every step; see step_costs)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="decoding steps replayed as CUDA graphs (--cuda-graphs), at the time --decode-step measured on CUDA")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    os.environ["PHI2EVAL_DATA_DIR"] = str(Path(args.data_dir).resolve())

    import yaml
    from lm_eval.tasks import TaskManager
    from transformers import AutoTokenizer

    from bench_runner import build_requests
    from evals.backends.batching import kv_bytes_per_token
    from evals.random_model import embedded_tokenizer

    body, head, emb, ratio = matmul_params(args.preset)
    from evals.random_model import load_preset
    from transformers import AutoConfig

    spec = load_preset(args.preset)
    kv_bytes = kv_bytes_per_token(AutoConfig.for_model(spec["model_type"], **spec["config"]))
    tok = AutoTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else embedded_tokenizer()
    tok_label = args.tokenizer or "embedded SmolLM2-135M tokenizer (not the model's own)"

    lm = token_counter(tok, int(spec["config"].get("max_position_embeddings", 2048)))
    # generation batches as the backend cuts them on this device (gen_budget_tokens on CUDA)
    from evals.backends.device import GPU_GEN_MEMORY_SHARE, gen_pad_waste_tokens, kv_budget_tokens

    weight_bytes = 2 * (body + head + emb)
    free = MEMORY[args.device] - weight_bytes
    gen_budget = kv_budget_tokens(free, kv_bytes, GPU_GEN_MEMORY_SHARE, 1024)  # as gen_budget_tokens on CUDA
    gen_plan = (gen_budget, gen_pad_waste_tokens(weight_bytes, kv_bytes, True, gen_budget))
    # log-likelihood batches as the backend cuts them on CUDA (default_budget: 60% of the free
    # memory at CUDA_BYTES_PER_TOKEN; packed rows; one-row clusters pooled at two forward passes' cost)
    from evals.backends.batching import cuda_budget
    from evals.backends.device import GPU_FORWARD_OVERHEAD_S, overhead_tokens

    ll_budget = cuda_budget(free)
    ll_plan = (ll_budget, 2 * overhead_tokens(body + head + emb, True, ll_budget), True)
    suite = yaml.safe_load((ROOT / "configs" / "suites" / "phi2.yaml").read_text())
    names = args.benchmarks.split(",") if args.benchmarks else [
        b["benchmark"] for c in suite["categories"] for b in c["benchmarks"]]
    tm = TaskManager(include_path=str(ROOT / "configs" / "tasks"), include_defaults=False)
    peak, bw = DEVICES[args.device]
    per_task, per_kind, meta = measured_rates(args.bench)
    hf_task, hf_kind, _ = measured_rates(args.bench, "hf")
    record = json.loads(Path(args.decode_step).read_text()) if args.decode_step else None
    expanded_s, in_place_s, step_label = step_costs(record, args.cuda_graphs)
    step_ratio = in_place_s / expanded_s
    rows, tot_floor, tot_meas, tot_hf, tot_launch, tot_ll_launch = {}, 0.0, 0.0, 0.0, 0.0, 0.0
    print(f"{'benchmark':<12}{'docs':>7}{'requests':>9}{'workload tok':>13}{'fast fwd tok':>13}{'TFLOP':>8}"
          f"{'floor s':>9}{'measured s':>11}{'hf s':>9}", flush=True)
    for name in names:
        _, insts = build_requests(name, 10**9, tm, None)
        rec = count_work(name, insts, lm, ratio, gen_plan, ll_plan)
        if "ll_batches" in rec:
            rec["launch_bound_ll_s"] = round((rec["ll_batches"] + rec["ll_prefix_passes"]) * GPU_FORWARD_OVERHEAD_S, 1)
            tot_ll_launch += rec["launch_bound_ll_s"]
        if "decode_steps" in rec:
            in_place = rec["decode_steps_prefix_in_place"]
            rec["launch_bound_decode_s"] = round((rec["decode_steps"] - in_place) * expanded_s + in_place * in_place_s, 1)
            tot_launch += rec["launch_bound_decode_s"]
        rec["floor_s"] = round(floor_seconds(rec, body, head, peak, args.mfu, bw, args.gen_batch, kv_bytes), 1)
        rate = per_task.get(name) or per_kind.get(rec["request_type"])
        rec["measured_s"] = round(rec["workload_tokens"] / rate, 1) if rate else None
        rec["measured_from"] = "task" if name in per_task else ("request type" if rate else None)
        hf_rate = hf_task.get(name) or hf_kind.get(rec["request_type"])
        rec["measured_hf_s"] = round(rec["workload_tokens"] / hf_rate, 1) if hf_rate else None
        rows[name] = rec
        tot_floor += rec["floor_s"]
        tot_meas += rec["measured_s"] or 0.0
        tot_hf += rec["measured_hf_s"] or 0.0
        fwd = rec.get("fast_forward_tokens", rec.get("fast_prefill_tokens", 0) + rec.get("max_new_tokens", 0))
        ms = f"{rec['measured_s']:.1f}" if rec["measured_s"] is not None else "-"
        hs = f"{rec['measured_hf_s']:.1f}" if rec["measured_hf_s"] is not None else "-"
        print(f"{name:<12}{rec['n_docs']:>7}{rec['n_requests']:>9}{rec['workload_tokens']:>13}{fwd:>13}"
              f"{rec['flops'] / 1e12:>8.0f}{rec['floor_s']:>9.1f}{ms:>11}{hs:>9}", flush=True)
    measured_all = all(r["measured_s"] is not None for r in rows.values())
    print(f"total floor: {tot_floor / 60:.1f} min ({args.device}, {args.mfu:.0%} of {peak / 1e12:.0f} TFLOP/s, "
          f"decode batch {args.gen_batch} at {bw / 1e12:.2f} TB/s, weights and {kv_bytes // 1024} KiB of KV cache "
          f"per cached token read per step, a shared prefix once per batch; generation at max_gen_toks)")
    print(f"decoding steps' fixed cost alone: {tot_launch / 60:.1f} min (the backend's generation batches on "
          f"{args.device}: budget {gen_plan[0]} tokens, padding allowance {gen_plan[1]}; every row to max_gen_toks; "
          f"{step_label})")
    print(f"  of {sum(r.get('decode_steps', 0) for r in rows.values())} steps, "
          f"{sum(r.get('decode_steps_prefix_in_place', 0) for r in rows.values())} read a few-shot prefix in place")
    ll_passes = sum(r.get("ll_batches", 0) + r.get("ll_prefix_passes", 0) for r in rows.values())
    print(f"log-likelihood forward passes' fixed cost: {tot_ll_launch / 60:.1f} min ({ll_passes} passes at "
          f"{GPU_FORWARD_OVERHEAD_S * 1000:.0f} ms: the backend's batches on {args.device}, budget {ll_plan[0]} tokens, "
          f"clusters of one row pooled below {ll_plan[1]} tokens of added attention, and one prefix pass per cluster)")
    print(f"on paper: floor + both fixed costs = {(tot_floor + tot_launch + tot_ll_launch) / 60:.1f} min")
    if per_task or per_kind:
        print(f"total from measured rates: fast {tot_meas / 60:.1f} min, hf {tot_hf / 60:.1f} min"
              + ("" if measured_all else " (some benchmarks unmeasured)"))
    print(f"matmul params: body {body / 1e9:.3f}B + lm_head {head / 1e6:.0f}M ({args.preset}); tokens: {tok_label}")
    report = {
        "schema": "phi2eval.projection/1",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join(["python", *sys.argv]),
        "preset": args.preset, "tokenizer": tok_label, "device": args.device, "peak_flops": peak,
        "memory_bandwidth": bw, "mfu": args.mfu, "gen_batch": args.gen_batch,
        "body_params": body, "kv_bytes_per_token": kv_bytes, "lm_head_params": head, "embedding_params": emb, "merge_ratio": round(ratio, 1),
        "bench_inputs": meta, "benchmarks": rows,
        "total_floor_s": round(tot_floor, 1),
        "gen_budget_tokens": gen_plan[0], "gen_pad_waste_tokens": gen_plan[1],
        "step_fixed_cost_s": round(expanded_s, 5), "step_cost_prefix_in_place_s": round(in_place_s, 5),
        "step_ratio_prefix_in_place": round(step_ratio, 3), "step_cost_basis": step_label,
        "step_cost_from": args.decode_step, "cuda_graphs": args.cuda_graphs,
        "total_launch_bound_decode_s": round(tot_launch, 1),
        "ll_budget_tokens": ll_plan[0], "ll_pool_tokens": ll_plan[1],
        "total_launch_bound_ll_s": round(tot_ll_launch, 1),
        "total_on_paper_s": round(tot_floor + tot_launch + tot_ll_launch, 1),
        "total_measured_s": round(tot_meas, 1) if per_task or per_kind else None,
        "total_measured_hf_s": round(tot_hf, 1) if per_task or per_kind else None,
        "measured_complete": measured_all if per_task or per_kind else False,
    }
    out = Path(args.out) if args.out else ROOT / "results" / "bench" / f"projection_{args.preset}_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
