#!/usr/bin/env python3
"""The cost of checking stop sequences as a greedy batch's tokens arrive (evals/backends/stops.py),
looking after every token vs skipping tokens that cannot end a stop, side by side in one run.

Rows are GSM8K reference answers, each followed by a blank line and the next question as a model
would ramble on, tokenised with the embedded tokenizer and fed to StopCheck one token per row
per step, with GSM8K's stop sequences; both ways must finish the same rows at the same steps
(at the blank line).

  python scripts/bench_stops.py --data-dir ../shared/data --rows 300 --tokens 256
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

UNTIL = ["Q:", "</s>", "<|im_end|>", "\n\n"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("PHI2EVAL_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--rows", type=int, default=300)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--out", default=None, help="JSON path for the record")
    args = p.parse_args(argv)
    from evals.backends.stops import StopCheck, stop_free_ids
    from evals.random_model import embedded_tokenizer
    from evals.run import cpu_model, git_commit

    tok = embedded_tokenizer()
    with open(Path(args.data_dir) / "gsm8k" / "test.jsonl") as f:
        docs = [json.loads(line) for _, line in zip(range(args.rows + 1), f)]
    rows = [tok(a["answer"] + "\n\nQ: " + b["question"])["input_ids"][:args.tokens] for a, b in zip(docs, docs[1:])]
    decode = lambda g: tok.decode(g, skip_special_tokens=True)  # noqa: E731
    t0 = time.perf_counter()
    free = stop_free_ids(tok, UNTIL)
    record = {"command": " ".join(["python", *sys.argv]), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "commit": git_commit(), "device_name": cpu_model(), "rows": len(rows), "until": UNTIL,
              "stop_free_tokens": len(free), "vocabulary": len(tok),
              "stop_free_ids_s": round(time.perf_counter() - t0, 3), "modes": {}}
    finished = {}
    for label, skip in (("look after every token", frozenset()), ("skip stop-free tokens", free)):
        check = StopCheck(len(rows), decode, UNTIL, set(), 10 ** 6, skip)
        done, n = {}, 0
        t = time.perf_counter()
        for step in range(args.tokens):
            for r, g in enumerate(rows):
                if r not in done and step < len(g):
                    n += 1
                    if check.add(r, g[step]):
                        done[r] = step
        dt = time.perf_counter() - t
        finished[label] = done
        record["modes"][label] = {"us_per_row_step": round(dt / n * 1e6, 3),
                                  "ms_per_step": round(dt / args.tokens * 1e3, 3), "rows_finished": len(done)}
        print(f"{label:<24} {dt / n * 1e6:7.2f} us per row and step, {dt / args.tokens * 1e3:6.2f} ms per step "
              f"of {len(rows)} rows, {len(done)} rows finished by a stop")
    a, b = (record["modes"][k]["us_per_row_step"] for k in record["modes"])
    record["speedup"] = round(a / b, 2)
    record["same_finishing_steps"] = same = finished["look after every token"] == finished["skip stop-free tokens"]
    print(f"skipping: {a / b:.1f}x less time; the same rows finish at the same steps: {same}")
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
