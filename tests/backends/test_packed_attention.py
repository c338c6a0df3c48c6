"""Unpadded (packed) forward passes give the padded path's and HFLM's log-likelihoods."""

from __future__ import annotations

import logging

import torch

from evals.backends.fast import FastLM
from evals.backends.packed_attention import PACKED, make_pack, packed, supports
from tests.backends.test_fast import _assert_same_ll, _inst, _ll_requests


def test_make_pack_indices():
    p = make_pack([3, 1, 2], prefix=5, device=torch.device("cpu"))
    assert p.gather.tolist() == [[0, 1, 2], [3, 0, 0], [4, 5, 0]]
    assert p.scatter.tolist() == [0, 1, 2, 3, 6, 7]  # b * T + t of each packed token
    assert p.gather_kv.tolist() == [5, 6, 7, 8, 5, 5, 9, 10, 5]  # after the 5-token prefix


def test_packed_context_sets_and_restores_implementation(smol):
    model, _ = smol
    old = model.config._attn_implementation
    with packed(model):
        assert model.config._attn_implementation == PACKED
    assert model.config._attn_implementation == old


def test_packed_rows_equal_padded_rows_and_hf(smol, hf_lm):
    """Same requests (shared contexts, a few-shot cluster with a KV-cache prefix, WinoGrande
    pairs) through packed and padded rows: equal to 1e-5, and both HFLM's to 1e-4; the
    packed run forwards no padding."""
    model, tok = smol
    reqs = _ll_requests()
    runs = {}
    for flag in (True, False):
        lm = FastLM(model, tok, max_length=2048, token_budget=512)
        lm._packed = lm._packed and flag
        assert lm._packed is flag  # the embedded model supports it
        runs[flag] = (lm.loglikelihood(reqs, disable_tqdm=True), dict(lm.stats))
    (packed_ll, ps), (padded_ll, qs) = runs[True], runs[False]
    assert ps["ll_shared_prefix_tokens"] > 0  # the few-shot cluster ran through the prefix cache
    assert ps["ll_forward_tokens"] == ps["ll_real_tokens"] < qs["ll_forward_tokens"]
    for (a, ga), (b, gb) in zip(packed_ll, padded_ll):
        assert abs(a - b) < 1e-5 and ga == gb
    _assert_same_ll(packed_ll, hf_lm.loglikelihood(reqs, disable_tqdm=True))


def test_attention_outside_the_interface_falls_back_to_padded(smol, hf_lm, caplog):
    """If fewer attention layers than the model has ran packed (a model whose attention
    ignores transformers' AttentionInterface), the batch is redone padded, with a warning,
    and later batches stay padded."""
    model, tok = smol
    lm = FastLM(model, tok, max_length=2048)
    lm._n_layers += 1  # one layer "missing": the count check must catch it
    reqs = [_inst("loglikelihood", (c, x)) for c in ("The capital of France is", "A cat sat on the")
            for x in (" Paris", " mat")]
    with caplog.at_level(logging.WARNING):
        got = lm.loglikelihood(reqs, disable_tqdm=True)
    assert lm._packed is False and "runs padded rows from now on" in caplog.text
    assert lm.stats["ll_forward_tokens"] >= lm.stats["ll_real_tokens"] > 0
    _assert_same_ll(got, hf_lm.loglikelihood(reqs, disable_tqdm=True))


def test_supports_only_sdpa_models_of_the_interface():
    from evals.random_model import build_random

    model, _, _ = build_random("tiny-phi", "float32", "cpu")
    assert supports(model)
    model.config._attn_implementation = "eager"
    assert not supports(model)
