"""The phi2eval command: list | check | run | score | suite | table | report."""

import argparse
import sys
from pathlib import Path

from evals import paths
from evals.errors import Phi2EvalError


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=None,
                   help=f"local benchmark files in the layout of ../shared/data (or set {paths.DATA_DIR_ENV}); "
                        "without one, data comes from the Hugging Face hub")


def cmd_list(args) -> int:
    """Print every benchmark with its protocol and whether its local data is present."""
    from tabulate import tabulate

    from evals import config, data
    from evals.run import use_data_dir

    data_dir = use_data_dir(args.data_dir)
    rows = []
    for b in config.benchmarks().values():
        leaves = list(b.subtasks) or [b.name]
        statuses = {data.local_status(t, data_dir) for t in leaves}
        status = "ok" if statuses == {"ok"} else ("hub" if statuses == {"hub"} else "; ".join(sorted(statuses - {"ok"}))[:60])
        rows.append([b.name, b.category, b.shots, b.split, b.primary_metric, len(leaves), status, b.hub_path or "(per sub-task)"])
    print(tabulate(rows, headers=["benchmark", "category", "shots", "split", "metric", "tasks", "local data", "hub dataset"]))
    print(f"\ndata dir: {data_dir or 'none (hub)'}")
    return 0


def cmd_check(args) -> int:
    """Validate configs and data and render one prompt of each benchmark, without loading a model."""
    from evals import config
    from evals.run import prepare, task_manager, use_data_dir

    use_data_dir(args.data_dir)
    benches = config.select(args.benchmarks)
    built = prepare(benches, task_manager())
    for bench in benches:
        name, task = next(iter(built[bench.name].items()))
        doc = next(iter(task.eval_docs))
        prompt = task.fewshot_context(doc, num_fewshot=task.config.num_fewshot or 0)
        n = sum(len(t.eval_docs) for t in built[bench.name].values())
        print(f"== {bench.name} ({len(built[bench.name])} task(s), {n} documents); first prompt of {name}:")
        print(prompt[-600:] if isinstance(prompt, str) else prompt)
    print(f"\nchecked {len(benches)} benchmark(s): configs valid, data readable, prompts render")
    return 0


def cmd_run(args) -> int:
    """Run benchmarks on one model load and write results/<model>/<benchmark>.json."""
    from evals.run import RunOptions, run

    opts = RunOptions(model=args.model, limit=args.limit, data_dir=args.data_dir, output_dir=args.output_dir,
                      backend=args.backend, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                      max_gen_toks=args.max_gen_toks)
    run(args.benchmarks, opts)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from evals.backends import BACKENDS, DEFAULT_BACKEND
    from evals.models import DEFAULT_MODEL

    parser = argparse.ArgumentParser(prog="phi2eval", description="Reproduce the Phi-2 benchmark table for any causal LM.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="benchmarks, their protocol and whether their data is available")
    _add_data_dir(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("check", help="validate configs and data, render one prompt per benchmark (no model)")
    p.add_argument("benchmarks", nargs="*", default=["all"])
    _add_data_dir(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("run", help="run benchmarks on one model")
    p.add_argument("benchmarks", nargs="*", default=["all"], help="benchmark names, or 'all' (default)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"preset name, HF id, local folder, .gguf file or random:<preset> (default {DEFAULT_MODEL})")
    p.add_argument("--limit", type=int, default=None,
                   help="score only the first N documents of each task (sub-task for mmlu/bbh); results are labelled as a subset")
    _add_data_dir(p)
    p.add_argument("--output-dir", type=Path, default=paths.default_results_dir(), help="default: results/")
    p.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-gen-toks", type=int, default=256, help="generation limit for generative tasks")
    p.set_defaults(func=cmd_run)
    return parser


def quiet_libraries(debug: bool) -> None:
    """Keep lm-eval's and transformers' chatter out of the output unless --debug."""
    import logging
    import os

    if not debug:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        for name in ("lm-eval", "lm_eval", "transformers", "datasets"):
            logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors with exit code 2 unless --debug."""
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_libraries(args.debug)
    try:
        return args.func(args)
    except Phi2EvalError as exc:
        if args.debug:
            raise
        print(f"phi2eval: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("phi2eval: interrupted; finished benchmarks are saved", file=sys.stderr)
        return 130
    except MemoryError as exc:
        if args.debug:
            raise
        print(f"phi2eval: error: out of memory ({exc}); lower --batch-size or use a smaller model/dtype", file=sys.stderr)
        return 2
    except Exception as exc:
        import torch

        if isinstance(exc, torch.OutOfMemoryError) and not args.debug:
            print("phi2eval: error: CUDA out of memory; lower --batch-size, use --dtype bfloat16 or more GPUs", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
