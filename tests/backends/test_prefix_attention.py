"""prefix_attention: attention over a shared prefix held once equals SDPA over the prefix
expanded to every row and concatenated with the rows' own keys."""

from __future__ import annotations

import pytest
import torch

from evals.backends import prefix_attention as pa


def _reference(query, key, value, pk, pv, valid):
    """SDPA over [prefix expanded to every row; own keys] under the same visibility."""
    B, H, q, d = query.shape
    kvH, L, S = key.shape[1], key.shape[2], pk.shape[2]
    rep = H // kvH
    k = torch.cat([pk.expand(B, -1, -1, -1), key], dim=2).repeat_interleave(rep, dim=1)
    v = torch.cat([pv.expand(B, -1, -1, -1), value], dim=2).repeat_interleave(rep, dim=1)
    causal = torch.arange(L)[None, :] <= torch.arange(L - q, L)[:, None]
    own = causal[None] & valid[:, None, :L]  # [B, q, L]
    allowed = torch.cat([torch.ones(B, q, S, dtype=torch.bool), own], dim=-1)[:, None]
    out = torch.nn.functional.scaled_dot_product_attention(query, k, v, attn_mask=allowed)
    return out.transpose(1, 2)


@pytest.mark.parametrize("H,kvH,q", [(4, 4, 1), (6, 2, 1), (6, 2, 5), (4, 1, 7)])
def test_equals_sdpa_over_expanded_prefix(H, kvH, q):
    torch.manual_seed(0)
    B, S, L, d = 3, 11, 9, 8
    query = torch.randn(B, H, q, d)
    key, value = torch.randn(B, kvH, L, d), torch.randn(B, kvH, L, d)
    pk, pv = torch.randn(1, kvH, S, d), torch.randn(1, kvH, S, d)
    valid = torch.ones(B, L, dtype=torch.bool)
    valid[1, :2] = False  # left padding
    valid[2, :4] = False
    got = pa.prefix_attention(query, key, value, pk, pv, valid)
    ref = _reference(query, key, value, pk, pv, valid)
    assert got.shape == (B, q, H, d)
    assert torch.allclose(got, ref, atol=1e-5)


def test_rows_in_chunks_give_the_same(monkeypatch):
    torch.manual_seed(1)
    B, H, kvH, q, S, L, d = 5, 4, 2, 3, 7, 6, 4
    args = (torch.randn(B, H, q, d), torch.randn(B, kvH, L, d), torch.randn(B, kvH, L, d),
            torch.randn(1, kvH, S, d), torch.randn(1, kvH, S, d), torch.ones(B, L, dtype=torch.bool))
    whole = pa.prefix_attention(*args)
    monkeypatch.setitem(pa.SCORES_CHUNK, "cpu", H * q * (S + L) * 2)  # two rows per chunk
    assert torch.allclose(pa.prefix_attention(*args), whole, atol=1e-6)


def test_forward_needs_its_keyword_and_refuses_windows():
    class Module:
        layer_idx = 0

    q, k = torch.randn(1, 2, 1, 4), torch.randn(1, 2, 3, 4)
    with pytest.raises(RuntimeError, match=pa.PREFIX_KW):
        pa.prefix_attention_forward(Module(), q, k, k, None)
    pre = pa.Prefix([torch.randn(1, 2, 5, 4)], [torch.randn(1, 2, 5, 4)], torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(NotImplementedError, match="sliding"):
        pa.prefix_attention_forward(Module(), q, k, k, None, sliding_window=4, **{pa.PREFIX_KW: pre})
    out, _ = pa.prefix_attention_forward(Module(), q, k, k, None, sliding_window=4096, **{pa.PREFIX_KW: pre})
    assert out.shape == (1, 1, 2, 4) and pre.calls == 1


@pytest.mark.parametrize("H,kvH", [(4, 4), (6, 2)])
def test_rows_of_several_prefixes_each_read_their_own(H, kvH):
    """multi_prefix_attention (a batch mixing clusters) gives each row what prefix_attention
    gives it under its own prefix alone."""
    torch.manual_seed(2)
    B, L, d = 5, 6, 8
    query = torch.randn(B, H, 1, d)
    key, value = torch.randn(B, kvH, L, d), torch.randn(B, kvH, L, d)
    valid = torch.ones(B, L, dtype=torch.bool)
    valid[3, :2] = False
    prefixes = [(torch.randn(1, kvH, S, d), torch.randn(1, kvH, S, d)) for S in (7, 12)]
    row_segment = [1, 0, 1, 1, 0]
    pre = pa.MultiPrefix([pa.Prefix([pk], [pv]) for pk, pv in prefixes], row_segment)
    pre.set_valid(valid)
    segments = [(idx, p.keys[0], p.values[0]) for idx, p in pre.rows_of]
    got = pa.multi_prefix_attention(query, key, value, segments, None, pre.own_mask(1, L, H // kvH))
    for b, sgm in enumerate(row_segment):
        pk, pv = prefixes[sgm]
        ref = pa.prefix_attention(query[b:b + 1], key[b:b + 1], value[b:b + 1], pk, pv, valid[b:b + 1])
        assert torch.allclose(got[b:b + 1], ref, atol=1e-5)
    pre.keep_rows([4, 1, 2])  # rows leave the batch: their segments follow
    assert pre.row_segment == [0, 0, 1] and [ix.tolist() for ix, _ in pre.rows_of] == [[0, 1], [2]]


def _decode_inputs(H, kvH, seed=3):
    torch.manual_seed(seed)
    B, S, L, d = 4, 13, 9, 16
    query = torch.randn(B, 1, H, d).transpose(1, 2)  # as the model passes it: [B, H, 1, d], strided
    key, value = torch.randn(B, kvH, L, d), torch.randn(B, kvH, L, d)
    pre = pa.Prefix([torch.randn(1, kvH, S, d)], [torch.randn(1, kvH, S, d)])
    valid = torch.ones(B, L, dtype=torch.bool)
    valid[1, :3] = False  # left padding
    valid[3, :7] = False
    pre.set_valid(valid)
    return query, key, value, pre, d ** -0.5


@pytest.mark.parametrize("H,kvH", [(4, 4), (6, 2), (4, 1)])
def test_lse_merge_equals_prefix_attention(H, kvH):
    """Two fused kernels (prefix, own keys) merged by their log-sum-exps give the softmax over both."""
    query, key, value, pre, scale = _decode_inputs(H, kvH)
    got = pa.lse_prefix_attention(query, key, value, pre.keys[0], pre.values[0], pre.own_bias(key.shape[2], query.dtype), scale)
    ref = pa.prefix_attention(query, key, value, pre.keys[0], pre.values[0], pre.valid, scale)
    assert got.shape == ref.shape == (4, 1, H, 16)
    assert torch.allclose(got, ref, atol=1e-5)
    assert _reference(query, key, value, pre.keys[0], pre.values[0], pre.valid).sub(got).abs().max() < 1e-5


def test_own_bias_rows_are_aligned():
    query, key, *_ , pre, _ = _decode_inputs(4, 4)
    bias = pre.own_bias(key.shape[2], torch.float32)
    assert bias.shape == (4, 1, 1, 9) and bias.stride(0) % 16 == 0
    assert torch.isinf(bias[3, 0, 0, :7]).all() and (bias[3, 0, 0, 7:] == 0).all()


class _Layer:
    layer_idx = 0


def _forward(query, key, value, pre, scale):
    return pa.prefix_attention_forward(_Layer(), query, key, value, None, scaling=scale, **{pa.PREFIX_KW: pre})[0]


def test_decoding_checks_the_fused_path_once_then_takes_it(monkeypatch):
    monkeypatch.setattr(pa, "LSE_PATH", {})
    calls = []
    real = pa.lse_prefix_attention
    monkeypatch.setattr(pa, "lse_prefix_attention", lambda *a: calls.append(1) or real(*a))
    query, key, value, pre, scale = _decode_inputs(6, 2)
    ref = pa.prefix_attention(query, key, value, pre.keys[0], pre.values[0], pre.valid, scale)
    for _ in range(3):
        assert torch.allclose(_forward(query, key, value, pre, scale), ref, atol=1e-5)
    assert pa.LSE_PATH == {("cpu", torch.float32): True} and len(calls) == 3


@pytest.mark.parametrize("broken", ["missing", "wrong"])
def test_a_broken_fused_kernel_falls_back_to_matrix_products(monkeypatch, caplog, broken):
    monkeypatch.setattr(pa, "LSE_PATH", {})
    real = pa._attention_lse

    def kernel(q, k, v, bias, scale):
        if broken == "missing":
            raise NotImplementedError("no such kernel here")
        out, lse = real(q, k, v, bias, scale)
        return out, lse + (1.0 if bias is None else 0.0)  # the prefix's log-sum-exp wrong: the merge weighs it wrongly

    monkeypatch.setattr(pa, "_attention_lse", kernel)
    query, key, value, pre, scale = _decode_inputs(4, 4)
    ref = pa.prefix_attention(query, key, value, pre.keys[0], pre.values[0], pre.valid, scale)
    with caplog.at_level("WARNING"):
        for _ in range(2):
            assert torch.allclose(_forward(query, key, value, pre, scale), ref, atol=1e-6)
    assert pa.LSE_PATH == {("cpu", torch.float32): False}
    assert ("unavailable" if broken == "missing" else "disagrees") in caplog.text
