"""scripts/project_suite.py: its work counts equal what the fast backend really computes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import project_suite  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402

FEWSHOT = "".join(f"Q: What is {i} plus {i}?\nA: {2 * i}\n\n" for i in range(10))
CONTEXTS = ["The capital of France is", "Question: Is the sky blue?\nAnswer:",
            FEWSHOT + "Q: What is 3 plus 1?\nA:", FEWSHOT + "Q: What is 7 plus 2?\nA:"]
CONTINUATIONS = [" Paris", " yes", " no", " London, a city of many bridges"]


def _requests():
    return [Instance(request_type="loglikelihood", doc={}, arguments=(c, x), idx=j, metadata=("t", i, 1))
            for i, c in enumerate(CONTEXTS) for j, x in enumerate(CONTINUATIONS)]


def test_loglikelihood_work_equals_fast_backend_work(embedded_model):
    from evals.backends.fast import FastLM

    lm = FastLM(embedded_model.model, embedded_model.tokenizer, max_length=2048, batch_size=1)  # no padding
    lm.loglikelihood(_requests(), disable_tqdm=True)
    rec = project_suite.count_work("t", _requests(), lm)
    assert rec["n_docs"] == 4 and rec["n_requests"] == 16
    assert rec["fast_forward_tokens"] == lm.stats["ll_real_tokens"] + lm.stats["ll_shared_prefix_tokens"]
    assert rec["fast_logit_positions"] == lm.stats["ll_scored_positions"]
    assert lm.stats["ll_shared_prefix_tokens"] > 0  # the few-shot prefix was counted once
    assert rec["hf_forward_tokens"] > rec["fast_forward_tokens"]


@pytest.mark.parametrize("budget", [2048, 64])
@pytest.mark.parametrize("pool", [True, False], ids=["cluster-pooled", "cluster-kept"])
def test_loglikelihood_passes_are_those_the_backend_runs(embedded_model, budget, pool):
    """ll_batches_of counts the batches and prefix passes FastLM runs (on the CPU: batches cut
    by padded size, padding inside attention allowed up to cpu_attention_waste; the few-shot
    cluster pooled into one row, or kept with its prefix pass)."""
    import torch

    from evals.backends.device import cpu_attention_waste, forward_cost_tokens
    from evals.backends.fast import FastLM

    lm = FastLM(embedded_model.model, embedded_model.tokenizer, max_length=2048, token_budget=budget)
    lm.pool_clusters = pool
    lm.loglikelihood(_requests(), disable_tqdm=True)
    pool_tokens = 2 * forward_cost_tokens(lm.model, torch.device("cpu"), budget) if pool else 0
    waste = cpu_attention_waste(lm.model)
    rec = project_suite.count_work("t", _requests(), lm, ll_plan=(budget, pool_tokens, False, waste))
    assert rec["ll_batches"] == lm.stats["ll_batches"]
    if budget == 2048 and pool:  # the allowance is what joined the rows: without it, one batch more
        old = project_suite.count_work("t", _requests(), lm, ll_plan=(budget, pool_tokens, False))
        assert old["ll_batches"] == rec["ll_batches"] + 1
    assert rec["ll_prefix_passes"] == lm.stats.get("ll_prefix_passes", 0) == (0 if pool else 1)


def test_generation_work_counts_max_new_tokens(embedded_model):
    from evals.backends.fast import FastLM

    lm = FastLM(embedded_model.model, embedded_model.tokenizer, max_length=2048)
    reqs = [Instance(request_type="generate_until", doc={}, arguments=(c, {"until": ["\n"], "max_gen_toks": 32}),
                     idx=0, metadata=("t", i, 1)) for i, c in enumerate(CONTEXTS)]
    rec = project_suite.count_work("t", reqs, lm)
    prompt = sum(len(lm.tok_encode(c)) for c in CONTEXTS)
    assert rec["prompt_tokens"] == prompt and rec["max_new_tokens"] == 4 * 32
    from evals.backends.planning import share_clusters

    _, shared = share_clusters([lm.tok_encode(c) for c in CONTEXTS])
    S = max(shared)
    assert S > 0 and sorted(shared) == [0, 0, S, S]  # the two few-shot prompts share their examples
    # every step reads each row's own prompt tokens and what it made; the shared prefix once per batch
    assert rec["kv_token_reads"] == 32 * (prompt - 2 * S) + 4 * (32 * 31 // 2)
    assert rec["prefix_clusters"] == [[2, S, 32]]
    assert rec["fast_prefill_tokens"] == prompt - S  # the shared few-shot prefix is prefilled once


def test_token_counter_counts_like_the_backend(embedded_model):
    """main() counts with a model-less FastLM: same tokens, same work as the real backend."""
    from evals.backends.device import merge_ratio
    from evals.backends.fast import FastLM

    lm = FastLM(embedded_model.model, embedded_model.tokenizer, max_length=2048)
    counter = project_suite.token_counter(embedded_model.tokenizer, 2048)
    gen = [Instance(request_type="generate_until", doc={}, arguments=(c, {"until": ["\n"]}), idx=0, metadata=("t", i, 1))
           for i, c in enumerate(CONTEXTS)]
    assert project_suite.count_work("t", gen, counter) == project_suite.count_work("t", gen, lm)
    ll = project_suite.count_work("t", _requests(), counter, merge_ratio(embedded_model.model))
    assert ll == project_suite.count_work("t", _requests(), lm)


def test_floor_arithmetic():
    ll = {"request_type": "loglikelihood", "fast_forward_tokens": 1000, "fast_logit_positions": 100}
    secs = project_suite.floor_seconds(ll, body=10**9, head=10**8, peak=1e15, mfu=0.5, bw=1e12, gen_batch=8)
    assert secs == pytest.approx((2e9 * 1000 + 2e8 * 100) / 5e14)
    gen = {"request_type": "generate_until", "n_requests": 16, "fast_prefill_tokens": 0, "max_new_tokens": 16 * 10}
    secs = project_suite.floor_seconds(gen, body=10**9, head=0, peak=1e18, mfu=1.0, bw=1e12, gen_batch=8)
    # 2 batches x 10 steps, each step reads 2 GB of bf16 weights at 1 TB/s; compute is negligible
    assert secs == pytest.approx(20 * 2e9 / 1e12, rel=1e-3)


def test_decode_floor_reads_every_rows_kv_cache():
    gen = {"request_type": "generate_until", "n_requests": 8, "fast_prefill_tokens": 0, "max_new_tokens": 8 * 10,
           "kv_token_reads": 8 * (10 * 100 + 45)}
    secs = project_suite.floor_seconds(gen, body=10**9, head=0, peak=1e18, mfu=1.0, bw=1e12, gen_batch=8, kv_bytes=1000)
    # 1 batch x 10 steps x 2 GB of weights, plus 8 rows x (10 steps x 100 prompt tokens + 45) x 1 kB of KV
    assert secs == pytest.approx((10 * 2e9 + 8 * 1045 * 1000) / 1e12, rel=1e-3)
    assert gen["decode_read_bytes"] == 10 * 2 * 10**9 + 8 * 1045 * 1000


def test_decode_floor_reads_a_shared_prefix_once_per_batch():
    gen = {"request_type": "generate_until", "n_requests": 8, "fast_prefill_tokens": 0, "max_new_tokens": 8 * 10,
           "kv_token_reads": 0, "prefix_clusters": [[8, 500, 10]]}
    secs = project_suite.floor_seconds(gen, body=10**9, head=0, peak=1e18, mfu=1.0, bw=1e12, gen_batch=4, kv_bytes=1000)
    # 2 batches x 10 steps, each reading 2 GB of weights and the 500-token prefix (500 kB) once
    assert secs == pytest.approx(20 * (2e9 + 500 * 1000) / 1e12, rel=1e-3)


@pytest.mark.parametrize("budget,min_rows", [(10_000, 8), (300, 8), (120, 8), (10_000, 2), (300, 2)])
def test_generation_batches_are_those_the_backend_runs(embedded_model, monkeypatch, budget, min_rows):
    """gen_batches_of plans the batches as FastLM.generate_until cuts them (on the CPU, with
    clusters mixed; min_rows 2: the few-shot prompts form a cluster, not part of the pool)."""
    import torch

    from evals.backends import planning
    from evals.backends.device import gen_pad_waste
    from evals.backends.fast import FastLM

    monkeypatch.setattr(planning, "GEN_CLUSTER_MIN_ROWS", min_rows)

    lm = FastLM(embedded_model.model, embedded_model.tokenizer, max_length=2048, token_budget=budget)
    calls = []
    monkeypatch.setattr(lm, "_greedy_batch",
                        lambda prompts, *a: calls.append((len(prompts), all(a[2]))) or [""] * len(prompts))
    reqs = [Instance(request_type="generate_until", doc={}, arguments=(c, {"until": ["\n"], "max_gen_toks": 8}),
                     idx=0, metadata=("t", i, 1)) for i, c in enumerate(CONTEXTS * 3)]
    lm.generate_until(reqs, disable_tqdm=True)
    plan = (lm.gen_budget.tokens, gen_pad_waste(lm.model, torch.device("cpu"), lm.gen_budget.tokens), True)  # CPU: mixed
    rec = project_suite.count_work("t", reqs, lm, gen_plan=plan)
    assert rec["gen_batches"] == len(calls) and rec["decode_steps"] == 8 * len(calls)
    assert sum(n for n, _ in calls) == len(reqs)
    # the batches whose every row belongs to a few-shot cluster read its prefix in place
    in_place = sum(shared for _, shared in calls)
    assert rec["gen_batches_prefix_in_place"] == in_place and rec["decode_steps_prefix_in_place"] == 8 * in_place


def test_step_costs_from_a_decode_step_record():
    """A CPU record scales the in-place step by its operations; a CUDA record gives measured
    times, and with --cuda-graphs the graph step's time for every step (if it really replayed)."""
    from bench_decode_step import EXPANDED, GRAPHS, IN_PLACE

    from evals.backends.device import GPU_FORWARD_OVERHEAD_S as base

    assert project_suite.step_costs(None)[:2] == (base, base)
    modes = {EXPANDED: {"ops_per_step": 1000, "ms_per_step": 20.0}, IN_PLACE: {"ops_per_step": 1200, "ms_per_step": 30.0},
             GRAPHS: {"ops_per_step": 5, "ms_per_step": 4.0, "timed_graph_replays": 64}}
    cpu, cuda = {"device": "cpu", "modes": modes}, {"device": "cuda", "modes": modes}
    assert project_suite.step_costs(cpu)[:2] == pytest.approx((base, base * 1.2))
    assert project_suite.step_costs(cuda)[:2] == pytest.approx((0.020, 0.030))
    assert project_suite.step_costs(cuda, cuda_graphs=True)[:2] == pytest.approx((0.004, 0.004))
    for rec in (None, cpu, {"device": "cuda", "modes": {**modes, GRAPHS: {**modes[GRAPHS], "timed_graph_replays": 0}}}):
        with pytest.raises(SystemExit):
            project_suite.step_costs(rec, cuda_graphs=True)


def test_step_costs_refuse_a_record_whose_timings_were_noise():
    """bench_decode_step.py leaves ms_per_step null where the long decode was not slower than
    the short one; such a CUDA record is refused with a message, not divided by."""
    from bench_decode_step import EXPANDED, GRAPHS, IN_PLACE

    modes = {EXPANDED: {"ops_per_step": 1000, "ms_per_step": 20.0}, IN_PLACE: {"ops_per_step": 1200, "ms_per_step": None},
             GRAPHS: {"ops_per_step": 5, "ms_per_step": None, "timed_graph_replays": 64}}
    with pytest.raises(SystemExit, match="no step time for prefix read in place"):
        project_suite.step_costs({"device": "cuda", "modes": modes})
    with pytest.raises(SystemExit, match="no step time for prefix read in place, CUDA graph steps"):
        project_suite.step_costs({"device": "cuda", "modes": modes}, cuda_graphs=True)
    # a CPU record costs steps by their operations and needs no times
    assert project_suite.step_costs({"device": "cpu", "modes": modes})[1] > 0
