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
