"""Log-likelihood under a sliding window: one call mixing short inputs (within the window: trie
rows) and long ones (past it: plain rows, a few-shot prefix continued from the model's own
cache), as a suite run makes (lm-eval sends every task's requests in one call).
The fast backend at a git revision against the working tree and lm-eval's HFLM, alternating,
on a random-weight Gemma 3 text model (its sliding window: `--window`), or with `--arch bloom` a
BLOOM (ALiBi: every input runs plain rows), with the embedded tokenizer, float32, CPU: seconds
(best of --rounds), ratios, answers compared.

    python scripts/bench_window_split.py --rev 9ec5a6a --tasks hellaswag,arc_easy,mmlu --limit 100
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


def random_model(arch: str, tok, window: int, layers: int):
    """A random model of SmolLM2-135M's width: Gemma 3 text with a `window`-token sliding
    window, or BLOOM (ALiBi: every input runs plain rows)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if arch == "bloom":
        config = AutoConfig.for_model("bloom", vocab_size=len(tok), hidden_size=576, n_layer=layers, n_head=9, **ids)
    else:
        config = AutoConfig.for_model(
            "gemma3_text", vocab_size=len(tok), hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
            num_attention_heads=9, num_key_value_heads=3, head_dim=64, sliding_window=window,
            max_position_embeddings=2048, **ids)
    torch.manual_seed(0)
    attn = "eager" if arch == "bloom" else "sdpa"  # BLOOM has no SDPA attention in transformers
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attn).eval()


def main(argv=None) -> int:
    """Time one mixed log-likelihood call on the three backends; print and optionally save."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rev", required=True, help="git revision of the old fast backend")
    p.add_argument("--tasks", default="hellaswag,arc_easy,mmlu")
    p.add_argument("--limit", type=int, default=100, help="documents per task")
    p.add_argument("--arch", choices=["gemma3", "bloom"], default="gemma3")
    p.add_argument("--window", type=int, default=512, help="Gemma 3's sliding window")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("PHI2EVAL_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from bench_backend_ab import load_old_fastlm, resolve_rev
    from bench_runner import build_requests
    from evals.backends.fast import FastLM
    from evals.random_model import embedded_tokenizer
    from evals.run import cpu_model, git_commit

    tok = embedded_tokenizer()
    model = random_model(args.arch, tok, args.window, args.layers)
    tm = TaskManager(include_path=str(ROOT / "configs" / "tasks"), include_defaults=False)
    insts = []
    for name in args.tasks.split(","):
        kind, part = build_requests(name, args.limit, tm, None)
        assert kind == "loglikelihood", f"{name}: not a log-likelihood task"
        insts += part
    Old = load_old_fastlm(args.rev)
    makers = {"hf": lambda: HFLM(pretrained=model, tokenizer=tok, batch_size=16, max_length=2048, device="cpu"),
              "old": lambda: Old(model, tok, max_length=2048), "new": lambda: FastLM(model, tok, max_length=2048)}
    times, outs, stats = {k: [] for k in makers}, {}, {}
    for r in range(args.rounds):
        for label in (list(makers) if r % 2 == 0 else list(makers)[::-1]):
            lm = makers[label]()
            lm.loglikelihood(insts[:2], disable_tqdm=True)  # untimed: the probe
            before = dict(getattr(lm, "stats", {}))
            t = time.perf_counter()
            outs[label] = lm.loglikelihood(insts, disable_tqdm=True)
            times[label].append(round(time.perf_counter() - t, 2))
            stats[label] = {k: v - before.get(k, 0) for k, v in getattr(lm, "stats", {}).items()}  # the timed call's
    best = {k: min(v) for k, v in times.items()}
    diff = {k: max(abs(a[0] - b[0]) for a, b in zip(outs[k], outs["hf"])) for k in ("old", "new")}
    record = {"command": " ".join(["python", *sys.argv]), "rev": args.rev, "rev_commit": resolve_rev(args.rev),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": git_commit(),
              "device_name": cpu_model(), "torch_threads": torch.get_num_threads(), "arch": args.arch, "window": args.window,
              "layers": args.layers, "tasks": args.tasks, "limit_per_task": args.limit, "requests": len(insts),
              "seconds": times, "new_over_old": round(best["new"] / best["old"], 3),
              "hf_over_new": round(best["hf"] / best["new"], 3), "hf_over_old": round(best["hf"] / best["old"], 3),
              "max_abs_loglik_diff_vs_hf": diff,
              "plain_requests": {k: stats[k].get("ll_plain_requests", stats[k].get("ll_plain_calls") and len(insts))
                                 for k in ("old", "new")},
              "plain_prefix_passes": {k: stats[k].get("ll_plain_prefix_passes", 0) for k in ("old", "new")}}
    print(json.dumps({k: record[k] for k in ("requests", "seconds", "new_over_old", "hf_over_new", "hf_over_old",
                                             "max_abs_loglik_diff_vs_hf", "plain_requests", "plain_prefix_passes")},
                     indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
