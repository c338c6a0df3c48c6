"""Unpadded (packed) forward passes give the padded path's and HFLM's log-likelihoods."""

from __future__ import annotations

import logging

import torch

from evals.backends.fast import FastLM
import evals.backends.packed_attention as pa
from evals.backends.packed_attention import PACKED, make_pack, packed, small_attention, supports
from tests.backends.prompts import assert_same_ll, inst, ll_requests


def test_make_pack_indices():
    p = make_pack([3, 1, 2], prefix=5, device=torch.device("cpu"))
    (g,) = p.groups
    assert g.gather.tolist() == [[0, 1, 2], [3, 0, 0], [4, 5, 0]]
    assert p.scatter.tolist() == [0, 1, 2, 3, 6, 7]  # b * T + t of each packed token
    assert g.gather_kv.tolist() == [5, 6, 7, 8, 5, 5, 9, 10, 5]  # after the 5-token prefix


def test_make_pack_groups_pad_each_to_its_longest():
    p = make_pack([4, 3, 1, 1], prefix=0, device=torch.device("cpu"), groups=[[0, 1], [2, 3]])
    assert [g.gather.tolist() for g in p.groups] == [[[0, 1, 2, 3], [4, 5, 6, 0]], [[7], [8]]]
    # group 0's padded output is 2 x 4, group 1's follows it at offset 8
    assert p.scatter.tolist() == [0, 1, 2, 3, 4, 5, 6, 8, 9]


def test_small_attention_equals_sdpa(monkeypatch):
    """Grouped-query heads, a prefix of keys, an additive mask with hidden keys, rows in
    chunks: small_attention gives SDPA's output (with key/value heads repeated) to 1e-5."""
    g = torch.Generator().manual_seed(0)
    B, H, kvH, T, L, d = 5, 6, 2, 7, 11, 16
    q, k, v = (torch.randn(*s, generator=g) for s in ((B, H, T, d), (B, kvH, L, d), (B, kvH, L, d)))
    hidden = torch.rand(B, 1, T, L, generator=g) > 0.6
    hidden[..., 0] = False  # every query sees a key
    mask = torch.zeros(B, 1, T, L).masked_fill_(hidden, torch.finfo(torch.float32).min)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(H // kvH, 1), v.repeat_interleave(H // kvH, 1), attn_mask=mask, scale=0.3)
    monkeypatch.setattr(pa, "SCORES_CHUNK", 2 * H * T * L)  # three chunks: 2 + 2 + 1 rows
    got = small_attention(q, k, v, mask, scaling=0.3)
    assert got.shape == (B, T, H, d)
    assert torch.allclose(got, ref.transpose(1, 2), atol=1e-5)
    assert not torch.allclose(got, small_attention(q, k, v, None, scaling=0.3), atol=1e-3)  # the mask counts


def test_packed_context_sets_and_restores_implementation(smol):
    model, _ = smol
    old = model.config._attn_implementation
    with packed(model):
        assert model.config._attn_implementation == PACKED
    assert model.config._attn_implementation == old


def test_packed_rows_equal_padded_rows_and_hf(smol, hf_lm):
    """Same requests (shared contexts, a few-shot cluster with a KV-cache prefix, WinoGrande
    pairs) through packed and padded rows: equal to 5e-5 (on the CPU packed rows' attention is
    small_attention, padded rows' SDPA's flash kernel), and both HFLM's to 1e-4; the packed run
    forwards no padding."""
    model, tok = smol
    reqs = ll_requests()
    runs = {}
    for flag in (True, False):
        lm = FastLM(model, tok, max_length=2048, token_budget=512)
        lm._packed = lm._packed and flag
        lm._grouped = True  # the CUDA default: batches of mixed lengths, attention in groups
        lm.pool_clusters = False  # the cluster keeps its KV-cache prefix (pooled: below)
        assert lm._packed is flag  # the embedded model supports it
        runs[flag] = (lm.loglikelihood(reqs, disable_tqdm=True), dict(lm.stats))
    assert FastLM(model, tok)._grouped is False  # on the CPU batches stay cut by padding
    (packed_ll, ps), (padded_ll, qs) = runs[True], runs[False]
    assert ps["ll_shared_prefix_tokens"] > 0  # the few-shot cluster ran through the prefix cache
    assert ps["ll_forward_tokens"] == ps["ll_real_tokens"] < qs["ll_forward_tokens"]
    # packed batches mix row lengths (fewer batches), attention pads them in groups
    assert ps["ll_batches"] < qs["ll_batches"] and ps["ll_attention_groups"] > ps["ll_batches"]
    for (a, ga), (b, gb) in zip(packed_ll, padded_ll):
        assert abs(a - b) < 5e-5 and ga == gb
    assert_same_ll(packed_ll, hf_lm.loglikelihood(reqs, disable_tqdm=True))
    # the cluster pooled into one row among the others (plan_loglikelihood's pool_tokens): same numbers
    lm = FastLM(model, tok, max_length=2048, token_budget=512)
    lm._grouped = True
    pooled_ll = lm.loglikelihood(reqs, disable_tqdm=True)
    assert "ll_shared_prefix_tokens" not in lm.stats and lm.stats["ll_batches"] <= ps["ll_batches"]
    for (a, ga), (b, gb) in zip(pooled_ll, packed_ll):
        assert abs(a - b) < 5e-5 and ga == gb


def test_cpu_batches_may_pad_inside_attention_with_the_same_answers(smol):
    """On the CPU a batch's packed rows share one attention group, so padding costs only
    attention: the default allowance (device.cpu_attention_waste) takes the requests in fewer
    batches than the padding ratio alone, with the same log-likelihoods (to 5e-5)."""
    model, tok = smol
    reqs = ll_requests()
    runs = {}
    for flag in (True, False):
        cls = type("Variant", (FastLM,), {"attention_padding": flag})
        lm = cls(model, tok, max_length=2048)
        assert (lm._attention_waste > 0) is flag and lm._grouped is False
        runs[flag] = (lm.loglikelihood(reqs, disable_tqdm=True), lm.stats["ll_batches"])
    (new, n_new), (old, n_old) = runs[True], runs[False]
    assert n_new < n_old
    for (a, ga), (b, gb) in zip(new, old):
        assert abs(a - b) < 5e-5 and ga == gb


def test_attention_outside_the_interface_falls_back_to_padded(smol, hf_lm, caplog):
    """If fewer attention layers than the model has ran packed (a model whose attention
    ignores transformers' AttentionInterface), the batch is redone padded, with a warning,
    and later batches stay padded."""
    model, tok = smol
    lm = FastLM(model, tok, max_length=2048)
    lm._n_layers += 1  # one layer "missing": the count check must catch it
    reqs = [inst("loglikelihood", (c, x)) for c in ("The capital of France is", "A cat sat on the")
            for x in (" Paris", " mat")]
    with caplog.at_level(logging.WARNING):
        got = lm.loglikelihood(reqs, disable_tqdm=True)
    assert lm._packed is False and "runs padded rows from now on" in caplog.text
    assert lm.stats["ll_forward_tokens"] >= lm.stats["ll_real_tokens"] > 0
    assert_same_ll(got, hf_lm.loglikelihood(reqs, disable_tqdm=True))


def test_supports_only_sdpa_models_of_the_interface():
    from evals.random_model import build_random

    model, _, _ = build_random("tiny-phi", "float32", "cpu")
    assert supports(model)
    model.config._attn_implementation = "eager"
    assert not supports(model)
