"""FastLM's log-likelihoods (evals/backends/loglikelihood.py) equal HFLM's within 1e-4, over trie
rows, shared prefixes, token budgets and OOM backoff.

Uses the embedded SmolLM2-135M in float32 on CPU (session fixtures in conftest.py)."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from evals.backends import lm_head
from evals.backends.batching import Pending
from evals.backends.fast import FastLM
from tests.backends.prompts import (
    CONTEXTS,
    CONTINUATIONS,
    FEWSHOT,
    WINO,
    assert_same_ll,
    inst,
    ll_requests,
)


def test_loglikelihood_matches_hf(fast, hf_ll):
    assert_same_ll(fast.loglikelihood(ll_requests(), disable_tqdm=True), hf_ll)


def test_a_cluster_that_fits_one_row_joins_the_pool(smol, hf_ll):
    """The few-shot cluster (three contexts sharing FEWSHOT) fits one trie row: it runs in the
    common pool, its prefix once as that row's first nodes, without a prefix pass of its own;
    kept as a cluster (pool_clusters off) its prefix runs once as a KV cache. HF's answers
    either way, and the same tokens forwarded."""
    model, tok = smol
    runs = {}
    for pool in (True, False):
        lm = FastLM(model, tok, max_length=2048, token_budget=2048)
        lm.pool_clusters = pool
        assert_same_ll(lm.loglikelihood(ll_requests(), disable_tqdm=True), hf_ll)
        runs[pool] = dict(lm.stats)
    prefix = runs[False]["ll_shared_prefix_tokens"]
    assert runs[False]["ll_prefix_passes"] == 1 and prefix > 0
    assert runs[True].get("ll_prefix_passes", 0) == 0 and runs[True].get("ll_shared_prefix_tokens", 0) == 0
    assert runs[True]["ll_real_tokens"] == runs[False]["ll_real_tokens"] + prefix  # the prefix ran once


def test_loglikelihood_tokenisation_matches_hf(fast, hf_lm):
    for c in CONTEXTS[:3]:
        for x in CONTINUATIONS:
            assert fast._encode_pair(c, x) == hf_lm._encode_pair(c, x)
            assert fast.tok_encode(c + x) == hf_lm.tok_encode(c + x)
    # the reused context encoding must follow the context: interleaved, trailing spaces
    pairs = [(c, x) for x in CONTINUATIONS for c in CONTEXTS[:3]] + [("Answer: ", "yes"), ("Answer:", " yes")]
    for c, x in pairs:
        assert fast._encode_pair(c, x) == hf_lm._encode_pair(c, x)


def test_shared_tokens_run_once(smol, hf_lm):
    """Requests whose inputs share leading tokens (different contexts, as in WinoGrande, or
    one context's choices) compute each distinct prefix once, with HF's answers."""
    model, tok = smol
    lm = FastLM(model, tok, max_length=2048)
    reqs = [inst("loglikelihood", p) for p in WINO + [(CONTEXTS[2], " yes"), (CONTEXTS[2], " yes, it is")]]
    assert_same_ll(lm.loglikelihood(reqs, disable_tqdm=True), hf_lm.loglikelihood(reqs, disable_tqdm=True))
    inputs = [tuple(c + x)[:-1] for c, x in (lm._encode_pair(*r.args) for r in reqs)]
    distinct = {s[:k] for s in inputs for k in range(1, len(s) + 1)}
    assert lm.stats["ll_real_tokens"] == len(distinct) < sum(map(len, set(inputs)))


def test_batch_size_one_scores_each_context_alone(smol):
    """At batch size 1 a request's numbers do not depend on the other requests of the run
    (what makes 1 and N processes agree bit for bit): no row mixes contexts."""
    model, tok = smol
    lm = FastLM(model, tok, max_length=2048, batch_size=1)
    alone = lm.loglikelihood([inst("loglikelihood", WINO[0])], disable_tqdm=True)
    mixed = lm.loglikelihood([inst("loglikelihood", p) for p in WINO[::-1]], disable_tqdm=True)
    assert alone[0] == mixed[1]
    x0, x1 = (len(sum(lm._encode_pair(*p), [])) - 1 for p in WINO)
    assert lm.stats["ll_real_tokens"] == 2 * x0 + x1  # the shared start ran once per context


def test_tiny_budget_gives_same_answers(smol, hf_ll):
    model, tok = smol
    lm = FastLM(model, tok, max_length=2048, token_budget=16)  # one row per batch
    assert_same_ll(lm.loglikelihood(ll_requests(), disable_tqdm=True), hf_ll)


def test_shared_prefix_runs_once_per_cluster(smol, hf_ll):
    """One row per batch: the few-shot prefix still runs once for its three contexts (its KV
    cache is kept between batches), and the answers stay HF's."""
    model, tok = smol
    lm = FastLM(model, tok, max_length=2048, batch_size=1)
    assert_same_ll(lm.loglikelihood(ll_requests(), disable_tqdm=True), hf_ll)
    shared = lm.stats["ll_shared_prefix_tokens"]
    assert len(tok.encode(FEWSHOT)) - 2 <= shared <= len(tok.encode(FEWSHOT)) + 8
    assert lm._prefix is None  # released after the call


def test_left_truncation_matches_hf(smol):
    from lm_eval.models.huggingface import HFLM

    model, tok = smol
    hf = HFLM(pretrained=model, tokenizer=tok, batch_size=4, max_length=24, device="cpu")
    lm = FastLM(model, tok, max_length=24)
    reqs = [inst("loglikelihood", (FEWSHOT, x)) for x in CONTINUATIONS]
    assert_same_ll(lm.loglikelihood(reqs, disable_tqdm=True), hf.loglikelihood(reqs, disable_tqdm=True))


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory (simulated)"),
    RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 26843545600 bytes (simulated)"),
], ids=["cuda", "cpu-allocator"])
def test_oom_backoff_gives_complete_identical_results(smol, hf_ll, monkeypatch, error):
    model, tok = smol
    lm = FastLM(model, tok, max_length=2048, token_budget=4096)
    lm.loglikelihood(ll_requests()[:1], disable_tqdm=True)  # the probe (_check_rows) runs before the first batch
    real = lm._score_rows
    calls = {"n": 0}

    def flaky(*a):
        calls["n"] += 1
        if calls["n"] == 1:
            raise error
        return real(*a)

    monkeypatch.setattr(lm, "_score_rows", flaky)
    assert_same_ll(lm.loglikelihood(ll_requests(), disable_tqdm=True), hf_ll)
    assert lm.budget.halvings == 1 and lm.budget.tokens < 4096


def test_loglikelihood_rolling_matches_hf(smol):
    """Rolling windows (perplexity tasks) over trie rows give HFLM's totals."""
    from lm_eval.models.huggingface import HFLM

    model, tok = smol
    hf = HFLM(pretrained=model, tokenizer=tok, batch_size=4, max_length=32, device="cpu")
    lm = FastLM(model, tok, max_length=32)
    reqs = [inst("loglikelihood_rolling", (text,), i) for i, text in enumerate([FEWSHOT, CONTEXTS[2], FEWSHOT[:90]])]
    got, ref = lm.loglikelihood_rolling(reqs), hf.loglikelihood_rolling(reqs, disable_tqdm=True)
    assert len(got) == 3 and all(abs(a - b) < 1e-4 for a, b in zip(got, ref))


class _HostReads(TorchFunctionMode):
    """Records each read of a tensor's values into Python: on a GPU each one waits for the
    device to finish its queued work."""

    READS = {"tolist", "item", "__bool__", "__int__", "__float__", "__index__", "numpy"}

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.READS:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("overlap,grouped,pool", [(True, False, True), (True, True, False), (False, False, True)])
def test_a_batch_reads_nothing_back_until_the_next_is_queued(smol, hf_ll, monkeypatch, overlap, grouped, pool):
    """With `overlap`, a trie-row batch (model forward and output layer included) queues all its
    work without reading a value back (the CPU's greedy test from row maxima, which reads, is
    replaced by the argmax a GPU runs) and returns a Pending that run_batched reads after
    queueing the next batch: in one attention group as on the CPU, and in groups of similar
    length with the few-shot cluster's prefix as a KV cache, as on a GPU. HF's answers either
    way; without `overlap` the batch reads its results itself."""
    monkeypatch.setattr(lm_head, "greedy_hits", lambda logp, rows, tgt, vals: logp.argmax(-1)[rows] == tgt)
    model, tok = smol
    lm = FastLM(model, tok, max_length=2048, token_budget=64)  # several batches
    lm.overlap, lm._grouped, lm.pool_clusters = overlap, grouped, pool
    inner, reads, kinds = lm._score_rows, [], []

    def spy(rows, conts_of):
        with _HostReads() as m:
            out = inner(rows, conts_of)
        reads.extend(m.seen)
        kinds.append(type(out))
        return out

    monkeypatch.setattr(lm, "_score_rows", spy)
    assert_same_ll(lm.loglikelihood(ll_requests(), disable_tqdm=True), hf_ll)
    assert lm.stats["ll_batches"] >= 3
    assert (lm.stats["ll_prefix_passes"] > 0) == (not pool)
    assert (lm.stats["ll_attention_groups"] > lm.stats["ll_batches"]) == grouped
    if overlap:
        assert reads == [] and set(kinds) == {Pending}
    else:
        assert "tolist" in reads and set(kinds) == {list}
