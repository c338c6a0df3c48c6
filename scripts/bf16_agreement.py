#!/usr/bin/env python3
"""How far each backend's bfloat16 answers are from the float32 ones, on the same model.

In float32 the fast backend and lm-eval's `hf` backend agree to 1e-4 (bench_runner.py). In
bfloat16, the default on CUDA, both round, each differently: this script scores the same
log-likelihood requests with the model in float32 (the reference: fast backend) and then in
bfloat16 with both backends, and prints per task the share of documents whose predicted choice
(raw and length-normalised argmax) equals the float32 one, and the largest and mean absolute
log-likelihood difference from float32. Writes JSON.

  python scripts/bf16_agreement.py --tasks arc_easy,hellaswag,piqa,mmlu,boolq --limit 100
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402

from bench_runner import agreement, build_requests, load  # noqa: E402


def compare(insts, ref: list, got: list) -> dict:
    """Agreement of `got` with the float32 `ref` (bench_runner.agreement) plus the mean absolute
    log-likelihood difference."""
    out = agreement("loglikelihood", insts, ref, got)
    out["mean_abs_loglik_diff"] = sum(abs(a[0] - b[0]) for a, b in zip(ref, got)) / len(ref)
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in out.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tasks", default="arc_easy,hellaswag,piqa,mmlu,boolq")
    p.add_argument("--limit", type=int, default=100, help="documents per task (a group shares it)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--hf-batch-size", type=int, default=16)
    p.add_argument("--out", default=str(ROOT / "results" / "bench" / "cpu_smollm2_bf16_agreement.json"))
    args = p.parse_args(argv)
    os.environ.setdefault("PHI2EVAL_DATA_DIR", str(ROOT.parent / "shared" / "data"))

    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from evals.backends.fast import FastLM

    model, tok, info = load(args.model, args.device, "float32")
    max_len = int(info.get("max_length") or 2048)
    tm = TaskManager(include_path=str(ROOT / "configs" / "tasks"), include_defaults=False)
    requests = {name: build_requests(name, args.limit, tm, None)[1] for name in args.tasks.split(",") if name}
    ref = {name: FastLM(model, tok, max_length=max_len).loglikelihood(insts, disable_tqdm=True)
           for name, insts in requests.items()}
    model = model.to(torch.bfloat16)
    hf = HFLM(pretrained=model, tokenizer=tok, batch_size=args.hf_batch_size, max_length=max_len, device=args.device)
    fast = FastLM(model, tok, max_length=max_len)
    report = {"schema": "phi2eval.bf16_agreement/1",
              "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]), "device": args.device,
              "model": {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool)) and k != "path"},
              "reference": "fast backend, float32 (equal to hf's to 1e-4)", "tasks": {}}
    print(f"{'task':<11}{'docs':>5} {'hf same':>8} {'fast same':>9} {'hf~fast':>8} {'hf max|d|':>10} {'fast max|d|':>11} "
          f"{'hf mean|d|':>10} {'fast mean|d|':>12}")
    for name, insts in requests.items():
        out = {"hf": hf.loglikelihood(insts, disable_tqdm=True), "fast": fast.loglikelihood(insts, disable_tqdm=True)}
        rec = {"hf_vs_float32": compare(insts, ref[name], out["hf"]),
               "fast_vs_float32": compare(insts, ref[name], out["fast"]),
               "hf_vs_fast": compare(insts, out["hf"], out["fast"])}
        report["tasks"][name] = rec
        h, f = rec["hf_vs_float32"], rec["fast_vs_float32"]
        print(f"{name:<11}{h['n_predictions']:>5} {h['identical_predictions']:>8.1%} {f['identical_predictions']:>9.1%} "
              f"{rec['hf_vs_fast']['identical_predictions']:>8.1%} {h['max_abs_loglik_diff']:>10.3f} "
              f"{f['max_abs_loglik_diff']:>11.3f} {h['mean_abs_loglik_diff']:>10.4f} {f['mean_abs_loglik_diff']:>12.4f}",
              flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
