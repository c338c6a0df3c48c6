"""Token-budget batching and OOM backoff (no model needed)."""

from __future__ import annotations

import pytest
import torch

from evals.backends.batching import (
    Pending,
    TokenBudget,
    is_oom,
    kv_bytes_per_token,
    packed_groups,
    plan_batches,
    resolve,
    run_batched,
    take_batch,
)


def test_batches_respect_budget_and_cover_everything():
    lengths = [5, 100, 30, 30, 7, 64, 1, 99]
    budget = TokenBudget(200)
    batches = plan_batches(lengths, budget)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 200
    # longest first: the first batch starts with the longest item
    assert batches[0][0] == 1


def test_much_shorter_items_start_a_new_batch():
    batches = plan_batches([100, 90, 40, 35], TokenBudget(10_000, max_pad_ratio=1.5))
    assert batches == [[0, 1], [2, 3]]
    # the default (1.1) lets a row be at most 10% shorter than the batch's longest
    assert plan_batches([100, 95, 90, 80], TokenBudget(10_000)) == [[0, 1], [2], [3]]
    assert len(plan_batches([100, 90, 40, 35], TokenBudget(10_000, max_pad_ratio=None))) == 1


def test_padding_ratio_uses_pad_lengths():
    # rows 700/650 tokens long sharing a 600-token prefix: padded parts 100 and 50 differ 2x
    lengths, shared = [700, 650], [600, 600]
    assert len(plan_batches(lengths, TokenBudget(10_000))) == 1
    pad = [n - s for n, s in zip(lengths, shared)]
    assert plan_batches(lengths, TokenBudget(10_000), pad_lengths=pad) == [[0], [1]]


def test_pad_waste_allowance_joins_short_rows_while_total_padding_is_small():
    # ratio rule alone: 100 | 80 | 40, 38 (ratio 1.1 breaks at every big step)
    assert plan_batches([100, 80, 40, 38], TokenBudget(10_000)) == [[0], [1], [2, 3]]
    # 20 padded tokens allowed: 80 joins 100 (waste 20), 40 would add 60 more: new batch
    assert plan_batches([100, 80, 40, 38], TokenBudget(10_000, max_pad_waste=20)) == [[0, 1], [2, 3]]
    # a large allowance: one batch (the budget still caps rows x longest)
    assert plan_batches([100, 80, 40, 38], TokenBudget(10_000, max_pad_waste=1000)) == [[0, 1, 2, 3]]
    assert plan_batches([100, 80, 40, 38], TokenBudget(250, max_pad_waste=1000)) == [[0, 1], [2, 3]]


def test_attention_waste_allows_padding_inversely_to_the_longest_row():
    # padded only inside attention: up to attention_waste / longest padded tokens more
    lengths = [100, 80, 40, 38]
    assert plan_batches(lengths, TokenBudget(10_000)) == [[0], [1], [2, 3]]
    # 2000 / 100 = 20: 80 joins 100 (waste 20); 40 would make it 80
    calls = []
    run_batched(lengths, lambda ix: calls.append(list(ix)) or ix, TokenBudget(10_000), attention_waste=2000)
    assert calls == [[0, 1], [2, 3]]
    # 8000 / 100 = 80: 40 joins too (waste 80); 38 would make it 142
    assert take_batch(lengths, [0, 1, 2, 3], 0, TokenBudget(10_000), attention_waste=8000) == 3
    # the allowance adds to max_pad_waste, and the token budget still caps rows x longest
    assert take_batch(lengths, [0, 1, 2, 3], 0, TokenBudget(10_000, max_pad_waste=62), attention_waste=8000) == 4
    assert take_batch(lengths, [0, 1, 2, 3], 0, TokenBudget(250), attention_waste=10**6) == 2


def test_pad_waste_argument_overrides_the_budgets():
    calls = []
    run_batched([100, 80, 40, 38], lambda ix: calls.append(list(ix)) or ix, TokenBudget(10_000), pad_waste=1000)
    assert calls == [[0, 1, 2, 3]]


def test_kv_bytes_per_token_follows_the_config(embedded_model):
    """Phi-2: 2 x 32 layers x 32 heads x 80 x 2 bytes; SmolLM2-135M (grouped-query): 3 KV heads of 64."""
    from types import SimpleNamespace

    phi2 = SimpleNamespace(num_attention_heads=32, num_key_value_heads=32, hidden_size=2560, num_hidden_layers=32)
    assert kv_bytes_per_token(phi2) == 327680
    assert kv_bytes_per_token(embedded_model.model.config, 4) == 2 * 30 * 3 * 64 * 4
    assert kv_bytes_per_token(SimpleNamespace(n_layer=2)) is None


def test_keys_never_share_a_batch():
    batches = plan_batches([5, 5, 5, 5], TokenBudget(100), keys=["a", None, "a", None])
    assert sorted(map(sorted, batches)) == [[0, 2], [1, 3]]


def test_item_longer_than_budget_gets_its_own_batch():
    batches = plan_batches([500, 10, 10], TokenBudget(100))
    assert batches[0] == [0]
    assert sorted(batches[1]) == [1, 2]


def test_max_rows_caps_batch_rows():
    batches = plan_batches([1] * 10, TokenBudget(10_000, max_rows=3))
    assert [len(b) for b in batches] == [3, 3, 3, 1]


def test_small_items_share_a_batch():
    batches = plan_batches([10] * 8, TokenBudget(40))
    assert [len(b) for b in batches] == [4, 4]


@pytest.mark.parametrize("exc,expected", [
    (torch.OutOfMemoryError("CUDA out of memory"), True),
    (RuntimeError("CUDA error: out of memory"), True),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                  "tried to allocate 26843545600 bytes. Error code 12 (Cannot allocate memory)"), True),
    (RuntimeError("shape mismatch"), False),
    (ValueError("out of memory"), False),
])
def test_is_oom(exc, expected):
    assert is_oom(exc) is expected


def test_run_batched_halves_budget_on_oom_and_keeps_results():
    lengths = [10] * 16
    budget = TokenBudget(160)
    calls = []

    def fn(idx):
        calls.append(list(idx))
        if len(idx) > 4:
            raise torch.OutOfMemoryError("out of memory (simulated)")
        return [i * i for i in idx]

    out = run_batched(lengths, fn, budget)
    assert out == [i * i for i in range(16)]
    assert budget.tokens == 40 and budget.halvings == 2
    assert len(budget.events) == 2


def test_run_batched_reraises_other_errors():
    def fn(idx):
        raise ValueError("bug")

    with pytest.raises(ValueError):
        run_batched([1, 2], fn, TokenBudget(100))


def test_single_item_oom_twice_raises():
    def fn(idx):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        run_batched([50], fn, TokenBudget(100))


def test_results_in_item_order_not_batch_order():
    lengths = [1, 5, 3]
    out = run_batched(lengths, lambda idx: [f"r{i}" for i in idx], TokenBudget(4, max_pad_ratio=None))
    assert out == ["r0", "r1", "r2"]


def test_run_batched_pad_ratio_overrides_budget():
    calls = []

    def fn(idx):
        calls.append(list(idx))
        return idx

    run_batched([100, 95, 90, 80], fn, TokenBudget(10_000), pad_ratio=1.5)
    assert calls == [[0, 1, 2, 3]]
    calls.clear()
    run_batched([100, 95, 90, 80], fn, TokenBudget(10_000))  # default 1.1
    assert calls == [[0, 1], [2], [3]]


def test_packed_batches_cut_at_summed_lengths_whatever_the_padding():
    calls = []

    def fn(idx):
        calls.append(list(idx))
        return idx

    lengths = [100, 60, 20, 10, 5]
    run_batched(lengths, fn, TokenBudget(180), packed=lambda: True)
    assert calls == [[0, 1, 2], [3, 4]]  # 180 real tokens, though padded it would be 300
    calls.clear()
    run_batched(lengths, fn, TokenBudget(180), packed=lambda: False)
    assert calls == [[0], [1], [2], [3], [4]]  # padded: the 1.1 ratio rule


def test_packed_oom_halves_from_the_failed_batchs_real_tokens():
    budget = TokenBudget(1000)

    def fn(idx):
        if sum(lengths[i] for i in idx) > 100:
            raise torch.OutOfMemoryError("out of memory (simulated)")
        return idx

    lengths = [60, 40, 30, 10]
    assert run_batched(lengths, fn, budget, packed=lambda: True) == [0, 1, 2, 3]
    assert budget.events[0].endswith("budget -> 70 tokens")  # half of the 140 that failed


def test_packed_groups_are_runs_padded_within_the_ratio():
    assert packed_groups([100, 95, 90, 80, 79, 10], TokenBudget(50)) == [[0, 1], [2], [3, 4], [5]]
    # the GPU allowance joins rows while the group's padding stays small
    assert packed_groups([100, 95, 90, 80], TokenBudget(50, max_pad_waste=40)) == [[0, 1, 2, 3]]


def test_pending_batch_read_after_the_next_is_queued():
    """A batch returned as Pending is read back only after the next batch's fn has run (its work
    queued), the last one at the end; results in item order."""
    log = []

    def fn(idx):
        log.append(("queue", list(idx)))
        return Pending(lambda: log.append(("read", list(idx))) or [f"r{i}" for i in idx])

    out = run_batched([30, 20, 10], fn, TokenBudget(30, max_pad_ratio=None))
    assert out == ["r0", "r1", "r2"]
    assert log == [("queue", [0]), ("queue", [1]), ("read", [0]), ("queue", [2]), ("read", [1]), ("read", [2])]


def test_pending_batch_kept_when_the_next_runs_out_of_memory():
    """An OOM in the batch queued after a pending one: the pending batch is read (its results
    kept, never recomputed), the failed one retried at half the budget."""
    calls, reads = [], []

    def fn(idx):
        calls.append(list(idx))
        if len(calls) == 2:
            raise torch.OutOfMemoryError("out of memory (simulated)")
        return Pending(lambda: reads.append(list(idx)) or [i * 10 for i in idx])

    lengths = [10] * 8
    out = run_batched(lengths, fn, TokenBudget(40))
    assert out == [i * 10 for i in range(8)]
    assert calls == [[0, 1, 2, 3], [4, 5, 6, 7], [4, 5], [6, 7]]
    assert reads == [[0, 1, 2, 3], [4, 5], [6, 7]]


def test_pending_batch_with_a_wrong_count_is_an_error():
    with pytest.raises(RuntimeError, match="returned 1 results for 2 items"):
        run_batched([5, 5], lambda idx: Pending(lambda: ["x"]), TokenBudget(100))


def test_resolve_passes_plain_results_through():
    assert resolve([1, 2]) == [1, 2]
    assert resolve(Pending(lambda: [3])) == [3]
