"""Decoding under a shared few-shot prefix whose KV cache is held once, not once per row.

Greedy generation batches prompts that share a few-shot prefix (GSM8K's 8 examples, a BBH
task's 3, MBPP's 3). The plain way expands the prefix's KV cache to every row of the batch:
memory grows by rows x prefix tokens, and at every decoding step every row reads its own copy
of the prefix. Here the rows' cache holds only their own tokens; the prefix's keys and values
stay batch size 1 (one per layer), and each attention layer scores all rows' queries against
them in one matrix product per key head, so a step reads the prefix once per batch.

Exact attention, not an approximation: at a decoding step the scores against the prefix and
against the row's own keys are concatenated before one softmax (float32), as if the keys had
been concatenated. A query sees the whole prefix, its row's own real (not left padding) keys
up to itself. The prefill of the prompts' own tokens (many queries per row) runs the model's
SDPA over the prefix expanded for one layer at a time, which the next layer's expansion reuses
the memory of; only the decoding steps, which read the cache again and again, read it once.

A decoding step's attention (one query per row) runs as two fused attention kernels that also
return each query's log-sum-exp (LSE): all rows' queries against the prefix, and each row's
query against its own keys; the two results are merged by their LSEs (lse_prefix_attention),
which is the same softmax over both parts. That is fewer operations per layer than the matrix
products and softmax of prefix_attention (a GPU step is bound by launching operations) and
faster on the CPU. Those kernels are PyTorch's own (its SDPA's flash kernel on the CPU, flash and
memory-efficient kernels on CUDA, called directly, since SDPA does not return the LSE), so the
first call on each device and dtype is checked against prefix_attention and the path is turned
off there, with a warning, if they disagree or the kernels are missing (lse_ok).

A batch may also mix several clusters (MultiPrefix, on the CPU): each row's queries then see
only its own cluster's prefix; the scores against the rows' own keys are taken for all rows
at once and those against each prefix for its rows, merged under one softmax per row
(multi_prefix_attention).

It works through transformers' AttentionInterface, like packed_attention.py: while
`shared_prefix(model)` is active the model's attention implementation is SHARED, whose
function needs the `phi2eval_prefix` keyword (a Prefix) that the model forwards to every
attention layer; each layer counts its call (Prefix.calls), so a model whose attention
bypasses the interface is detected.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from evals.backends.packed_attention import attention_implementation, register, sdpa_attention_forward
from evals.backends.packed_attention import supports as routes_attention
from evals.backends.row_runs import RowRuns, over_runs
from evals.errors import first_line

SHARED = "phi2eval_shared_prefix"
PREFIX_KW = "phi2eval_prefix"
# entries of one float32 score tensor (rows run in chunks of at most this many)
SCORES_CHUNK = {"cpu": 1 << 24, "cuda": 1 << 27}
# decoding steps through the LSE kernels (lse_prefix_attention); per (device type, dtype): None
# until the first call has been checked against prefix_attention, then whether they agreed
LSE_PATH: dict = {}
LSE_TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 3e-2}

log = logging.getLogger(__name__)


@dataclass
class Prefix:
    """The shared prefix's keys and values per layer ([1, kv heads, S, d] each) and the
    rows' own-key mask `valid` [rows, own keys] (False: left padding); calls: attention
    layers that ran here."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    valid: torch.Tensor | None = None
    calls: int = 0
    row_runs: RowRuns | None = None  # decoding steps: own keys read by runs of rows (row_runs.py)
    _masks: dict = field(default_factory=dict, repr=False)  # masks built from `valid`, per shape
    _layers: list = field(default_factory=list, repr=False)  # per layer (keys transposed, values)

    def set_valid(self, valid: torch.Tensor) -> None:
        """New own-key mask (each decoding step); the masks built from the old one are dropped."""
        self.valid = valid
        self._masks.clear()
        if self.row_runs is not None:
            self.row_runs.set_valid(valid)

    def own_mask(self, q: int, L: int, rep: int, S: int = 0) -> torch.Tensor:
        """Additive float32 mask [B, 1, rep * q, S + L]: 0 over S prefix keys (all visible),
        then over the rows' own keys (see _own_visible); built once per forward pass and shared
        by its layers."""
        key = (q, L, rep, S)
        if key not in self._masks:
            hidden = ~_own_visible(self.valid, q, L).repeat(1, rep, 1)[:, None]
            mask = torch.zeros(hidden.shape[:-1] + (S + L,), dtype=torch.float32, device=hidden.device)
            mask[..., S:].masked_fill_(hidden, float("-inf"))
            self._masks[key] = mask
        return self._masks[key]

    def prefill_mask(self, q: int, L: int) -> torch.Tensor:
        """Boolean mask [B, 1, q, S + L] over the prefix (all visible) and the rows' own keys, for
        SDPA over the prefix expanded (prefill), built once per forward pass."""
        key = ("prefill", q, L)
        if key not in self._masks:
            S = self.keys[0].shape[2]
            mask = torch.ones(self.valid.shape[0], 1, q, S + L, dtype=torch.bool, device=self.valid.device)
            mask[:, 0, :, S:] = _own_visible(self.valid, q, L)
            self._masks[key] = mask
        return self._masks[key]


    def own_bias(self, L: int, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask [B, 1, 1, L] in `dtype` over the rows' own keys for a decoding step's
        one query per row (its valid keys), in a buffer whose rows are 16-element aligned, as
        the memory-efficient kernel wants; built once per step and shared by the layers."""
        key = ("bias", L, dtype)
        if key not in self._masks:
            width = -(-L // 16) * 16
            bias = torch.zeros(self.valid.shape[0], 1, 1, width, dtype=dtype, device=self.valid.device)[..., :L]
            self._masks[key] = bias.masked_fill_(~self.valid[:, None, None, :L], float("-inf"))
        return self._masks[key]

    def prefix_len(self) -> int:
        """Tokens of the prefix (the longest one, for MultiPrefix)."""
        return self.keys[0].shape[2]

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer i's prefix keys, transposed, and values as prefix_attention multiplies them
        ([kvH, d, S], [kvH, S, dv]; views, made once per batch, not once per step)."""
        if not self._layers:
            self._layers = [(k[0].transpose(-1, -2), v[0]) for k, v in zip(self.keys, self.values)]
        return self._layers[i]

    def keep_rows(self, order: list[int]) -> None:
        """The batch now holds rows `order` of the old one (compact_order); nothing to do for
        one prefix shared by all rows."""


class MultiPrefix(Prefix):
    """Several clusters' prefixes in one decoding batch (mixed clusters): `segments` (one
    Prefix each, holding its keys and values) and each row's segment, `row_segment`; a row's
    queries see only its own segment's prefix (multi_prefix_attention). Decoding steps only:
    the rows' own tokens are prefilled per cluster, under that cluster's Prefix."""

    def __init__(self, segments: list[Prefix], row_segment: list[int]):
        super().__init__([], [])
        self.segments = segments
        self._set_rows(row_segment)

    def prefix_len(self) -> int:
        return max(p.prefix_len() for p in self.segments)

    def keep_rows(self, order: list[int]) -> None:
        """Rows `order` of the batch remain (row i of the batch is old row order[i])."""
        self._set_rows([self.row_segment[r] for r in order])

    def _set_rows(self, rows: list[int]) -> None:
        """Each row's segment, and per segment its rows as an index tensor (rows_of)."""
        self.row_segment = rows
        dev = self.segments[0].keys[0].device
        by_seg: dict[int, list[int]] = {}
        for i, sgm in enumerate(rows):
            by_seg.setdefault(sgm, []).append(i)
        self.rows_of = [(torch.tensor(ix, device=dev), self.segments[sgm]) for sgm, ix in sorted(by_seg.items())]


def cache_kv(cache) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-layer keys and values of a KV cache (transformers' per-layer caches, or the older
    key_cache / value_cache lists)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return [layer.keys for layer in layers], [layer.values for layer in layers]
    return list(cache.key_cache), list(cache.value_cache)


def _own_visible(valid: torch.Tensor, q: int, L: int) -> torch.Tensor:
    """[B, q, L]: query i (own key L - q + i) sees own key j <= itself that is not padding."""
    dev = valid.device
    causal = torch.arange(L, device=dev)[None, :] <= torch.arange(L - q, L, device=dev)[:, None]
    return causal[None] & valid[:, None, :L]


def prefix_attention(query, key, value, prefix_k, prefix_v, valid, scaling: float | None = None,
                     own_mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax([q Kp^T, q K^T] * scaling + mask) [Vp; V] for query [B, H, q, d], the rows' own
    key/value [B, kvH, L, d], the shared prefix's [1, kvH, S, d] and `valid` [B, >= L] (own
    keys that are not padding); a query sees the whole prefix and its row's valid own keys up
    to its own position (the last q of L). H a multiple of kvH (grouped-query heads share
    their key head). `own_mask`: Prefix.own_mask(q, L, rep, S), if already built. Returns
    [B, q, H, d]."""
    B, H, q, d = query.shape
    kvH, L, S = key.shape[1], key.shape[2], prefix_k.shape[2]
    rep = H // kvH
    scale = scaling if scaling is not None else d ** -0.5
    if own_mask is None:
        own_mask = Prefix([], [], valid).own_mask(q, L, rep, S)  # [B, 1, rep * q, S + L]
    return _prefix_attention(query, key, value, prefix_k[0].transpose(-1, -2), prefix_v[0], own_mask, scale)


def _prefix_attention(query, key, value, kpt, vp, mask, scale: float) -> torch.Tensor:
    """prefix_attention with the prefix as Prefix.layer gives it and the whole mask built; rows
    run in chunks of at most SCORES_CHUNK score entries."""
    B, H, q, _ = query.shape
    S, L = kpt.shape[-1], key.shape[2]
    step = max(1, SCORES_CHUNK.get(query.device.type, 1 << 24) // (H * q * (S + L)))
    if step >= B:
        return _prefix_rows(query, key, value, kpt, vp, mask, scale)
    out = query.new_empty(B, q, H, value.shape[-1])
    for b0 in range(0, B, step):
        b1 = min(B, b0 + step)
        out[b0:b1] = _prefix_rows(query[b0:b1], key[b0:b1], value[b0:b1], kpt, vp, mask[b0:b1], scale)
    return out


def _prefix_rows(query, key, value, kpt, vp, mask, scale: float) -> torch.Tensor:
    """prefix_attention for rows that fit one score tensor, in few operations (a decoding step
    is mostly kernel launches on a GPU): the scores are laid out key head first,
    [kvH, rows, rep * q, S + L], so the prefix's part of the probabilities is already the
    matrix the product with the prefix's values takes, and only the rows' own part is copied."""
    nb, H, q, d = query.shape
    kvH, S = kpt.shape[0], kpt.shape[-1]
    rq = (H // kvH) * q
    qg = query.reshape(nb, kvH, rq, d)  # heads of one key head, stacked
    # every row's queries against the one copy of the prefix, per key head
    s_pre = torch.matmul(qg.transpose(0, 1).reshape(kvH, nb * rq, d), kpt).view(kvH, nb, rq, S)
    s_own = torch.matmul(qg, key.transpose(-1, -2)).transpose(0, 1)  # [kvH, nb, rq, L]
    # scaled and masked in float32 in one operation, one softmax over prefix and own keys
    s = torch.add(mask.transpose(0, 1), torch.cat([s_pre, s_own], dim=-1), alpha=scale)
    p = torch.softmax(s, dim=-1).to(value.dtype)
    o = torch.matmul(p[..., :S].reshape(kvH, nb * rq, S), vp).view(kvH, nb, rq, -1).transpose(0, 1)
    o = o + torch.matmul(p[..., S:].transpose(0, 1), value)  # [nb, kvH, rq, dv]
    return o.reshape(nb, H, q, -1).transpose(1, 2)


def _attention_lse(query, key, value, bias, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(output [N, h, m, dv], log-sum-exp of the scaled, biased scores [N, h, m], float32) of
    attention for query [N, h, m, d] over key/value [N, h, n, d], `bias` an additive mask
    broadcast to [N, h, m, n] or None, from PyTorch's fused kernels (NotImplementedError where
    this device has none)."""
    if query.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, 0.0, False, attn_mask=bias, scale=scale)
        return out, lse
    if query.device.type == "cuda":
        if bias is None:
            res = torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, 0.0, False, False, scale=scale)
        else:
            res = torch.ops.aten._scaled_dot_product_efficient_attention(
                query, key, value, bias.expand(query.shape[0], query.shape[1], query.shape[2], -1), True, 0.0,
                False, scale=scale)
        return res[0], res[1][..., :query.shape[2]]
    raise NotImplementedError(f"no fused attention kernel with log-sum-exp on {query.device.type}")


def lse_prefix_attention(query, key, value, prefix_k, prefix_v, bias, scale: float,
                         runs: list | None = None) -> torch.Tensor:
    """prefix_attention for one query per row (a decoding step) from two fused kernels: every
    row's queries against the prefix's one copy ([1, kvH, S, d]: the rows' queries of one key
    head stacked as one sequence) and each row's against its own keys (`bias`: Prefix.own_bias;
    `runs`: by runs of rows from their first valid key, row_runs.over_runs), merged by their
    log-sum-exps: o = o_own + sigmoid(lse_pre - lse_own) (o_pre - o_own), the softmax over both
    parts (in float32). Returns [B, 1, H, dv]."""
    B, H, _, d = query.shape
    kvH = key.shape[1]
    rq = H // kvH
    qg = query.reshape(B, kvH, rq, d)  # grouped-query heads of one key head as its queries
    o_pre, lse_pre = _attention_lse(qg.transpose(0, 1).reshape(1, kvH, B * rq, d), prefix_k, prefix_v, None, scale)
    own = lambda q, k, v, b: _attention_lse(q, k, v, b, scale)  # noqa: E731
    # [B, kvH, rq, dv], [B, kvH, rq]
    o_own, lse_own = own(qg, key, value, bias) if runs is None else over_runs(own, runs, qg, key, value, bias)
    w = torch.sigmoid(lse_pre.view(kvH, B, rq).transpose(0, 1) - lse_own).unsqueeze(-1)
    o_pre = o_pre.view(kvH, B, rq, -1).transpose(0, 1)
    if o_own.dtype == torch.float32:
        out = torch.lerp(o_own, o_pre, w)
    else:
        out = torch.lerp(o_own.float(), o_pre.float(), w).to(o_own.dtype)
    return out.reshape(B, H, 1, -1).transpose(1, 2)


def _decode_attention(query, key, value, pre: "Prefix", i: int, scale: float) -> torch.Tensor:
    """A decoding step's attention in layer i under a single prefix: lse_prefix_attention where
    it has been checked on this device and dtype (LSE_PATH; the first call is compared with
    prefix_attention on its own inputs), else prefix_attention."""
    state = (query.device.type, query.dtype)
    L, S, rep = key.shape[2], pre.keys[i].shape[2], query.shape[1] // key.shape[1]
    out = None
    if LSE_PATH.get(state) is not False:
        try:
            out = lse_prefix_attention(query, key, value, pre.keys[i], pre.values[i], pre.own_bias(L, query.dtype), scale,
                                       pre.row_runs.runs if pre.row_runs is not None else None)
        except torch.cuda.OutOfMemoryError:
            raise
        except (NotImplementedError, RuntimeError) as exc:
            LSE_PATH[state] = False
            log.warning("fused attention with log-sum-exp unavailable on %s %s (%s); using matrix products",
                        *state, first_line(exc)[:200])
        if LSE_PATH.get(state):
            return out
    ref = _prefix_attention(query, key, value, *pre.layer(i), pre.own_mask(1, L, rep, S), scale)
    if out is not None:  # the first call here: keep the fused path if it agrees
        diff = (out.float() - ref.float()).abs().max().item()
        LSE_PATH[state] = diff <= LSE_TOLERANCE.get(query.dtype, 3e-2) * max(1.0, ref.float().abs().max().item())
        if not LSE_PATH[state]:
            log.warning("fused attention with log-sum-exp disagrees with the matrix products on %s %s "
                        "(max abs diff %.2e); using matrix products", *state, diff)
    return ref


def multi_prefix_attention(query, key, value, segments, scaling: float | None, own_mask: torch.Tensor,
                           runs: list | None = None) -> torch.Tensor:
    """Attention of a batch whose rows read different prefixes: `segments` lists (row indices,
    prefix keys [1, kvH, S, d], prefix values) and each row's queries see its own segment's
    prefix and its valid own keys (`own_mask`, additive [B, 1, rep * q, L]; `runs`: the own keys
    read by runs of rows (b0, b1, first column) from their first valid key, row_runs.py).
    Exact: one softmax per row over both parts, taken as exp(score - the row's max), summed over
    the own keys for all rows at once (per run) and over each segment's prefix for its rows,
    then divided (float32). Returns [B, q, H, d]."""
    B, H, q, d = query.shape
    kvH = key.shape[1]
    rq = (H // kvH) * q
    scale = scaling if scaling is not None else d ** -0.5
    qg = query.reshape(B, kvH, rq, d)
    runs = runs or [(0, B, 0)]
    s_own = [torch.matmul(qg[b0:b1], key[b0:b1, :, s:].transpose(-1, -2)).float().mul_(scale) + own_mask[b0:b1, ..., s:]
             for b0, b1, s in runs]  # [rows, kvH, rq, L - s] per run
    top = torch.cat([x.amax(-1, keepdim=True) for x in s_own])
    pre = []
    for idx, kp, _ in segments:
        n, S = idx.numel(), kp.shape[2]
        qs = qg.index_select(0, idx).transpose(0, 1).reshape(kvH, n * rq, d)
        sp = torch.matmul(qs, kp[0].transpose(-1, -2)).view(kvH, n, rq, S).transpose(0, 1).float().mul_(scale)
        top[idx] = torch.maximum(top[idx], sp.amax(-1, keepdim=True))
        pre.append(sp)
    e = [torch.exp(x - top[b0:b1]) for (b0, b1, _), x in zip(runs, s_own)]
    z = torch.cat([x.sum(-1, keepdim=True) for x in e])
    out = torch.cat([torch.matmul(x.to(value.dtype), value[b0:b1, :, s:]).float()
                     for (b0, b1, s), x in zip(runs, e)])  # [B, kvH, rq, dv]
    for (idx, kp, vp), sp in zip(segments, pre):
        n, S = idx.numel(), kp.shape[2]
        ep = torch.exp(sp - top[idx])
        z.index_add_(0, idx, ep.sum(-1, keepdim=True))
        op = torch.matmul(ep.to(vp.dtype).transpose(0, 1).reshape(kvH, n * rq, S), vp[0])
        out.index_add_(0, idx, op.view(kvH, n, rq, -1).transpose(0, 1).float())
    out = (out / z).to(query.dtype)
    return out.reshape(B, H, q, -1).transpose(1, 2)


def prefix_attention_forward(module, query, key, value, attention_mask, **kwargs):
    """AttentionInterface function: query [B, H, q, d], the rows' own key/value from their
    cache [B, kvH, L, d]; the prefix and own-key mask come from the `phi2eval_prefix` keyword
    (`attention_mask` is not used). Returns ([B, q, H, d], None)."""
    pre: Prefix | None = kwargs.pop(PREFIX_KW, None)
    if pre is None:
        raise RuntimeError(f"{SHARED} attention called without {PREFIX_KW}")
    for feature in ("softcap", "s_aux", "position_bias"):
        if kwargs.get(feature) is not None:
            raise NotImplementedError(f"{SHARED} attention does not implement {feature}")
    window = kwargs.get("sliding_window")
    if window is not None and pre.prefix_len() + key.shape[2] > window:
        raise NotImplementedError(f"{SHARED} attention does not implement sliding windows")
    i = module.layer_idx
    if isinstance(pre, MultiPrefix):  # a decoding step of a batch mixing clusters
        if query.shape[2] != 1:
            raise NotImplementedError("a batch mixing clusters prefills per cluster")
        pre.calls += 1
        mask = pre.own_mask(1, key.shape[2], query.shape[1] // key.shape[1])
        segments = [(idx, p.keys[i], p.values[i]) for idx, p in pre.rows_of]
        runs = pre.row_runs.runs if pre.row_runs is not None else None
        return multi_prefix_attention(query, key, value, segments, kwargs.get("scaling"), mask, runs), None
    pk, pv = pre.keys[i], pre.values[i]
    pre.calls += 1
    if query.shape[2] == 1:  # a decoding step: the prefix is read once for all rows
        scale = kwargs.get("scaling")
        scale = scale if scale is not None else query.shape[-1] ** -0.5
        return _decode_attention(query, key, value, pre, i, scale), None
    # the prompts' own tokens (prefill): SDPA over the prefix expanded for this layer only
    B = query.shape[0]
    k = torch.cat([pk.expand(B, -1, -1, -1), key], dim=2)
    v = torch.cat([pv.expand(B, -1, -1, -1), value], dim=2)
    mask = pre.prefill_mask(query.shape[2], key.shape[2])
    return sdpa_attention_forward(module, query, k, v, mask, **{**kwargs, "is_causal": False})


_REGISTERED = register(SHARED, prefix_attention_forward)


def supports(model, max_length: int) -> bool:
    """Whether `model` can decode under a shared prefix here: attention through transformers'
    AttentionInterface as SDPA (packed_attention.supports), each attention module knows its
    layer, and no sliding window shorter than `max_length`."""
    if not _REGISTERED or not routes_attention(model):
        return False
    window = getattr(model.config, "sliding_window", None)
    if isinstance(window, int) and window < max_length:
        return False
    return any(hasattr(m, "layer_idx") and "Attention" in type(m).__name__ for m in model.modules())


def shared_prefix(model):
    """Within the block, the model's attention implementation is SHARED (then restored)."""
    return attention_implementation(model, SHARED)
