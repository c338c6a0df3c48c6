#!/usr/bin/env python3
"""What one greedy decoding step of the fast backend costs, per way of holding a shared few-shot
prefix, side by side in one process.

On a GPU a decoding step is bound by launching kernels (23-25 ms for Phi-2 on an H200 on
2026-11-27, whatever the rows), so besides timing a step this counts the operations it
dispatches: ATen operations called from Python (torch profiler), and those of them that are
not views (each launches at least one kernel on a GPU). Modes: the prefix expanded to every
row (the model's SDPA), the prefix read in place (prefix_attention), the same with its steps
replayed as CUDA graphs (graph_decode.py: on a GPU a replay dispatches no operation from Python;
on the CPU the fixed-shape steps run eagerly, reading the whole reserved cache), and with --rev
the in-place path of an older revision of the backend (loaded as bench_backend_ab.py does).
A step's time is the difference between a long and a short decode of the same batch, divided
by the extra steps, best of --repeats (the two alternate); where the long decode did not take
longer (noise: another process on the machine), the record says so (`ms_per_step` null,
`timing_note`) instead of giving a negative time.

  python scripts/bench_decode_step.py                         # random:phi-2-narrow, CPU
  python scripts/bench_decode_step.py --rev HEAD~1            # against an older backend
  python scripts/bench_decode_step.py --model random:phi-2 --device cuda --dtype bfloat16 --rows 64

random:phi-2-narrow has Phi-2's 32 layers and 32 heads at an eighth of its width: its steps
dispatch Phi-2's operations with little arithmetic. Random weights never meet a stop sequence,
so every row runs to the step count.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402

# the modes' names in the record (project_suite.py --decode-step reads them)
EXPANDED, IN_PLACE = "prefix expanded to every row", "prefix read in place"
GRAPHS = "prefix read in place, CUDA graph steps"  # graph_decode.py (on the CPU: its fixed-shape steps, eager)
# operations that make a view (or nothing) and launch no kernel
VIEWS = {"aten::" + n for n in ("slice", "transpose", "view", "unsqueeze", "squeeze", "select", "expand",
                               "as_strided", "detach", "detach_", "lift_fresh", "alias", "t", "permute",
                               "_reshape_alias", "unbind", "split", "chunk", "narrow", "empty", "new_empty",
                               "dropout", "is_nonzero", "item", "_local_scalar_dense", "contiguous")}


def prompts_with_prefix(tok, rows: int, prefix_tokens: int) -> list[list[int]]:
    """`rows` prompts that share a few-shot-like prefix of about `prefix_tokens` tokens, each
    with a question of its own."""
    shot = tok("Q: There are 15 trees in the grove. Workers plant more; now there are 21. How many did they "
               "plant?\nA: 21 - 15 = 6. The answer is 6.\n\n")["input_ids"]
    prefix = (shot * (prefix_tokens // len(shot) + 1))[:prefix_tokens]
    return [prefix + tok(f"Q: Question {i}: a farmer has {i + 3} cows and buys {2 * i + 1} more. How many?\nA:")
            ["input_ids"] for i in range(rows)]


def op_counts(lm, prompts, steps: int, device) -> Counter:
    """ATen operations called from Python during a decode of `steps` steps."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        lm._greedy_batch(prompts, ["@@never@@"], steps)
        _sync(device)
    return Counter(e.name for e in prof.events() if e.name.startswith("aten::")
                   and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def decode_seconds(lm, prompts, steps: int, device) -> float:
    """Wall seconds of one greedy decode of `steps` steps (prefill included)."""
    with torch.inference_mode():
        _sync(device)
        t = time.perf_counter()
        lm._greedy_batch(prompts, ["@@never@@"], steps)
        _sync(device)
        return time.perf_counter() - t


def measure(lm, prompts, device, short: int, long: int, repeats: int) -> dict:
    """Operations and milliseconds per decoding step of `lm` on `prompts`."""
    decode_seconds(lm, prompts, short, device)  # warm up
    # timed before the operations are counted: a CUDA graph captured under the profiler might fail;
    # short and long alternate, so that drift in the machine's speed reaches both
    shorts, longs = [], []
    for _ in range(repeats):
        shorts.append(decode_seconds(lm, prompts, short, device))
        longs.append(decode_seconds(lm, prompts, long, device))
    t_short, t_long = min(shorts), min(longs)
    replays = lm.stats.get("gen_graph_replays", 0)
    # the host's time per fixed-shape step between steps (stop checks; graph_decode.decode), in the timed decodes
    steps = lm.stats.get("gen_graph_steps", 0)
    host_ms = round(1e3 * lm.stats.get("gen_step_host_s", 0.0) / steps, 3) if steps else None
    a, b = op_counts(lm, prompts, short, device), op_counts(lm, prompts, long, device)
    per_step = {k: (b[k] - a[k]) / (long - short) for k in set(a) | set(b)}
    ms = round((t_long - t_short) / (long - short) * 1e3, 2)
    note = None
    if ms <= 0:  # a step cannot cost nothing: the timings are noise (a loaded machine), not a measurement
        note = (f"not measured: the {long}-step decode took {t_long:.3f} s, the {short}-step one {t_short:.3f} s "
                "(best of each); time it on an idle machine")
        ms = None
    return {"timed_graph_replays": replays, "host_ms_per_step": host_ms, "ops_per_step": round(sum(per_step.values()), 1),
            "kernel_ops_per_step": round(sum(v for k, v in per_step.items() if k not in VIEWS), 1),
            "ms_per_step": ms, "timing_note": note,
            "ops": {k: round(v, 2) for k, v in sorted(per_step.items(), key=lambda kv: -kv[1]) if v}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="random:phi-2-narrow")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--prefix", type=int, default=800, help="tokens of the shared prefix")
    p.add_argument("--short", type=int, default=8)
    p.add_argument("--long", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rev", default=None, help="also the in-place path of the backend at this git revision")
    p.add_argument("--out", default=None, help="JSON path for the record")
    args = p.parse_args(argv)
    from bench_runner import load
    from evals.backends import graph_decode
    from evals.backends.fast import FastLM
    from evals.run import cpu_model, git_commit

    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    model, tok, info = load(args.model, args.device, dtype)
    prompts = prompts_with_prefix(tok, args.rows, args.prefix)
    modes = [(EXPANDED, FastLM, False), (IN_PLACE, FastLM, True), (GRAPHS, FastLM, True)]
    rev = None
    if args.rev:
        from bench_backend_ab import load_old_fastlm, resolve_rev

        rev = resolve_rev(args.rev)
        modes.append((f"{IN_PLACE} at {rev}", load_old_fastlm(rev), True))
    dev = torch.device(args.device)
    record = {"command": " ".join(["python", *sys.argv]), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "commit": git_commit(), "rev": rev, "model": args.model, "dtype": dtype, "device": dev.type,
              "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model(),
              "torch_threads": torch.get_num_threads(), "rows": args.rows, "prefix_tokens": args.prefix,
              "own_tokens": sum(len(x) for x in prompts) // len(prompts) - args.prefix, "modes": {}}
    print(f"{args.model} {dtype} on {record['device_name']}: {args.rows} rows, a prefix of {args.prefix} tokens")
    print(f"{'mode':<40}{'ops/step':>10}{'non-view':>10}{'ms/step':>10}")
    for label, cls, in_place in modes:
        extra = {"cuda_graphs": True} if label == GRAPHS else {}
        lm = cls(model, tok, max_length=int(info.get("max_length") or 2048), **extra)
        lm._shared_decode = in_place
        row = record["modes"][label] = measure(lm, prompts, dev, args.short, args.long, args.repeats)
        row["in_place_batches"] = lm.stats.get("gen_prefix_in_place_batches", 0)
        if label == GRAPHS:  # steps run as fixed-shape steps, and how many of them were graph replays
            row["graph_steps"] = lm.stats.get("gen_graph_steps", 0)
            row["graph_replays"] = lm.stats.get("gen_graph_replays", 0)
            # whether a replay agreed with the same step run eagerly (graph_decode.StepRunner.check_replay)
            row["graphs_checked_ok"] = graph_decode.GRAPHS_OK.get(dev.type)
        else:
            row.pop("timed_graph_replays")
            row.pop("host_ms_per_step")
        if in_place:  # whether the fused attention kernels passed their check here (prefix_attention.LSE_PATH)
            pa = sys.modules[cls.__module__.rsplit(".", 1)[0] + ".prefix_attention"]
            state = getattr(pa, "LSE_PATH", {})
            row["fused_attention"] = {f"{d} {str(t).replace('torch.', '')}": v for (d, t), v in state.items()}
        print(f"{label:<40}{row['ops_per_step']:>10}{row['kernel_ops_per_step']:>10}{str(row['ms_per_step']):>10}", flush=True)
        if row["timing_note"]:
            print(f"  ms per step {row['timing_note']}", flush=True)
        if row.get("host_ms_per_step") is not None:
            print(f"  of which the host between steps (stop checks): {row['host_ms_per_step']} ms", flush=True)
    base = record["modes"][EXPANDED]
    for label, row in record["modes"].items():
        row["ops_vs_expanded"] = round(row["ops_per_step"] / base["ops_per_step"], 3)
        timed = row["ms_per_step"] is not None and base["ms_per_step"] is not None
        row["ms_vs_expanded"] = round(row["ms_per_step"] / base["ms_per_step"], 3) if timed else None
    print("vs expanded: " + ", ".join(f"{k}: ops {r['ops_vs_expanded']}x, time {r['ms_vs_expanded']}x"
                                      for k, r in record["modes"].items() if r is not base))
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
