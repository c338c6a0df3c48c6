"""Unpadded forward passes: the rows of a batch run as one packed sequence.

A log-likelihood batch holds rows of different lengths. Padded to the longest, every padding
token costs a full token's matrix products (about 4% of HellaSwag's tokens on the CPU).
Here the rows' tokens are concatenated into one sequence of batch size 1, so the linear layers,
norms and rotary embeddings see real tokens only; each attention layer gathers the rows back
into a padded [rows, heads, T, head_dim] block, runs the model's own SDPA attention under the
rows' mask, and scatters the result back. Only attention pays for the padding.

It works through transformers' AttentionInterface: while `packed(model)` is active the model's
attention implementation is PACKED, whose function needs the `phi2eval_pack` keyword (a Pack)
that the model forwards to every attention layer. Each layer counts its call, so a model that
does not route attention through the interface is detected (Pack.calls) instead of giving
wrong numbers.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

try:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
except ImportError:  # pragma: no cover - transformers without it: supports() says no
    sdpa_attention_forward = None

PACKED = "phi2eval_packed"
PACK_KW = "phi2eval_pack"


@dataclass
class Pack:
    """Where each row's tokens lie in the packed sequence.

    gather[b, t]: packed index of row b's token t (padding: 0, hidden by the mask);
    scatter[i]: b * T + t of packed token i; prefix: tokens of a shared KV-cache prefix that
    every row sees before its own (the cache holds it once, batch size 1); calls: attention
    layers that ran packed."""

    gather: torch.Tensor
    scatter: torch.Tensor
    gather_kv: torch.Tensor  # gather, flat, as indices into keys and values (after the prefix)
    prefix: int = 0
    calls: int = 0


def make_pack(lengths: list[int], prefix: int, device: torch.device) -> Pack:
    """Pack for rows of `lengths` tokens, concatenated in order."""
    B, T = len(lengths), max(lengths)
    gather = torch.zeros(B, T, dtype=torch.long)
    scatter = []
    start = 0
    for b, n in enumerate(lengths):
        gather[b, :n] = torch.arange(start, start + n)
        scatter.extend(range(b * T, b * T + n))
        start += n
    gather = gather.to(device)
    scatter_t = torch.tensor(scatter, dtype=torch.long, device=device)
    return Pack(gather, scatter_t, gather.view(-1) + prefix, prefix)


def _rows(x: torch.Tensor, pack: Pack) -> torch.Tensor:
    """[1, heads, prefix + N, d] -> [B, heads, prefix + T, d]: the prefix, then each row's tokens."""
    B, T = pack.gather.shape
    rows = x[0].transpose(0, 1)  # [prefix + N, heads, d]
    own = rows.index_select(0, pack.gather_kv).view(B, T, *rows.shape[1:]).transpose(1, 2)
    if not pack.prefix:
        return own
    pre = x[:, :, : pack.prefix].expand(B, -1, -1, -1)
    return torch.cat([pre, own], dim=2)


def packed_attention_forward(module, query, key, value, attention_mask, **kwargs):
    """AttentionInterface function: query [1, H, N, d] and key/value [1, kvH, prefix + N, d] of
    the packed sequence; attention_mask [B, 1, T, prefix + T] of the padded rows. Runs
    transformers' SDPA attention on the gathered rows; returns ([1, N, H, d], None)."""
    pack: Pack | None = kwargs.pop(PACK_KW, None)
    if pack is None:  # a call that did not come from FastLM: plain SDPA
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    B, T = pack.gather.shape
    q = query[0].transpose(0, 1).index_select(0, pack.gather.view(-1))  # [B * T, H, d]
    q = q.view(B, T, *q.shape[1:]).transpose(1, 2)
    out, _ = sdpa_attention_forward(module, q, _rows(key, pack), _rows(value, pack), attention_mask,
                                    **{**kwargs, "is_causal": False})
    pack.calls += 1
    return out.view(B * T, *out.shape[2:]).index_select(0, pack.scatter)[None], None


def _register() -> bool:
    try:
        from transformers import AttentionInterface
    except ImportError:  # pragma: no cover - transformers without the interface
        return False
    AttentionInterface.register(PACKED, packed_attention_forward)
    return sdpa_attention_forward is not None


_REGISTERED = _register()


def supports(model) -> bool:
    """Whether `model` can run packed: it routes attention through transformers'
    AttentionInterface and currently uses SDPA (whose semantics the packed function keeps)."""
    if not _REGISTERED or getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    can = getattr(model, "_can_set_attn_implementation", None)
    try:
        return bool(can()) if callable(can) else bool(getattr(model, "_supports_attention_backend", False))
    except Exception:  # noqa: BLE001 - a model that cannot say: not packed
        return False


@contextlib.contextmanager
def packed(model):
    """Within the block, the model's attention implementation is PACKED (then restored)."""
    cfg = model.config
    old = cfg._attn_implementation
    cfg._attn_implementation = PACKED
    try:
        yield
    finally:
        cfg._attn_implementation = old
