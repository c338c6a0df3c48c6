"""The rows' KV cache during greedy decoding: reserved for the whole decode, assembled from
prefill groups, and compacted in place as rows finish.

A transformers DynamicLayer concatenates each step's keys onto its cache, copying the layer's
whole cache at every step. ReservedLayer writes them into a buffer reserved for the whole
decode instead (reserve_cache). A batch's rows are prefilled in groups of similar length whose
caches are copied into one left-padded, reserved cache (widen_cache, fill_rows), and rows that
finish leave it, the rows behind them moved into their place (compact_order, compact_cache).
"""

from __future__ import annotations

import torch

try:  # transformers >= 4.56: caches made of per-layer objects
    from transformers.cache_utils import DynamicLayer
except ImportError:  # pragma: no cover - older transformers: no reservation
    DynamicLayer = None


if DynamicLayer is not None:

    class ReservedLayer(DynamicLayer):
        """A DynamicLayer that writes new tokens into a buffer reserved for the whole decode
        instead of concatenating (which copies the layer's whole cache at every step).
        `keys`/`values` stay views of the filled part, so every other method works unchanged;
        past the reserve it falls back to concatenation."""

        def reserve(self, extra: int) -> None:
            """Room for `extra` more tokens; the cached ones are copied in once."""
            n = self.keys.shape[-2]
            kshape, vshape = list(self.keys.shape), list(self.values.shape)
            kshape[-2] = vshape[-2] = n + extra
            kbuf, vbuf = self.keys.new_empty(kshape), self.values.new_empty(vshape)
            kbuf[..., :n, :].copy_(self.keys)
            vbuf[..., :n, :].copy_(self.values)
            self.use_buffers(kbuf, vbuf, n)

        def use_buffers(self, kbuf, vbuf, n: int) -> None:
            """Hold keys and values in `kbuf`/`vbuf`, whose first n tokens are filled."""
            self._kbuf, self._vbuf = kbuf, vbuf
            self.keys, self.values = kbuf[..., :n, :], vbuf[..., :n, :]

        def _in_buffer(self) -> bool:
            buf = getattr(self, "_kbuf", None)
            return buf is not None and self.keys is not None and self.keys.data_ptr() == buf.data_ptr()

        def update(self, key_states, value_states, *args, **kwargs):
            if not self._in_buffer() or self.keys.shape[-2] + key_states.shape[-2] > self._kbuf.shape[-2]:
                return super().update(key_states, value_states, *args, **kwargs)
            n = self.keys.shape[-2]
            m = n + key_states.shape[-2]
            self._kbuf[..., n:m, :].copy_(key_states)
            self._vbuf[..., n:m, :].copy_(value_states)
            self.keys, self.values = self._kbuf[..., :m, :], self._vbuf[..., :m, :]
            return self.keys, self.values

        def batch_select_indices(self, indices) -> None:
            if not self._in_buffer():
                return super().batch_select_indices(indices)
            self.use_buffers(self._kbuf[indices, ...], self._vbuf[indices, ...], self.keys.shape[-2])

        def compact(self, dst, src, rows: int) -> None:
            """Keep the first `rows` rows, after moving rows `src` (all at or past `rows`) into
            rows `dst`, in place: only the moved rows' filled tokens are copied."""
            n = self.keys.shape[-2]
            if len(dst):
                self._kbuf[dst, :, :n] = self._kbuf[src, :, :n]
                self._vbuf[dst, :, :n] = self._vbuf[src, :, :n]
            self.use_buffers(self._kbuf[:rows], self._vbuf[:rows], n)


def out_cache(out):
    """The KV cache of a model output (`cache` in transformers 5, `past_key_values` before)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def compact_order(keep: list[int], n: int) -> list[int]:
    """Rows of a batch of n that remain, as an order for compact_cache: the kept rows among the
    first len(keep) stay where they are, and the kept rows past them fill the holes left by the
    rows that go (row i of the result is row order[i])."""
    m = len(keep)
    gone = sorted(set(range(m)) - set(keep))
    order = list(range(m))
    for hole, row in zip(gone, (k for k in keep if k >= m)):
        order[hole] = row
    return order


def compact_cache(cache, order: list[int], device) -> torch.Tensor:
    """Keep rows `order` of `cache` (see compact_order) and return them as an index tensor.
    ReservedLayers in their buffer move only the rows that change place, in place, so the cache
    is never held twice (the reason a CUDA generation batch may fill GPU_GEN_MEMORY_SHARE of
    free memory); other layers and caches select (copy) the rows."""
    sel = torch.tensor(order, device=device)
    m = len(order)
    moved = [i for i, r in enumerate(order) if r != i]
    layers = getattr(cache, "layers", None)
    if DynamicLayer is None or not layers or any(order[i] < m for i in moved):
        cache.batch_select_indices(sel)
        return sel
    dst = torch.tensor(moved, device=device)
    src = torch.tensor([order[i] for i in moved], device=device)
    for layer in layers:
        if isinstance(layer, ReservedLayer) and layer._in_buffer():
            layer.compact(dst, src, m)
        else:
            layer.batch_select_indices(sel)
    return sel


def reserve_cache(cache, extra: int) -> int:
    """Turn the plain DynamicLayers of `cache` into ReservedLayers with room for `extra`
    tokens; returns how many layers were converted (0 for other cache types)."""
    if DynamicLayer is None or extra <= 0:
        return 0
    done = 0
    for layer in getattr(cache, "layers", []):
        if type(layer) is DynamicLayer and layer.is_initialized:
            layer.__class__ = ReservedLayer
            layer.reserve(extra)
            done += 1
    return done


def _plain_layers(cache) -> list | None:
    """The layers of `cache` if all are initialised plain DynamicLayers of 4-d keys, else None."""
    layers = getattr(cache, "layers", None)
    if DynamicLayer is None or not layers:
        return None
    if any(type(x) is not DynamicLayer or not x.is_initialized or x.keys.dim() != 4 for x in layers):
        return None
    return layers


def _copy_rows(dst: list, src: list, rows: list[int], S: int, T: int, n: int) -> None:
    """Copy the rows of `src` layers' keys and values (S prefix columns, then n own tokens
    left padded) into `dst` (per layer, a keys and a values buffer of all rows), own tokens
    right aligned to width T."""
    idx = torch.tensor(rows, device=dst[0][0].device)
    for (kbuf, vbuf), layer in zip(dst, src):
        for buf, t in ((kbuf, layer.keys), (vbuf, layer.values)):
            if S:
                buf[idx, :, :S] = t[:, :, :S]
            buf[idx, :, S + T - n: S + T] = t[:, :, S: S + n]


def widen_cache(cache, B: int, S: int, T: int, extra: int, rows: list[int], n: int) -> bool:
    """Turn `cache`, which holds rows `rows` of a batch of B (S prefix columns, then own tokens
    left padded to n), into that batch's cache: its DynamicLayers become ReservedLayers over
    zeroed buffers of B rows x (S + T + extra) tokens, its rows copied in with their own tokens
    right aligned to width T (the batch's longest); the other rows are filled by fill_rows.
    The zeros in front of a shorter row are padding that the attention mask hides. False
    (nothing changed) unless every layer is a plain DynamicLayer."""
    layers = _plain_layers(cache)
    if layers is None or extra < 0:
        return False
    bufs = []
    for layer in layers:
        pair = []
        for t in (layer.keys, layer.values):
            shape = list(t.shape)
            shape[0], shape[2] = B, S + T + extra
            pair.append(t.new_zeros(shape))
        bufs.append(pair)
    _copy_rows(bufs, layers, rows, S, T, n)
    for layer, (kbuf, vbuf) in zip(layers, bufs):
        layer.__class__ = ReservedLayer
        layer.use_buffers(kbuf, vbuf, S + T)
    return True


def fill_rows(cache, src, rows: list[int], S: int, n: int) -> bool:
    """Copy the rows `rows` of `src` (a group's cache, as in widen_cache) into `cache` (widened
    by widen_cache). False if `src` is not made of plain DynamicLayers."""
    layers = _plain_layers(src)
    if layers is None:
        return False
    dst = [(layer._kbuf, layer._vbuf) for layer in cache.layers]
    _copy_rows(dst, layers, rows, S, cache.layers[0].keys.shape[2] - S, n)
    return True
