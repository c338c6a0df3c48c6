"""The phi2eval command: list | check | run | suite | table | report | cache."""

import argparse
import os
import sys
from pathlib import Path

from evals import paths
from evals.errors import Phi2EvalError, first_line


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


def _run_options(args, limit):
    from evals.run import RunOptions

    return RunOptions(model=args.model, limit=limit, data_dir=args.data_dir, output_dir=args.output_dir,
                      backend=args.backend, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                      max_gen_toks=args.max_gen_toks, static_cache=args.static_cache,
                      cuda_graphs=args.cuda_graphs, trust_remote_code=args.trust_remote_code,
                      cache=not args.no_cache, cache_dir=args.cache_dir)


def cmd_run(args) -> int:
    """Run benchmarks on one model load and write results/<model>/<benchmark>.json."""
    from evals.run import run

    run(args.benchmarks, _run_options(args, args.limit))
    return 0


def cmd_suite(args) -> int:
    """Run the whole suite on one model load, then write the tables and print the category table."""
    from evals.suite import quick_limits, run_suite

    limit = quick_limits() if args.quick else args.limit
    run_suite(_run_options(args, limit), suite=args.suite)
    return 0


def cmd_score(args) -> int:
    """Re-execute the saved generations of code benchmarks (after `run --no-exec`) and update the results."""
    from evals.rescore import rescore_file
    from evals.run import use_data_dir
    from evals.run import summary_line

    use_data_dir(args.data_dir)
    for path in args.result_files:
        result = rescore_file(path)
        print(summary_line(result, path))
    return 0


def _add_run_options(p: argparse.ArgumentParser) -> None:
    from evals.backends import BACKENDS, DEFAULT_BACKEND
    from evals.models import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"preset name, HF id, local folder, .gguf file or random:<preset> (default {DEFAULT_MODEL})")
    p.add_argument("--limit", type=int, default=None,
                   help="score only the first N documents of each task (sub-task for mmlu/bbh); results are labelled as a subset")
    _add_data_dir(p)
    p.add_argument("--output-dir", type=Path, default=paths.default_results_dir(), help="default: results/")
    p.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="rows per batch (default: hf 16; fast batches to a token budget)")
    p.add_argument("--no-exec", action="store_true",
                   help="do not execute generated code (humaneval, mbpp): save generations for `phi2eval score`")
    p.add_argument("--max-gen-toks", type=int, default=None,
                   help="override every generative task's token limit (recorded in the result); default: each "
                        "YAML's own (bbh 512, gsm8k 256, squad_v2 32, humaneval/mbpp 512)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let the model's hub repository or folder run its own modelling code (transformers' "
                        "trust_remote_code); the fast backend checks such a model's answers against its own forward "
                        "before the first batch")
    p.add_argument("--static-cache", action="store_true",
                   help="fast backend: greedy generation through transformers' generate with a static KV cache, "
                        "which transformers compiles (torch.compile, CUDA graphs) on CUDA; same text, first "
                        "batches pay the compile time")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="fast backend: greedy decoding steps replayed as CUDA graphs (one launch per step instead "
                        "of thousands; a shared few-shot prefix still read in place); not yet measured on a GPU")
    _add_cache_dir(p)
    p.add_argument("--no-cache", action="store_true",
                   help="neither reuse nor store finished requests (default: cache them, so a rerun resumes)")


def _add_cache_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="request cache folder (default: $PHI2EVAL_CACHE_DIR or .cache/phi2eval in the repository)")


def cmd_cache(args) -> int:
    """`cache info`: one line per model's request cache; `cache clear`: delete them."""
    from evals import cache

    directory = cache.cache_dir(args.cache_dir)
    if args.action == "clear":
        print(f"removed {cache.clear(directory)} request cache file(s) from {directory}")
        return 0
    entries = cache.describe(directory)
    for e in entries:
        ident = e.get("identity") or {}
        what = (f"{e['rows']} requests; {ident.get('fingerprint')} {ident.get('dtype')} backend {ident.get('backend')}"
                if "error" not in e else f"unreadable ({e['error']}); the next run moves it aside")
        print(f"{e['path'].name}  {e['bytes'] / 1e6:.1f} MB  {what}")
    print(f"{len(entries)} request cache file(s) in {directory}")
    return 0


def cmd_table(args) -> int:
    """Write the comparison tables (markdown, CSV, LaTeX) and the category chart from saved results."""
    from evals import tables

    return tables.run_from_args(args)


def cmd_report(args) -> int:
    """Compare one measured model with its published row; write and print the markdown report."""
    from evals import report

    return report.run_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
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
    _add_run_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("cache", help="the request cache that lets an interrupted run resume: info | clear")
    p.add_argument("action", choices=("info", "clear"))
    _add_cache_dir(p)
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("suite", help="run every benchmark of the Phi-2 table on one model load, then the tables")
    p.add_argument("--suite", default="phi2", help="configs/suites/<name>.yaml (default phi2)")
    p.add_argument("--quick", action="store_true",
                   help="labelled subset sized for minutes on a laptop CPU (limits in configs/suites/quick.yaml)")
    _add_run_options(p)
    p.set_defaults(func=cmd_suite)

    p = sub.add_parser("score", help="execute saved code generations (after run --no-exec) and update their results")
    p.add_argument("result_files", nargs="+", type=Path, help="results/<model>/humaneval.json ...")
    _add_data_dir(p)
    p.set_defaults(func=cmd_score)

    from evals import report, tables  # light: yaml + json, no torch/lm-eval

    p = sub.add_parser("table", help="comparison tables (md, csv, tex) and chart from saved results; no model")
    tables.add_arguments(p)
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("report", help="one measured model vs its published row, per category; no model")
    report.add_arguments(p)
    p.set_defaults(func=cmd_report)
    return parser


def quiet_libraries(debug: bool) -> None:
    """Keep lm-eval's and transformers' chatter out of the output unless --debug."""
    import logging

    if not debug:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        for name in ("lm-eval", "lm_eval", "transformers", "datasets"):
            logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors with exit code 2 unless --debug.

    A process of a torchrun launch run from the command line ends with os._exit once its output is
    flushed: gloo's worker threads can abort the interpreter's shutdown (SIGABRT, "terminate called
    without an active exception") after the results are written, which torchrun reports as a failure.
    """
    code = _main(argv)
    # torchrun's WORLD_SIZE read here: evals.distributed.world_from_env would import lm-eval for every command
    if argv is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: list[str] | None) -> int:
    """Parse the arguments and run the command, turning known errors into one line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_libraries(args.debug)
    if getattr(args, "no_exec", False):
        os.environ["PHI2EVAL_NO_EXEC"] = "1"
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

        from evals.backends.batching import is_oom

        if isinstance(exc, torch.OutOfMemoryError) and not args.debug:
            print("phi2eval: error: CUDA out of memory; lower --batch-size, use --dtype bfloat16 or more GPUs", file=sys.stderr)
            return 2
        if is_oom(exc) and not args.debug:  # the CPU allocator's failure is a RuntimeError
            print(f"phi2eval: error: out of memory ({first_line(exc)[-120:]}); lower --batch-size or use a smaller "
                  "model/dtype",
                  file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
