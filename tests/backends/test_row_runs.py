"""Decoding attention by runs of rows (evals/backends/row_runs.py): the cut is the cheapest one,
each path's attention equals the whole padded width's, and greedy decoding gives the same texts
with fewer generation batches."""

from __future__ import annotations

import itertools
import random
import types

import pytest
import torch

from evals.backends import row_runs
from evals.backends.fast import FastLM
from evals.backends.packed_attention import sdpa_attention_forward
from evals.backends.prefix_attention import lse_prefix_attention, multi_prefix_attention
from evals.backends.row_runs import RowRuns, cut_runs, over_runs, row_runs_forward, starts_of
from tests.backends.prompts import GEN_PROMPTS, MIXED_CLUSTERS, MIXED_PROMPTS, inst


def brute_force(starts: list[int], cost: int) -> int:
    """The least cost over every cut of the rows into runs (keys read from column 0 subtracted)."""
    n, best = len(starts), None
    for k in range(n):
        for ends in itertools.combinations(range(1, n), k):
            bounds = [0, *ends, n]
            c = sum(cost - (j - i) * min(starts[i:j]) for i, j in zip(bounds, bounds[1:]))
            best = c if best is None else min(best, c)
    return best


def run_cost(runs, cost: int) -> int:
    return sum(cost - (b1 - b0) * s for b0, b1, s in runs)


def test_cut_runs_is_the_cheapest_cut():
    rnd = random.Random(0)
    for _ in range(200):
        starts = [rnd.choice([0, 3, 40, 41, 300, 900]) for _ in range(rnd.randint(1, 7))]
        cost = rnd.choice([0, 5, 100, 1000])
        runs = cut_runs(starts, cost)
        assert [b for r in runs for b in range(r[0], r[1])] == list(range(len(starts)))  # consecutive, all rows
        assert all(s == min(starts[b0:b1]) for b0, b1, s in runs)
        assert run_cost(runs, cost) == brute_force(starts, cost)


def test_cut_runs_examples():
    assert cut_runs([0, 0, 100, 100], 10) == [(0, 2, 0), (2, 4, 100)]
    assert cut_runs([0, 0, 100, 100], 1000) == [(0, 4, 0)]  # a run costs more than the padding it saves
    assert cut_runs([0, 100, 0, 100], 10) == [(0, 1, 0), (1, 2, 100), (2, 3, 0), (3, 4, 100)]  # order kept


def test_starts_of_left_padding_only():
    valid = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1], [0, 1, 1, 1]], dtype=torch.bool)
    assert starts_of(valid) == [0, 2, 1]
    # a prefix copied into the rows' cache, then left padding: not one run of valid keys
    assert starts_of(torch.tensor([[1, 0, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)) is None
    assert starts_of(torch.tensor([[0, 1, 1, 0]], dtype=torch.bool)) is None


def left_padded(starts: list[int], L: int) -> torch.Tensor:
    return torch.arange(L)[None, :] >= torch.tensor(starts)[:, None]


def test_runs_attention_equals_sdpa_over_the_padded_rows():
    torch.manual_seed(0)
    starts, L, H, kvH, d = [0, 0, 30, 31, 70, 5], 80, 6, 2, 16
    q = torch.randn(len(starts), H, 1, d)
    k, v = torch.randn(len(starts), kvH, L, d), torch.randn(len(starts), kvH, L, d)
    module = types.SimpleNamespace(num_key_value_groups=H // kvH, is_causal=True, training=False)
    valid = left_padded(starts, L)
    ref, _ = sdpa_attention_forward(module, q, k, v, valid[:, None, None, :], is_causal=False)
    rr = RowRuns(cost=1)
    rr.set_valid(valid)
    assert rr.runs == [(0, 2, 0), (2, 3, 30), (3, 4, 31), (4, 5, 70), (5, 6, 5)]
    got, _ = row_runs_forward(module, q, k, v, valid[:, None, None, :], **{row_runs.RUNS_KW: rr})
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)
    assert rr.calls == 1


def test_prefix_attentions_by_runs_equal_the_whole_width():
    torch.manual_seed(1)
    starts, L, S, H, kvH, d = [0, 12, 12, 40, 3], 48, 20, 4, 2, 8
    B = len(starts)
    q = torch.randn(B, H, 1, d)
    k, v = torch.randn(B, kvH, L, d), torch.randn(B, kvH, L, d)
    pk, pv = torch.randn(1, kvH, S, d), torch.randn(1, kvH, S, d)
    valid = left_padded(starts, L)
    runs = cut_runs(starts, 0)
    assert len(runs) > 2
    bias = torch.zeros(B, 1, 1, L).masked_fill_(~valid[:, None, None, :], float("-inf"))
    whole = lse_prefix_attention(q, k, v, pk, pv, bias, d ** -0.5)
    torch.testing.assert_close(lse_prefix_attention(q, k, v, pk, pv, bias, d ** -0.5, runs), whole,
                               atol=1e-6, rtol=1e-5)
    # two clusters' prefixes, rows of either in any order
    pk2, pv2 = torch.randn(1, kvH, S + 5, d), torch.randn(1, kvH, S + 5, d)
    segments = [(torch.tensor([0, 2, 3]), pk, pv), (torch.tensor([1, 4]), pk2, pv2)]
    own_mask = bias.repeat(1, 1, H // kvH, 1)
    whole = multi_prefix_attention(q, k, v, segments, None, own_mask)
    torch.testing.assert_close(multi_prefix_attention(q, k, v, segments, None, own_mask, runs), whole,
                               atol=1e-6, rtol=1e-5)


def test_over_runs_concatenates_tuples_by_row():
    x = torch.arange(12.0).view(4, 1, 3, 1)
    runs = [(0, 1, 0), (1, 4, 2)]
    out = over_runs(lambda q, k, v, b: (q * 1, k.sum(2)), runs, torch.arange(4.0), x, x, None)
    assert out[0].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert out[1].view(-1).tolist() == [3.0, 5.0, 8.0, 11.0]


@pytest.mark.parametrize("case", ["pool", "one prefix", "mixed clusters"])
def test_decoding_by_runs_gives_the_padded_texts(smol, monkeypatch, case):
    """Rows of very different lengths: each run of rows reads its own columns (a run per row
    here, RUN_COST 0), with no prefix in place, under one prefix, and with rows of two clusters;
    the texts are those of the whole padded width."""
    model, tok = smol
    monkeypatch.setattr(row_runs, "RUN_COST", 0)
    cuts = []
    monkeypatch.setattr(row_runs, "cut_runs", lambda *a, _real=row_runs.cut_runs: cuts.append(_real(*a)) or cuts[-1])
    prompts = {"pool": GEN_PROMPTS, "one prefix": MIXED_PROMPTS, "mixed clusters": MIXED_CLUSTERS}[case]
    enc = [tok(p)["input_ids"] for p in prompts]
    shared: int | list = 0
    if case == "mixed clusters":
        from evals.backends.planning import share_clusters

        shared = list(share_clusters(enc)[1])
    texts, stats = [], []
    for on in (True, False):
        lm = type("RunsLM", (FastLM,), {"decode_runs": on})(model, tok, max_length=2048)
        if case == "pool":
            lm._shared_decode = False
        with torch.inference_mode():
            texts.append(lm._greedy_batch(enc, ["\n\n", "Q:"], 12, shared))
        stats.append(dict(lm.stats))
    assert texts[0] == texts[1]
    assert max(map(len, cuts)) > 1 and any(s > 0 for c in cuts for _, _, s in c)  # columns left out
    assert stats[0]["gen_attention_runs"] > 0 and stats[1].get("gen_attention_runs", 0) == 0
    if case != "pool":
        assert stats[0]["gen_prefix_in_place_batches"] == 1


def test_generation_batches_take_rows_of_any_length_with_runs(smol, hf_lm, monkeypatch):
    """Without runs, a batch takes left padding only while its reads cost less than another
    batch's steps (gen_pad_waste, a tiny allowance here); with runs, rows of any length share one
    batch, with HFLM's texts."""
    from evals.backends import greedy

    model, tok = smol
    monkeypatch.setattr(greedy, "gen_pad_waste", lambda *a: 1)
    reqs = [inst("generate_until", (p, {"until": ["\n\n", "Q:"], "max_gen_toks": 10}), i)
            for i, p in enumerate(GEN_PROMPTS[:4] + MIXED_PROMPTS[1:2])]
    ref = hf_lm.generate_until(reqs, disable_tqdm=True)
    batches = {}
    for on in (True, False):
        lm = type("RunsLM", (FastLM,), {"decode_runs": on})(model, tok, max_length=2048)
        calls = []
        real = lm._greedy_batch
        monkeypatch.setattr(lm, "_greedy_batch", lambda *a, _real=real, _calls=calls: _calls.append(1) or _real(*a))
        assert lm.generate_until(reqs, disable_tqdm=True) == ref
        batches[on] = len(calls)
    assert batches[True] == 1 < batches[False]


def test_decoding_goes_on_without_runs_if_attention_bypasses_them(smol, monkeypatch, caplog):
    """A model whose attention does not go through the runs still gets its mask (as for SDPA):
    the same texts, and it decodes over the whole padded width from then on, saying so."""
    import contextlib

    from evals.backends import greedy

    model, tok = smol
    enc = [tok(p)["input_ids"] for p in GEN_PROMPTS[:3]]
    ref = FastLM(model, tok, max_length=2048)._greedy_batch(enc, ["\n\n"], 6)
    monkeypatch.setattr(greedy, "row_runs", lambda m: contextlib.nullcontext())
    lm = type("RunsLM", (FastLM,), {"decode_runs": True})(model, tok, max_length=2048)
    lm._shared_decode = False
    with torch.inference_mode(), caplog.at_level("WARNING"):
        assert lm._greedy_batch(enc, ["\n\n"], 6) == ref
    assert not lm._row_runs and "whole padded width" in caplog.text
