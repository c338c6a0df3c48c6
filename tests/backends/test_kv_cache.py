"""evals/backends/kv_cache.py: the reserved KV cache and its compaction in place."""

from __future__ import annotations

import torch


def test_reserved_kv_layer_equals_concatenation():
    """ReservedLayer (decode into a reserved buffer) keeps the same keys/values as
    DynamicLayer's torch.cat, through row removal and past its reserve."""
    from transformers.cache_utils import DynamicCache

    from evals.backends.kv_cache import ReservedLayer, reserve_cache

    torch.manual_seed(0)
    plain, reserved = DynamicCache(), DynamicCache()
    k0, v0 = torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4)
    for c in (plain, reserved):
        c.update(k0, v0, 0)
    assert reserve_cache(reserved, 2) == 1 and isinstance(reserved.layers[0], ReservedLayer)
    keep = torch.tensor([0, 2])
    for step in range(4):  # 2 steps inside the reserve, 2 past it (falls back to cat)
        if step == 1:
            for c in (plain, reserved):
                c.batch_select_indices(keep)
        b = 3 if step == 0 else 2
        k, v = torch.randn(b, 2, 1, 4), torch.randn(b, 2, 1, 4)
        kp, vp = plain.update(k, v, 0)
        kr, vr = reserved.update(k, v, 0)
        assert torch.equal(kp, kr) and torch.equal(vp, vr)
        assert plain.get_seq_length() == reserved.get_seq_length() == 6 + step
        assert reserved.layers[0]._in_buffer() == (step < 2)  # no copy while the reserve lasts


def test_compact_order_fills_holes_from_the_end():
    """Rows that go leave holes; kept rows past the new size move into them, the rest stay."""
    from evals.backends.kv_cache import compact_order

    assert compact_order([0, 2, 3, 5], 6) == [0, 5, 2, 3]
    assert compact_order([1, 4], 5) == [4, 1]
    assert compact_order([0, 1, 2], 5) == [0, 1, 2]
    assert compact_order([3], 4) == [3]


def test_compacting_a_reserved_cache_moves_rows_in_place():
    """compact_cache keeps the rows a selection would keep, in the same buffer (no second copy
    of the cache), and the reserve still takes new tokens afterwards."""
    from transformers.cache_utils import DynamicCache

    from evals.backends.kv_cache import compact_cache, compact_order, reserve_cache

    torch.manual_seed(0)
    plain, reserved = DynamicCache(), DynamicCache()
    k0, v0 = torch.randn(5, 2, 3, 4), torch.randn(5, 2, 3, 4)
    for c in (plain, reserved):
        c.update(k0, v0, 0)
    reserve_cache(reserved, 4)
    layer = reserved.layers[0]
    ptr = layer._kbuf.data_ptr()
    order = compact_order([0, 2, 4], 5)
    assert order == [0, 4, 2]
    plain.batch_select_indices(torch.tensor(order))
    sel = compact_cache(reserved, order, torch.device("cpu"))
    assert sel.tolist() == order
    assert torch.equal(layer.keys, plain.layers[0].keys) and torch.equal(layer.values, plain.layers[0].values)
    assert layer._kbuf.data_ptr() == ptr and layer._kbuf.shape[0] == 3
    k, v = torch.randn(3, 2, 1, 4), torch.randn(3, 2, 1, 4)
    kp, _ = plain.update(k, v, 0)
    kr, _ = reserved.update(k, v, 0)
    assert torch.equal(kp, kr) and layer._in_buffer()
