#!/usr/bin/env python3
"""What a decoding run of rows costs (row_runs.RUN_COST), measured end to end.

The fast backend's greedy decoding of a real workload (by default BBH at one prompt per task, as
`phi2eval suite --quick` runs it), with RUN_COST set to each --costs value in turn, alternating
over --rounds in one process on one backend: decoding seconds (the prefill, the same for every
value, is left out), attention runs, own keys read over the rows' valid own keys, and texts
differing from the first value's. (Timing the attention alone, runs against keys, was too noisy
on a 2-core CPU to give a constant: a run of few rows also leaves a thread idle.)

    python scripts/bench_run_cost.py                                       # BBH quick, 5 values
    python scripts/bench_run_cost.py --costs 256,1024 --task gsm8k --limit 64 --per-task 0 --out F.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from evals.backends import row_runs  # noqa: E402


def end_to_end(model, tok, info: dict, args, costs: list[int]) -> dict:
    """The workload's greedy decoding under each RUN_COST, alternating; per value the decoding
    seconds, attention runs, keys read over valid keys, and texts differing from the first
    value's. RUN_COST and RowRuns.set_valid (wrapped to count keys) are restored after."""
    from lm_eval.tasks import TaskManager

    from bench_runner import build_requests
    from evals.backends.fast import FastLM

    tm = TaskManager(include_path=str(ROOT / "configs" / "tasks"), include_defaults=False)
    kind, insts = build_requests(args.task, args.limit, tm, args.max_gen_toks, args.per_task or None)
    if kind != "generate_until":
        raise SystemExit(f"bench_run_cost: {args.task} is not a generation task; pick one such as bbh or gsm8k")
    lm = FastLM(model, tok, max_length=int(info.get("max_length") or 2048))
    lm.generate_until(insts[:2], disable_tqdm=True)  # untimed: the backend's probe
    decoding = [0.0]
    loop = lm._decode_loop

    def timed_loop(*a, **k):
        t = time.perf_counter()
        try:
            return loop(*a, **k)
        finally:
            decoding[0] += time.perf_counter() - t

    lm._decode_loop = timed_loop
    keys = {"read": 0, "valid": 0}  # own keys the runs read, and the rows' valid own keys, summed over steps
    set_valid = row_runs.RowRuns.set_valid

    def counted_set_valid(self, valid):
        set_valid(self, valid)
        L = valid.shape[1]
        keys["read"] += sum((b1 - b0) * (L - s) for b0, b1, s in self.runs)
        keys["valid"] += int(valid.sum())

    default = row_runs.RUN_COST
    row_runs.RowRuns.set_valid = counted_set_valid
    rec = {c: {"decode_s": [], "total_s": []} for c in costs}
    texts = {}
    try:
        for r in range(args.rounds):
            for c in costs if r % 2 == 0 else costs[::-1]:
                row_runs.RUN_COST = c
                before = dict(lm.stats)
                decoding[0] = 0.0
                keys.update(read=0, valid=0)
                t = time.perf_counter()
                texts[c] = lm.generate_until(insts, disable_tqdm=True)
                rec[c]["total_s"].append(round(time.perf_counter() - t, 2))
                rec[c]["decode_s"].append(round(decoding[0], 2))
                rec[c]["row_tokens"] = lm.stats["gen_tokens"] - before.get("gen_tokens", 0)
                runs = rec[c]["attention_runs"] = lm.stats["gen_attention_runs"] - before.get("gen_attention_runs", 0)
                rec[c]["keys_read_over_valid"] = round(keys["read"] / max(1, keys["valid"]), 3)
                print(f"  round {r} cost {c:>6}: decode {decoding[0]:7.2f} s, total {rec[c]['total_s'][-1]:7.2f} s, "
                      f"{runs} attention runs, keys read / valid {rec[c]['keys_read_over_valid']}", flush=True)
    finally:
        row_runs.RUN_COST, row_runs.RowRuns.set_valid = default, set_valid
    base = costs[0]
    for c in costs:
        rec[c]["differing_texts"] = sum(a != b for a, b in zip(texts[base], texts[c]))
        rec[c]["decode_over_first"] = round(min(rec[c]["decode_s"]) / min(rec[base]["decode_s"]), 3)
    return {"task": args.task, "documents": len(insts), "per_task": args.per_task, "limit": args.limit,
            "max_gen_toks": args.max_gen_toks, "costs": {str(c): v for c, v in rec.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--costs", default="256,0,64,1024,4096", help="RUN_COST values, the first the reference")
    p.add_argument("--task", default="bbh")
    p.add_argument("--per-task", type=int, default=1, help="the first N documents of every sub-task (0: --limit)")
    p.add_argument("--limit", type=int, default=64, help="with --per-task 0: this many documents in all")
    p.add_argument("--max-gen-toks", type=int, default=None)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=None, help="JSON path for the record")
    args = p.parse_args(argv)
    os.environ.setdefault("PHI2EVAL_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    try:
        costs = [int(c) for c in args.costs.split(",")]
    except ValueError:
        raise SystemExit(f"bench_run_cost: --costs {args.costs!r}: give integers separated by commas") from None
    from bench_runner import load
    from evals.run import cpu_model, git_commit

    model, tok, info = load(args.model, "cpu", "float32")
    record = {"command": " ".join(["python", *sys.argv]), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "commit": git_commit(), "device_name": cpu_model(), "torch_threads": torch.get_num_threads(),
              "model": args.model, "run_cost_default": row_runs.RUN_COST}
    e2e = record["end_to_end"] = end_to_end(model, tok, info, args, costs)
    print(f"{'RUN_COST':>9}{'decode s':>22}{'vs first':>10}{'runs':>8}{'read/valid':>11}{'differing':>11}")
    for c, v in e2e["costs"].items():
        print(f"{c:>9}{str(v['decode_s']):>22}{v['decode_over_first']:>10.3f}{v['attention_runs']:>8}"
              f"{v['keys_read_over_valid']:>11.3f}{v['differing_texts']:>7}/{e2e['documents']}")
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
