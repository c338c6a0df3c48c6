"""FastLM's greedy generations (evals/backends/greedy.py) are HFLM's, token for token: batches,
shared prefixes read in place, grouped prefill, rows leaving the batch, OOM backoff (the static cache and the `generate` fallback: test_hf_generate.py).

Uses the embedded SmolLM2-135M in float32 on CPU (session fixtures in conftest.py)."""

from __future__ import annotations

import pytest
import torch

from evals.backends.fast import FastLM
from tests.backends.prompts import (
    CONTEXTS,
    FEWSHOT_PROMPTS,
    GEN_PROMPTS,
    MIXED_CLUSTERS,
    MIXED_PROMPTS,
    inst,
)


def test_generation_oom_backoff(smol, monkeypatch):
    model, tok = smol
    lm = FastLM(model, tok, max_length=2048, token_budget=4096)
    reqs = [inst("generate_until", (c, {"until": ["\n"], "max_gen_toks": 8, "do_sample": False})) for c in CONTEXTS]
    ref = lm.generate_until(reqs)
    real = lm._greedy_batch
    calls = {"n": 0}

    def flaky(*a):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("CUDA error: out of memory")
        return real(*a)

    monkeypatch.setattr(lm, "_greedy_batch", flaky)
    assert lm.generate_until(reqs) == ref
    assert lm.gen_budget.halvings == 1 and lm.budget.halvings == 0  # generation has its own budget


@pytest.mark.parametrize("gen_kwargs", [
    {"until": ["\n\n", "Q:"], "max_gen_toks": 24, "do_sample": False},
    {"until": [","], "max_gen_toks": 12, "temperature": 0.0},
    {"until": "\n", "max_gen_toks": 5},
])
def test_greedy_generation_identical_to_hf(fast, hf_lm, gen_kwargs):
    reqs = [inst("generate_until", (p, dict(gen_kwargs)), i) for i, p in enumerate(GEN_PROMPTS)]
    ref = hf_lm.generate_until(reqs, disable_tqdm=True)
    got = fast.generate_until(reqs, disable_tqdm=True)
    assert got == ref


def test_generation_tokens_identical_to_hf_generate(fast, smol):
    """Token for token: no stop sequence hit, full max_gen_toks, compared with HF generate."""
    model, tok = smol
    prompts = ["The history of Rome", "Once upon a time", "import numpy as np\n"]
    for p in prompts:
        ids = tok(p, return_tensors="pt")["input_ids"]
        ref = model.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:]
        got = fast._greedy_batch([ids[0].tolist()], ["@@never@@"], 16)
        assert got[0] == tok.decode(ref, skip_special_tokens=True)


def test_shared_prefix_read_in_place_gives_the_expanded_texts(smol, hf_lm):
    """Prompts sharing a few-shot prefix: the rows' cache holds only their own tokens and
    attention reads the prefix's one copy (prefix_attention.py); same texts as the prefix
    expanded to every row, and as HFLM."""
    model, tok = smol
    reqs = [inst("generate_until", (p, {"until": ["\n\n", "Q:"], "max_gen_toks": 12}), i)
            for i, p in enumerate(FEWSHOT_PROMPTS)]
    lm = FastLM(model, tok, max_length=2048)
    got = lm.generate_until(reqs, disable_tqdm=True)
    assert lm.stats["gen_prefix_in_place_batches"] == 1 and lm._shared_decode
    expanded = FastLM(model, tok, max_length=2048)
    expanded.shared_prefix_decode = expanded._shared_decode = False
    assert got == expanded.generate_until(reqs, disable_tqdm=True)
    assert expanded.stats["gen_prefix_in_place_batches"] == 0
    assert got == hf_lm.generate_until(reqs, disable_tqdm=True)


def test_shared_prefix_falls_back_when_attention_cannot_read_it(smol, monkeypatch, caplog):
    """An attention layer that refuses the shared prefix (here: every one) sends the backend
    back to the expanded prefix cache, with a warning and the same texts."""
    from transformers import AttentionInterface

    from evals.backends import prefix_attention

    model, tok = smol
    reqs = [inst("generate_until", (p, {"until": ["\n"], "max_gen_toks": 6}), i) for i, p in enumerate(FEWSHOT_PROMPTS)]
    ref = FastLM(model, tok, max_length=2048).generate_until(reqs, disable_tqdm=True)

    def refuse(*a, **k):
        raise NotImplementedError("not here")

    monkeypatch.setitem(AttentionInterface._global_mapping, prefix_attention.SHARED, refuse)
    lm = FastLM(model, tok, max_length=2048)
    with caplog.at_level("WARNING"):
        assert lm.generate_until(reqs, disable_tqdm=True) == ref
    assert not lm._shared_decode and "shared-prefix decoding unavailable (not here)" in caplog.text
    assert lm.stats["gen_prefix_in_place_batches"] == 0


@pytest.mark.parametrize("in_place", [True, False])
@pytest.mark.parametrize("prompts", [GEN_PROMPTS, MIXED_PROMPTS], ids=["unshared", "fewshot"])
def test_grouped_prefill_gives_the_whole_batch_texts(smol, prompts, in_place):
    """Rows of a generation batch are prefilled in groups of similar length and their caches
    copied into one left-padded cache (widen_cache): the same texts as one prefill of the
    whole batch, with the prefix read in place or copied to every row."""
    model, tok = smol
    enc = [tok(p)["input_ids"] for p in prompts]
    runs = []
    for widen in (True, False):
        lm = FastLM(model, tok, max_length=2048)
        lm._shared_decode = in_place
        lm._widen_prefill = widen
        with torch.inference_mode():  # as generate_until runs it
            runs.append((lm._greedy_batch(enc, ["\n\n"], 10), lm.stats["gen_prefill_passes"]))
    assert runs[0][0] == runs[1][0]
    assert runs[0][1] > 1 and runs[1][1] == 1


def test_long_prompts_without_a_prefix_prefill_alone_with_causal_attention(smol, monkeypatch):
    """On the CPU a prompt of SOLO_PREFILL tokens or more with no prefix in its cache prefills
    alone: its attention gets no mask (SDPA's causal kernel), shorter prompts keep their
    groups, and the texts are the grouped prefill's. Under a prefix nothing changes."""
    from evals.backends import greedy

    model, tok = smol
    enc = [tok(p)["input_ids"] for p in GEN_PROMPTS]
    lm = FastLM(model, tok, max_length=2048)
    monkeypatch.setattr(greedy, "SOLO_PREFILL", 10 ** 9)
    grouped = lm._prefill_groups(enc, 0, None)
    under_prefix = lm._prefill_groups(enc, 50, None)
    with torch.inference_mode():
        ref = lm._greedy_batch(enc, ["\n\n"], 10)
    cut = sorted(map(len, enc))[len(enc) // 2]
    monkeypatch.setattr(greedy, "SOLO_PREFILL", cut)
    groups = lm._prefill_groups(enc, 0, None)
    assert sorted(i for g in groups for i in g) == list(range(len(enc)))
    assert all(len(g) == 1 for g in groups if len(enc[g[0]]) >= cut)
    assert [g for g in groups if len(enc[g[0]]) < cut] == \
        [[i for i in g if len(enc[i]) < cut] for g in grouped if any(len(enc[i]) < cut for i in g)]
    assert len(groups) > len(grouped)
    assert lm._prefill_groups(enc, 50, None) == under_prefix

    masks = []  # (query length, mask given, is_causal) of each attention call that prefills
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, *a, **kw):
        if q.shape[2] == k.shape[2]:  # a prefill (no prefix): as many queries as keys
            masks.append((q.shape[0], attn_mask is not None, kw.get("is_causal")))
        return sdpa(q, k, v, attn_mask, *a, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    with torch.inference_mode():  # lm has run its probe
        assert lm._greedy_batch(enc, ["\n\n"], 10) == ref
    alone = sum(len(g) == 1 for g in groups)  # the long prompts, and any short one grouped alone
    assert masks.count((1, False, True)) == alone * lm._n_layers  # causal, no mask
    assert len(masks) == len(groups) * lm._n_layers


def test_grouped_prefill_falls_back_when_the_cache_cannot_be_widened(smol, monkeypatch, caplog):
    from evals.backends import greedy

    model, tok = smol
    enc = [tok(p)["input_ids"] for p in GEN_PROMPTS]
    ref = FastLM(model, tok, max_length=2048)._greedy_batch(enc, ["\n\n"], 8)
    monkeypatch.setattr(greedy, "widen_cache", lambda *a: False)
    lm = FastLM(model, tok, max_length=2048)
    with caplog.at_level("WARNING"):
        assert lm._greedy_batch(enc, ["\n\n"], 8) == ref
    assert not lm._widen_prefill and "prefilling whole batches" in caplog.text
    assert lm.stats["gen_prefill_passes"] == 1


def test_stop_check_on_the_tail_stops_at_the_same_step(smol, monkeypatch):
    """Stop sequences are looked for only after tokens that can end one, in the text of a row's
    last tokens: the rows stop at the same step as when the whole text is decoded after every
    token (a huge tail, no token skipped), with the same texts."""
    from evals.backends import greedy
    from evals.backends import stops

    model, tok = smol
    until = ["\n\n", "Q:", " plus", "."]
    prompts = [tok(p)["input_ids"] for p in GEN_PROMPTS]
    runs = []
    for tail, skip in ((stops.STOP_TAIL_TOKENS, True), (10 ** 6, False)):
        monkeypatch.setattr(stops, "STOP_TAIL_TOKENS", tail)
        monkeypatch.setattr(greedy, "stop_free_ids", stops.stop_free_ids if skip else lambda *a: frozenset())
        lm = FastLM(model, tok, max_length=2048)
        runs.append((lm._greedy_batch(prompts, until, 40), lm.stats["gen_tokens"]))
    assert runs[0] == runs[1]
    assert runs[0][1] < 40 * len(prompts)  # some rows stopped early


def test_rows_leaving_a_batch_keep_their_texts(smol, monkeypatch):
    """Rows finishing at different steps leave the batch and later rows move into their place
    (compact_cache); every row's text is the one it gets decoded alone."""
    from evals.backends import greedy

    model, tok = smol
    orders, real = [], greedy.compact_cache

    def spy(cache, order, device):
        orders.append(list(order))
        return real(cache, order, device)

    monkeypatch.setattr(greedy, "compact_cache", spy)
    enc = [tok(p)["input_ids"] for p in GEN_PROMPTS]
    lm = FastLM(model, tok, max_length=2048)
    with torch.inference_mode():
        got = lm._greedy_batch(enc, ["\n", "."], 16)
        alone = [lm._greedy_batch([e], ["\n", "."], 16)[0] for e in enc]
    assert got == alone
    assert any(o != sorted(o) for o in orders)  # a row moved into a hole


def test_a_batch_mixing_clusters_gives_each_clusters_texts(smol, hf_lm, monkeypatch):
    """Rows of two few-shot clusters in one decoding loop, each reading its own prefix in place
    (MultiPrefix): the texts of each cluster decoded alone, and HFLM's."""
    from evals.backends import planning
    from evals.backends.planning import share_clusters

    model, tok = smol
    enc = [tok(p)["input_ids"] for p in MIXED_CLUSTERS]
    _, shared = share_clusters(enc)
    assert len({tuple(e[:n]) for e, n in zip(enc, shared)}) == 2 and min(shared) >= planning.SHARE_MIN
    lm = FastLM(model, tok, max_length=2048)
    with torch.inference_mode():
        mixed = lm._greedy_batch(enc, ["\n\n", "Q:"], 12, list(shared))
        alone = lm._greedy_batch(enc[:4], ["\n\n", "Q:"], 12, shared[0]) + \
            lm._greedy_batch(enc[4:], ["\n\n", "Q:"], 12, shared[4])
    assert mixed == alone and lm.stats["gen_mixed_batches"] == 1
    # through generate_until: the planner mixes the two clusters (kept out of the pool here)
    monkeypatch.setattr(planning, "GEN_CLUSTER_MIN_ROWS", 2)
    reqs = [inst("generate_until", (p, {"until": ["\n\n", "Q:"], "max_gen_toks": 12}), i)
            for i, p in enumerate(MIXED_CLUSTERS)]
    lm = FastLM(model, tok, max_length=2048)
    assert lm.generate_until(reqs, disable_tqdm=True) == hf_lm.generate_until(reqs, disable_tqdm=True)
    assert lm.stats["gen_mixed_batches"] == 1


def test_a_mixed_batch_falls_back_to_one_batch_per_cluster(smol, monkeypatch, caplog):
    """Where caches cannot be assembled from groups, each cluster decodes on its own."""
    from evals.backends import greedy
    from evals.backends.planning import share_clusters

    model, tok = smol
    enc = [tok(p)["input_ids"] for p in MIXED_CLUSTERS]
    _, shared = share_clusters(enc)
    ref = FastLM(model, tok, max_length=2048)._greedy_batch(enc, ["\n"], 8, list(shared))
    monkeypatch.setattr(greedy, "widen_cache", lambda *a: False)
    lm = FastLM(model, tok, max_length=2048)
    with caplog.at_level("WARNING"):
        assert lm._greedy_batch(enc, ["\n"], 8, list(shared)) == ref
    assert not lm._widen_prefill and lm.stats["gen_mixed_batches"] == 0


def test_only_greedy_decoding_gets_the_generation_budget(smol, monkeypatch):
    """transformers' generate (sampling, --static-cache) prefills whole batches and grows its
    cache by concatenation, so it keeps the log-likelihood budget and padding rules."""
    from evals.backends import greedy

    model, tok = smol
    seen = []
    monkeypatch.setattr(greedy, "run_batched",
                        lambda lengths, fn, budget, *a, **k: seen.append((budget, k.get("pad_waste"))) or [""] * len(lengths))
    reqs = [inst("generate_until", (p, {"until": ["\n"], "max_gen_toks": 4})) for p in GEN_PROMPTS[:2]]
    sampled = [inst("generate_until", (p, {"until": ["\n"], "max_gen_toks": 4, "do_sample": True})) for p in GEN_PROMPTS[:2]]
    lm = FastLM(model, tok, max_length=2048)
    lm.generate_until(reqs, disable_tqdm=True)
    lm.generate_until(sampled, disable_tqdm=True)
    static = FastLM(model, tok, max_length=2048, static_cache=True)
    static.generate_until(reqs, disable_tqdm=True)
    assert seen[0][0] is lm.gen_budget and seen[0][1] > 0
    assert seen[1] == (lm.budget, None) and seen[2] == (static.budget, None)

