"""Unpadded forward passes: the rows of a batch run as one packed sequence.

A log-likelihood batch holds rows of different lengths. Padded to the longest, every padding
token costs a full token's matrix products (about 4% of HellaSwag's tokens on the CPU).
Here the rows' tokens are concatenated into one sequence of batch size 1, so the linear layers,
norms and rotary embeddings see real tokens only; each attention layer gathers the rows back
into padded [rows, heads, T, head_dim] blocks, one per group of rows of similar length, runs
the model's own SDPA attention under each group's mask (on the CPU, small rows run
small_attention instead), and scatters the result back. Only attention pays for padding, and
only within a group, so a batch may hold rows of any length (fewer forward passes; FastLM does
this on CUDA only, as on the CPU it gained nothing).

It works through transformers' AttentionInterface: while `packed(model)` is active the model's
attention implementation is PACKED, whose function needs the `phi2eval_pack` keyword (a Pack)
that the model forwards to every attention layer. Each layer counts its call, so a model that
does not route attention through the interface is detected (Pack.calls) instead of giving
wrong numbers.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass

import torch

from evals.backends.device import to_device

try:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
except ImportError:  # pragma: no cover - transformers without it: supports() says no
    sdpa_attention_forward = None

PACKED = "phi2eval_packed"
PACK_KW = "phi2eval_pack"


@dataclass
class Group:
    """Rows that attention pads to one length T.

    gather[b, t]: packed index of the group's row b's token t (padding: 0, hidden by the mask);
    gather_kv: gather, flat, as indices into keys and values (after the prefix); mask: the
    rows' additive attention mask [rows, 1, T, prefix + T]."""

    gather: torch.Tensor
    gather_kv: torch.Tensor
    mask: torch.Tensor | None = None


@dataclass
class Pack:
    """Where each row's tokens lie in the packed sequence.

    groups: runs of rows of similar length, each padded to its longest inside attention;
    scatter[i]: where packed token i lies in the groups' padded outputs, flattened one after
    another (group offset + b * T + t); prefix: tokens of a shared KV-cache prefix that every
    row sees before its own (the cache holds it once, batch size 1); calls: attention layers
    that ran packed."""

    groups: list[Group]
    scatter: torch.Tensor
    prefix: int = 0
    calls: int = 0


def make_pack(lengths: list[int], prefix: int, device: torch.device, groups: list[list[int]] | None = None,
              non_blocking: bool = True) -> Pack:
    """Pack for rows of `lengths` tokens, concatenated in order; `groups`: runs of consecutive
    row indices padded together in attention (default: all rows, one group). Its indices go to
    `device` as device.to_device copies them (`non_blocking`)."""
    groups = groups if groups is not None else [list(range(len(lengths)))]
    starts = [0, *itertools.accumulate(lengths)]
    out, scatter, offset = [], [], 0
    for rows in groups:
        T = max(lengths[b] for b in rows)
        gather = torch.zeros(len(rows), T, dtype=torch.long)
        for j, b in enumerate(rows):
            gather[j, : lengths[b]] = torch.arange(starts[b], starts[b] + lengths[b])
            scatter.extend(range(offset + j * T, offset + j * T + lengths[b]))
        offset += len(rows) * T
        gather = to_device(gather, device, non_blocking)
        out.append(Group(gather, gather.view(-1) + prefix))
    order = [b for rows in groups for b in rows]
    assert order == list(range(len(lengths))), "groups must be consecutive runs of all rows, in order"
    return Pack(out, to_device(torch.tensor(scatter, dtype=torch.long), device, non_blocking), prefix)


def _rows(x: torch.Tensor, group: Group, prefix: int) -> torch.Tensor:
    """[1, heads, prefix + N, d] -> [B, heads, prefix + T, d]: the prefix, then each row's tokens."""
    B, T = group.gather.shape
    rows = x[0].transpose(0, 1)  # [prefix + N, heads, d]
    own = rows.index_select(0, group.gather_kv).view(B, T, *rows.shape[1:]).transpose(1, 2)
    if not prefix:
        return own
    pre = x[:, :, :prefix].expand(B, -1, -1, -1)
    return torch.cat([pre, own], dim=2)


# CPU: rows whose scores (heads x queries x keys) stay under this many entries (2 MiB of
# float32, about one core's L2 cache) run as two matrix products and a softmax instead of
# SDPA's flash kernel, which is slow on small tiles (HellaSwag's rows: 2x faster; at 9 heads,
# 300 x 300 the flash kernel is 2x faster)
SMALL_SCORES = 1 << 19
SCORES_CHUNK = 1 << 24  # entries of one score tensor (64 MiB of float32): rows run in chunks


def small_attention(query, key, value, mask, scaling: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scaling + mask) v for query [B, H, T, d], key/value [B, kvH, L, d]
    (H a multiple of kvH: grouped-query heads share their key/value head without copying it)
    and an additive mask [B, 1, T, L]; returns [B, T, H, d]. Rows run in chunks whose scores
    hold at most SCORES_CHUNK entries."""
    B, H, T, d = query.shape
    kvH, L = key.shape[1], key.shape[2]
    rep = H // kvH
    scale = scaling if scaling is not None else d ** -0.5
    out = query.new_empty(B, T, H, value.shape[-1])
    step = max(1, SCORES_CHUNK // (H * T * L))
    for b0 in range(0, B, step):
        b1 = min(B, b0 + step)
        q = query[b0:b1].reshape(b1 - b0, kvH, rep * T, d)  # heads of one kv head, stacked
        s = torch.matmul(q, key[b0:b1].transpose(-1, -2)).view(b1 - b0, H, T, L).mul_(scale)
        if mask is not None:
            s.add_(mask[b0:b1])
        p = torch.softmax(s, dim=-1).view(b1 - b0, kvH, rep * T, L)
        out[b0:b1] = torch.matmul(p, value[b0:b1]).view(b1 - b0, H, T, -1).transpose(1, 2)
    return out


def _use_small(query, key, attention_mask, kwargs) -> bool:
    """Whether small_attention computes what sdpa_attention_forward would: CPU, small rows, a
    float mask, none of the features it does not implement."""
    B, H, T, _ = query.shape
    return (query.device.type == "cpu" and H * T * key.shape[2] <= SMALL_SCORES and H % key.shape[1] == 0
            and (attention_mask is None or attention_mask.dtype == query.dtype)
            and not kwargs.get("dropout") and kwargs.get("softcap") is None
            and kwargs.get("position_bias") is None and kwargs.get("s_aux") is None)


def packed_attention_forward(module, query, key, value, attention_mask, **kwargs):
    """AttentionInterface function: query [1, H, N, d] and key/value [1, kvH, prefix + N, d] of
    the packed sequence. Each group of rows is gathered into a padded block and runs
    transformers' SDPA attention under the group's mask (on the CPU small rows run
    small_attention); `attention_mask` (what the model was given) is not used. Returns
    ([1, N, H, d], None)."""
    pack: Pack | None = kwargs.pop(PACK_KW, None)
    if pack is None:  # a call that did not come from FastLM: plain SDPA
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    queries = query[0].transpose(0, 1)  # [N, H, d]
    outs = []
    for g in pack.groups:
        B, T = g.gather.shape
        q = queries.index_select(0, g.gather.view(-1))  # [B * T, H, d]
        q = q.view(B, T, *q.shape[1:]).transpose(1, 2)
        k, v = _rows(key, g, pack.prefix), _rows(value, g, pack.prefix)
        if _use_small(q, k, g.mask, kwargs):
            out = small_attention(q, k, v, g.mask, kwargs.get("scaling"))
        else:
            out, _ = sdpa_attention_forward(module, q, k, v, g.mask, **{**kwargs, "is_causal": False})
        outs.append(out.reshape(B * T, *out.shape[2:]))
    pack.calls += 1
    out = outs[0] if len(outs) == 1 else torch.cat(outs)
    return out.index_select(0, pack.scatter)[None], None


def register(name: str, fn) -> bool:
    """Register `fn` as transformers attention implementation `name`; False where transformers
    lacks the AttentionInterface or its SDPA function (which these implementations call)."""
    try:
        from transformers import AttentionInterface
    except ImportError:  # pragma: no cover - transformers without the interface
        return False
    AttentionInterface.register(name, fn)
    return sdpa_attention_forward is not None


_REGISTERED = register(PACKED, packed_attention_forward)


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
def attention_implementation(model, name: str):
    """Within the block, the model's attention implementation is `name` (then restored)."""
    cfg = model.config
    old = cfg._attn_implementation
    cfg._attn_implementation = name
    try:
        yield
    finally:
        cfg._attn_implementation = old


def packed(model):
    """Within the block, the model's attention implementation is PACKED (then restored)."""
    return attention_implementation(model, PACKED)
