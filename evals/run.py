"""The shared runner: validate every benchmark, load the model once, run each benchmark through lm-eval."""

import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from evals import config, data, paths, results
from evals.errors import ConfigError, DataError, ModelError, OptionError, Phi2EvalError

DEFAULT_MAX_GEN_TOKS = 256  # generation limit of tasks whose YAML sets none
PACKAGES = ("phi2-repro", "torch", "transformers", "lm_eval", "datasets", "accelerate", "gguf", "numpy")


@dataclass
class RunOptions:
    """What `phi2eval run` was asked to do."""

    model: str = "smollm2-135m"
    limit: int | dict | None = None  # per task; a dict gives one limit per benchmark name
    data_dir: Path | None = None
    output_dir: Path = field(default_factory=paths.default_results_dir)
    backend: str = "fast"
    device: str | None = None
    dtype: str | None = None
    batch_size: int | None = None
    max_gen_toks: int | None = None  # overrides every generative task's limit (recorded); None: the YAML's
    static_cache: bool = False  # fast backend: greedy generation with a static KV cache (compiled on CUDA)
    cuda_graphs: bool = False  # fast backend: greedy decoding steps replayed as CUDA graphs (graph_decode.py)
    trust_remote_code: bool = False  # let a hub repository or folder run its own modelling code
    cache: bool = True  # reuse/store finished requests in the request cache (evals/cache.py)
    cache_dir: Path | None = None  # default .cache/phi2eval or $PHI2EVAL_CACHE_DIR


def backend_label(opts: RunOptions) -> str:
    """The backend as results and the request cache record it ('fast', 'hf', 'fast+static-cache',
    'fast+cuda-graphs')."""
    return opts.backend + ("+static-cache" if opts.static_cache else "") + ("+cuda-graphs" if opts.cuda_graphs else "")


def check_run_options(opts: RunOptions) -> None:
    """Refuse option values that cannot work, before any data is read or model loaded: counts
    below 1, a dtype or device torch does not know (or CUDA where there is none), and an output
    folder that cannot be written (found only after the first benchmark's work otherwise)."""
    import torch

    limits = opts.limit.items() if isinstance(opts.limit, dict) else [("", opts.limit)]
    for name, value in [*((f"--limit{' of ' + n if n else ''}", v) for n, v in limits),
                        ("--batch-size", opts.batch_size), ("--max-gen-toks", opts.max_gen_toks)]:
        if value is not None and (not isinstance(value, int) or value < 1):
            raise OptionError(f"{name} must be a whole number of at least 1, not {value!r}")
    if opts.dtype not in (None, "auto"):
        dtype = getattr(torch, str(opts.dtype), None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise OptionError(f"unknown --dtype {opts.dtype!r}: use float32, bfloat16 or float16")
    if opts.device not in (None, "auto"):
        try:
            device = torch.device(opts.device)
        except (RuntimeError, ValueError):
            raise OptionError(f"unknown --device {opts.device!r}: use cpu, cuda or cuda:N") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise OptionError(f"--device {opts.device}: this machine has no CUDA GPU (torch {torch.__version__}); "
                              "use --device cpu")
        backend = torch.backends.mps if device.type == "mps" else getattr(torch, device.type, None)
        if device.type not in ("cpu", "cuda") and not getattr(backend, "is_available", lambda: False)():
            raise OptionError(f"--device {opts.device}: torch {torch.__version__} has no {device.type} device here; "
                              "use --device cpu or cuda")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise OptionError(f"--device {opts.device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    out = Path(opts.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".phi2eval-write-check-"):
            pass
    except OSError as exc:
        raise OptionError(f"cannot write results to {out} ({exc.strerror or exc}): pass --output-dir with a "
                          "folder you can write") from None


def use_data_dir(data_dir: Path | None) -> Path | None:
    """Point the loaders at `data_dir` (or keep PHI2EVAL_DATA_DIR); None means the hub."""
    if data_dir is not None:
        data_dir = Path(data_dir).expanduser().resolve()
        if not data_dir.is_dir():
            raise DataError(f"data dir {data_dir} does not exist: pass --data-dir with the layout of ../shared/data")
        os.environ[paths.DATA_DIR_ENV] = str(data_dir)
    return paths.data_dir()


def task_manager():
    """lm-eval's TaskManager over configs/tasks only (the built-in tasks are not indexed)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(paths.tasks_dir()), include_defaults=False, verbosity="ERROR")


def leaf_tasks(task_dict: dict) -> dict:
    """{task name: Task} of a (nested) lm-eval task dict."""
    out = {}
    for key, value in task_dict.items():
        if isinstance(value, dict):
            out.update(leaf_tasks(value))
        else:
            out[getattr(key, "group_name", key) if not isinstance(key, str) else key] = value
    return out


def prepare(benches: list[config.Benchmark], tm) -> dict[str, dict]:
    """Build every benchmark's lm-eval tasks (config and data) before any model loads."""
    from lm_eval.tasks import get_task_dict

    built = {}
    for bench in benches:
        try:
            built[bench.name] = leaf_tasks(get_task_dict([bench.name], tm))
        except Phi2EvalError:
            raise
        except Exception as exc:  # lm-eval raises many types for bad configs
            cause = exc
            while cause.__cause__ is not None and not isinstance(cause, Phi2EvalError):
                cause = cause.__cause__
            if isinstance(cause, Phi2EvalError):
                raise cause from exc
            raise ConfigError(f"{bench.path}: lm-eval cannot build task {bench.name}: {type(exc).__name__}: {exc}") from exc
        if not built[bench.name]:
            raise ConfigError(f"{bench.path}: task {bench.name} has no sub-tasks")
    return built


def run(names: list[str], opts: RunOptions, log=print) -> list[Path]:
    """Run the named benchmarks on one model load; write and return the result files.

    Launched by torchrun / accelerate launch with N processes, each process evaluates a shard of the
    documents (evals/distributed.py) and only rank 0 prints and writes results.
    """
    from evals import cache as request_cache
    from evals import distributed
    from evals.backends import check_options, make_lm
    from evals.models import load_model, pick_device, resolve, slug

    benches = config.select(names)
    check_options(opts.backend, opts.static_cache, opts.cuda_graphs)
    source = resolve(opts.model)  # an unknown model fails before any data is read
    check_run_options(opts)  # (creates the output folder: only once the names are known good)
    world = distributed.world_from_env()
    if world.local_size > 1 and source.get("device_map"):
        raise ModelError(f"{opts.model} spreads one replica over several GPUs (device_map): launch one process "
                         "per machine (torchrun --nproc-per-node 1), not one per GPU")
    data_dir = use_data_dir(opts.data_dir)
    tm = task_manager()
    built = prepare(benches, tm)
    world = distributed.setup(opts.device)
    if not world.main:
        log = _silent
    label = f" on a subset (limit {opts.limit} per task)" if opts.limit else ""
    log(f"phi2eval: {len(benches)} benchmark(s){label}; data from {data_dir or 'the Hugging Face hub'}")
    t0 = time.time()
    device = distributed.process_device(world, opts.device)
    loaded = load_model(opts.model, device, opts.dtype, trust_remote_code=opts.trust_remote_code,
                        memory=distributed.shared_memory(world, pick_device(device, opts.dtype)[0]))
    procs = f"; {world.size} processes (data parallel)" if world.size > 1 else ""
    log(f"phi2eval: loaded {loaded.info['name']} ({loaded.info['source']}) on {loaded.info['device']} "
        f"{loaded.info['dtype']} in {time.time() - t0:.1f} s; backend {backend_label(opts)}{procs}")
    inner = make_lm(opts.backend, loaded, batch_size=opts.batch_size, max_gen_toks=opts.max_gen_toks or DEFAULT_MAX_GEN_TOKS,
                    static_cache=opts.static_cache, cuda_graphs=opts.cuda_graphs)
    store = open_cache(opts, loaded.info, inner, world, log) if opts.cache else None
    counter = request_cache.CachedLM(inner, store)
    lm = distributed.DistributedLM(counter, world) if world.size > 1 else counter
    written = []
    try:
        for bench in benches:
            before = counter.counts()
            result, samples = run_one(bench, lm, tm, loaded.info, opts, data_dir, built[bench.name])
            counts = distributed.sum_counts({k: v - before[k] for k, v in counter.counts().items()}, world)
            if not world.main:
                continue
            result["cache"] = {"hits": counts["hits"], "misses": counts["misses"], "enabled": store is not None}
            result["truncated"] = counts["truncated"]
            result["env"]["processes"] = world.size
            path = results.write_result(opts.output_dir, slug(loaded.info), result, samples)
            written.append(path)
            log(summary_line(result, path))
            if counts["truncated"]:
                context = getattr(inner, "max_length", loaded.info["max_length"])
                log(f"phi2eval: warning: {counts['truncated']} request(s) of {bench.name} were longer than the "
                    f"model's context ({context} tokens) and were cut from the left")
    finally:
        if store is not None:
            store.close()
    distributed.teardown()
    return written


def open_cache(opts: RunOptions, info: dict, inner, world, log):
    """The request cache of this model; the first process of each machine opens (and repairs) it first."""
    from evals import cache as request_cache
    from evals import distributed

    identity = request_cache.model_identity(info, backend_label(opts), getattr(inner, "max_length", None),
                                            getattr(inner, "max_gen_toks", opts.max_gen_toks or DEFAULT_MAX_GEN_TOKS))
    path = request_cache.cache_file(request_cache.cache_dir(opts.cache_dir), identity)
    if world.local_rank != 0:
        distributed.barrier(world)
    store = request_cache.RequestCache(path, identity, warn=lambda msg: print(msg, file=sys.stderr))
    if world.local_rank == 0:
        distributed.barrier(world)
    log(f"phi2eval: request cache {store.path} ({store.rows()} requests cached)")
    return store


def _silent(*_args, **_kwargs) -> None:
    """The log of processes other than rank 0."""


def run_one(bench: config.Benchmark, lm, tm, model_info: dict, opts: RunOptions, data_dir,
            tasks: dict | None = None) -> tuple[dict, list]:
    """Evaluate one benchmark with lm-eval and turn its output into a result dict and samples.

    `tasks` are the benchmark's built lm-eval tasks (from `prepare`), used to label gold answers.
    """
    import lm_eval

    tasks = tasks if tasks is not None else prepare([bench], tm)[bench.name]
    limit = opts.limit.get(bench.name) if isinstance(opts.limit, dict) else opts.limit
    start = time.time()
    out = lm_eval.simple_evaluate(model=lm, tasks=[bench.name], task_manager=tm, limit=limit,
                                  log_samples=True, bootstrap_iters=1000, confirm_run_unsafe_code=True,
                                  gen_kwargs={"max_gen_toks": opts.max_gen_toks} if opts.max_gen_toks else None,
                                  verbosity="ERROR")
    wall = time.time() - start
    if out is None:  # not rank 0 of a data-parallel run: rank 0 has the gathered results
        return None, []
    leaves = list(bench.subtasks) or [bench.name]
    counts = out.get("n-samples", {})
    n = sum(counts.get(t, {}).get("effective", 0) for t in leaves)
    n_total = sum(counts.get(t, {}).get("original", 0) for t in leaves)
    metrics = metric_table(out["results"][bench.name])
    key = bench.metric_name
    if key not in metrics:
        raise ConfigError(f"{bench.path}: primary_metric {key!r} not in lm-eval's results ({', '.join(metrics)})")
    result = {
        "benchmark": bench.name, "category": bench.category, "metric": key,
        "score": finite(metrics[key]["value"]), "stderr": finite(metrics[key]["stderr"]),
        "scored": finite(metrics[key]["value"]) is not None,  # false: code not executed (--no-exec)
        "n": n, "n_total": n_total, "partial": n < n_total, "limit": limit,
        "metrics": metrics,
        "subtasks": {t: {"n": counts.get(t, {}).get("effective"), "n_total": counts.get(t, {}).get("original"),
                         "metrics": metric_table(out["results"].get(t, {}))} for t in bench.subtasks},
        "protocol": {"shots": bench.shots, "split": bench.split, "protocol": bench.protocol,
                     "source": bench.source, "config_file": str(bench.path.relative_to(paths.config_dir().parent)),
                     "config_sha256": config.config_sha256(bench),
                     "max_gen_toks_override": opts.max_gen_toks},
        "model": {k: v for k, v in {**model_info, "backend": backend_label(opts)}.items() if k != "path"},
        "data": {"source": "local" if data_dir else "hub", "hub_path": bench.hub_path,
                 "files": data.file_hashes([bench.name, *bench.subtasks], data_dir) if data_dir else {}},
        "env": environment(model_info.get("device", "cpu")),
        "runner": runner_stats(lm),
        "wall_time_s": round(wall, 2),
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    samples = []
    for task in leaves:
        output_type = out.get("configs", {}).get(task, {}).get("output_type", "")
        logged = in_doc_order(out.get("samples", {}).get(task, []))
        primary_filter = bench.metric_key.split(",", 1)[1]  # one record per document: the table's filter
        samples += [sample_record(tasks.get(task), s, output_type, key) for s in logged
                    if s.get("filter", "none") == primary_filter]
    return result, samples


def in_doc_order(logged: list[dict]) -> list[dict]:
    """lm-eval's logged samples by (filter, doc_id): a data-parallel run gathers them rank by rank."""
    filters = {}
    for s in logged:
        filters.setdefault(s.get("filter"), len(filters))
    return sorted(logged, key=lambda s: (filters[s.get("filter")], s.get("doc_id") or 0))


def runner_stats(lm) -> dict:
    """What the backend reports about its work (peak memory, token budget, OOM retries), if anything."""
    while hasattr(lm, "inner"):  # unwrap the cache and data-parallel wrappers
        lm = lm.inner
    stats = {"backend_class": type(lm).__name__}
    if hasattr(lm, "peak_memory_bytes"):
        budget, gen = getattr(lm, "budget", None), getattr(lm, "gen_budget", None)
        stats.update(peak_memory_bytes=lm.peak_memory_bytes, token_budget=getattr(budget, "tokens", None),
                     oom_events=list(getattr(budget, "events", [])), **dict(getattr(lm, "stats", {})))
        if gen is not None:
            stats.update(gen_token_budget=gen.tokens, gen_oom_events=list(gen.events))
        if getattr(lm, "plain_reasons", None):
            stats["ll_plain_reasons"] = list(lm.plain_reasons)
    return stats


def finite(value: float | None) -> float | None:
    """`value`, or None when it is missing or NaN (e.g. pass@1 of code that was not executed)."""
    return None if value is None or math.isnan(value) else value


def metric_table(entry: dict) -> dict:
    """lm-eval's flat {'acc,none': v, 'acc_stderr,none': s} -> {'acc': {'value': v, 'stderr': s}}."""
    table = {}
    for key, value in entry.items():
        if "," not in key or "_stderr," in key or not isinstance(value, (int, float)):
            continue
        metric, filt = key.split(",", 1)
        stderr = entry.get(f"{metric}_stderr,{filt}")
        name = metric if filt == "none" else key
        table[name] = {"value": float(value), "stderr": float(stderr) if isinstance(stderr, (int, float)) else None}
    return dict(sorted(table.items()))


def gold_index(task, doc) -> int | None:
    """The gold choice of a multiple-choice doc, as lm-eval's process_results finds it."""
    if task is None:
        return None
    if isinstance(task.doc_to_text(doc), int):  # several contexts, one continuation (WinoGrande)
        return task.doc_to_text(doc)
    gold = task.doc_to_target(doc)
    if isinstance(gold, str) and not gold.isdigit():
        return task.doc_to_choice(doc).index(gold)
    return int(gold)


def sample_record(task, s: dict, output_type: str, metric: str) -> dict:
    """One lm-eval logged sample of `task` (an lm-eval Task) -> the project's per-sample record."""
    args = s.get("arguments") or []
    name = getattr(task, "config", None) and task.config.task
    rec = {"task": name, "doc_id": s.get("doc_id"), "prompt": args[0][0] if args else None, "target": s.get("target")}
    if output_type == "multiple_choice":
        lls = [r[0] for r in s.get("filtered_resps", [])]
        rec.update(choices=[a[1] for a in args], loglikelihoods=lls,
                   prediction=max(range(len(lls)), key=lls.__getitem__) if lls else None)
        rec["gold"] = gold_index(task, s.get("doc"))
    else:
        rec.update(generation=(s.get("resps") or [[None]])[0][0], extracted=(s.get("filtered_resps") or [None])[0],
                   filter=s.get("filter"))
    base = metric.split(",")[0]
    rec["metrics"] = {k: v for k, v in s.items() if isinstance(v, (int, float, bool)) and k not in ("doc_id",)}
    rec["correct"] = rec["metrics"].get(base)
    ext = rec.get("extracted")
    if isinstance(ext, list) and ext and isinstance(ext[0], dict) and "status" in ext[0]:  # executed code
        rec.update(passed=ext[0]["passed"], status=ext[0]["status"], reason=ext[0]["reason"])
    return rec


def environment(device: str) -> dict:
    """Package versions, git commit, Python and device of this run."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    env = {"git_commit": git_commit(), "packages": versions, "python": platform.python_version(),
           "platform": platform.platform(), "cpu": cpu_model(), "device": device, "host_cpus": os.cpu_count()}
    if device.startswith("cuda"):
        import torch

        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpus"] = torch.cuda.device_count()
    return env


def cpu_model() -> str:
    """The host CPU's model name from /proc/cpuinfo (Linux), else platform.processor(), else 'cpu'."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def git_commit() -> str | None:
    """HEAD of the project checkout ('+dirty' when it has uncommitted changes outside results/,
    which the harness itself writes), or None."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.REPO_ROOT, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        status = ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"]
        dirty = subprocess.run(status, cwd=paths.REPO_ROOT, capture_output=True, text=True, timeout=5).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def summary_line(result: dict, path: Path) -> str:
    """One printed line per finished benchmark; subsets are always labelled."""
    stderr = f" ± {result['stderr']:.4f}" if result.get("stderr") is not None else ""
    subset = f"SUBSET n={result['n']} of {result['n_total']}" if result["partial"] else f"full n={result['n']}"
    score = f"{result['score']:.4f}" if result.get("score") is not None else "not scored (run `phi2eval score`)"
    return (f"{result['benchmark']:<14} {result['metric']} = {score}{stderr}  ({subset})  "
            f"{result['wall_time_s']:.1f} s -> {path}")
