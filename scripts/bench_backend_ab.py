"""Fast backend at a git revision against the working tree: same model, documents and process,
alternating, per task seconds of each (best of --rounds) and their ratio. Each round builds
fresh backends and runs two requests through each before timing (what a backend does once per
run, such as FastLM's probe, is not what is compared).
Generation tasks (--max-gen-toks to shorten them) report how many texts differ instead.

    python scripts/bench_backend_ab.py --rev 81ff485 --tasks piqa,hellaswag --limit 200
    python scripts/bench_backend_ab.py --rev HEAD --new-option cuda_graphs=1 --tasks gsm8k --limit 64

The whole `evals` package at REV is loaded from `git show REV:...` as a package of its own
(`evals_at_REV`, its imports and the attention implementations it registers with transformers
renamed), so a change to any backend module (fast.py, prefix_attention.py, batching.py ...) is
measured. Answers are compared too: the largest log-likelihood difference between the two (for
generation, how many texts differ).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def resolve_rev(rev: str) -> str:
    """The short commit id git gives `rev` (HEAD~1, a tag, a branch ...)."""
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], check=True, capture_output=True,
                          text=True).stdout.strip()


def evals_diff() -> str:
    """The working tree's uncommitted change to evals/'s tracked files (what the new side runs
    beyond HEAD), as `git diff` prints it; '' when there is none. Recorded (its first 8000
    characters), so that a record made with an edited constant says which."""
    return subprocess.run(["git", "-C", str(ROOT), "diff", "HEAD", "--", "evals"], capture_output=True,
                          text=True).stdout


def load_old_fastlm(rev: str):
    """FastLM class of the `evals` package at git revision `rev`, loaded as a package of its own
    whose modules import each other (not the working tree's), whose attention implementations
    and model keywords are renamed (phi2eval_* -> phi2eval_old_*) so that they do not replace
    the current ones in transformers' registry, and which is not registered with lm-eval."""
    git = ["git", "-C", str(ROOT)]
    sha = resolve_rev(rev)
    pkg = f"evals_at_{sha}"
    root = Path(tempfile.mkdtemp())
    files = subprocess.run([*git, "ls-tree", "-r", "--name-only", sha, "evals/"], check=True, capture_output=True,
                           text=True).stdout.split()
    for name in (f for f in files if f.endswith(".py")):
        src = subprocess.run([*git, "show", f"{sha}:{name}"], check=True, capture_output=True, text=True).stdout
        src = re.sub(r"\b(from|import) evals\b", rf"\1 {pkg}", src)
        src = src.replace('"phi2eval_', '"phi2eval_old_')
        dest = root / pkg / Path(name).relative_to("evals")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(src)
    import lm_eval.api.registry as registry

    real = registry.register_model
    registry.register_model = lambda *a, **k: (lambda cls: cls)  # the name is taken by the current one
    sys.path.insert(0, str(root))
    try:
        mod = importlib.import_module(f"{pkg}.backends.fast")
    finally:
        registry.register_model = real
        sys.path.remove(str(root))
    return mod.FastLM


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rev", required=True, help="git revision of the old backend")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tasks", default="piqa,winogrande,hellaswag")
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--per-task", type=int, default=None,
                   help="instead of --limit: the first N documents of every sub-task (as phi2eval run --limit N)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-gen-toks", type=int, default=None, help="generation tasks: override max_gen_toks")
    p.add_argument("--new-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a FastLM option for the working tree's side only, e.g. cuda_graphs=1 (with --rev HEAD: "
                        "the option against the same code without it)")
    p.add_argument("--out", default=None, help="JSON path for the record")
    args = p.parse_args(argv)
    new_opts = dict(o.split("=", 1) for o in args.new_option)
    os.environ.setdefault("PHI2EVAL_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    from lm_eval.tasks import TaskManager

    from bench_runner import build_requests, load
    from evals.backends.fast import FastLM

    Old = load_old_fastlm(args.rev)
    model, tok, info = load(args.model, "cpu", "float32")
    max_len = int(info.get("max_length") or 2048)
    tm = TaskManager(include_path=str(ROOT / "configs" / "tasks"), include_defaults=False)
    from evals.run import cpu_model, git_commit

    record = {"command": " ".join(["python", *sys.argv]), "rev": args.rev, "rev_commit": resolve_rev(args.rev),
              "new_options": new_opts,
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": git_commit(),
              "evals_diff": evals_diff()[:8000], "device_name": cpu_model(), "torch_threads": torch.get_num_threads(), "tasks": {}}
    print(f"{'task':<14}{'old s':>14}{'new s':>14}{'new/old':>9}{'max|dLL| or differing texts':>30}", flush=True)
    for name in args.tasks.split(","):
        kind, insts = build_requests(name, args.limit, tm, args.max_gen_toks, args.per_task)
        times, outs = {"old": [], "new": []}, {}
        for r in range(args.rounds):
            pairs = [("old", Old), ("new", FastLM)]
            for label, cls in pairs if r % 2 == 0 else pairs[::-1]:
                lm = cls(model, tok, max_length=max_len, **(new_opts if label == "new" else {}))
                call = lm.loglikelihood if kind == "loglikelihood" else lm.generate_until
                call(insts[:2], disable_tqdm=True)  # untimed: what a backend does once per run (FastLM's probe)
                t = time.perf_counter()
                outs[label] = call(insts, disable_tqdm=True)
                times[label].append(round(time.perf_counter() - t, 2))
        ratio = min(times["new"]) / min(times["old"])
        row = {"old_s": times["old"], "new_s": times["new"], "new_over_old": round(ratio, 3)}
        if kind == "loglikelihood":
            row["max_abs_loglik_diff"] = diff = max(abs(a[0] - b[0]) for a, b in zip(outs["old"], outs["new"]))
            shown = f"{diff:.1e}"
        else:
            row["differing_texts"] = diff = sum(a != b for a, b in zip(outs["old"], outs["new"]))
            shown = f"{diff}/{len(insts)}"
        record["tasks"][name] = row
        print(f"{name:<14}{str(times['old']):>14}{str(times['new']):>14}{ratio:>9.3f}{shown:>30}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
