"""Token-budget batching with out-of-memory backoff.

The runner sorts work items by length (longest first) and cuts them into batches whose
*padded* size, rows x longest row, fits a token budget, instead of a fixed row count.
An out-of-memory error halves the budget and retries the same items; results of batches
that already finished are kept.
"""

from __future__ import annotations

import gc
import os
import resource
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

# Bytes of activation memory assumed per token of a batch on CUDA (bf16 forward of a ~3B
# model with logits at a few positions); deliberately pessimistic, OOM backoff handles the rest.
CUDA_BYTES_PER_TOKEN = 512 * 1024
CPU_DEFAULT_TOKENS = 8192
MIN_TOKENS = 1
MAX_TOKENS = 1 << 18


BUDGET_ENV = "PHI2EVAL_TOKEN_BUDGET"


def default_budget(device: torch.device | str, bytes_per_token: int = CUDA_BYTES_PER_TOKEN) -> int:
    """Token budget for one batch: $PHI2EVAL_TOKEN_BUDGET, else from free CUDA memory, else a CPU default."""
    if os.environ.get(BUDGET_ENV, "").isdigit():
        return max(MIN_TOKENS, min(MAX_TOKENS, int(os.environ[BUDGET_ENV])))
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(device)
        return cuda_budget(free, bytes_per_token)
    return CPU_DEFAULT_TOKENS


def cuda_budget(free_bytes: int, bytes_per_token: int = CUDA_BYTES_PER_TOKEN) -> int:
    """Token budget on a CUDA device with `free_bytes` free: 60% of it at `bytes_per_token`,
    between 1024 and MAX_TOKENS."""
    return max(1024, min(MAX_TOKENS, int(free_bytes * 0.6) // bytes_per_token))


def kv_bytes_per_token(config, bytes_per_value: int = 2) -> int | None:
    """Bytes of KV cache one token takes in all layers: 2 x layers x KV heads x head dim x
    bytes per value; None if the config does not say."""
    heads = getattr(config, "num_attention_heads", None)
    layers = getattr(config, "num_hidden_layers", None)
    if not isinstance(heads, int) or not isinstance(layers, int) or heads <= 0:
        return None
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * layers * kv_heads * head_dim * bytes_per_value


def is_oom(exc: BaseException) -> bool:
    """True for torch's out-of-memory error, or a RuntimeError that says 'out of memory' (CUDA)
    or "can't allocate memory" (the CPU allocator: `DefaultCPUAllocator: can't allocate memory:
    you tried to allocate N bytes`)."""
    oom_type = getattr(torch, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def free_memory(device: torch.device | str | None = None) -> None:
    """Release cached allocator blocks after an OOM."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def peak_memory_bytes(device: torch.device | str) -> int:
    """Peak memory so far: CUDA max allocated on a GPU, else the process's max RSS."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


@dataclass
class TokenBudget:
    """Mutable token budget shared by all batches of a backend; halves on OOM."""

    tokens: int
    max_rows: int | None = None
    # a row shorter than longest / max_pad_ratio starts a new batch (limits padding waste;
    # 1.1 against 1.5 cut HellaSwag's padded tokens from 19150 to 16950 and its CPU time by 19%)
    max_pad_ratio: float | None = 1.1
    # ... unless the batch's padding in all (rows x longest - sum of rows) stays within this many
    # tokens: where each forward has a fixed cost (GPU kernel launches), a few padded tokens
    # are cheaper than another batch (FastLM sets it on CUDA; 0 = ratio rule only)
    max_pad_waste: int = 0
    min_tokens: int = MIN_TOKENS
    halvings: int = 0
    events: list[str] = field(default_factory=list)

    def shrink(self, failed_tokens: int | None = None, reason: str = "out of memory") -> None:
        """Halve the budget, or half the padded size of the batch that failed if smaller
        (so the retried batch is strictly smaller), not below min_tokens; record why."""
        base = min(self.tokens, failed_tokens) if failed_tokens else self.tokens
        self.tokens = max(self.min_tokens, base // 2)
        self.halvings += 1
        self.events.append(f"{reason}: budget -> {self.tokens} tokens")


def take_batch(lengths: Sequence[int], order: Sequence[int], start: int, budget: TokenBudget,
               keys: Sequence | None = None, pad_lengths: Sequence[int] | None = None,
               pad_ratio: float | None = None, packed: bool = False, pad_waste: int | None = None,
               attention_waste: float = 0.0) -> int:
    """End index (exclusive) of the batch beginning at order[start].

    Items are taken in `order` (longest first) while rows x longest <= budget.tokens,
    rows <= budget.max_rows, the item is not much shorter than the longest
    (budget.max_pad_ratio, compared on `pad_lengths` if given: the part of each item that is
    padded, e.g. without a shared prefix) or the batch's padding stays within
    budget.max_pad_waste tokens (`pad_waste` if given), and (if `keys` is given) the key stays the same;
    a batch always holds at least one item.

    `packed`: the batch runs unpadded (rows concatenated, each length group padded only inside
    attention, see packed_groups), so it is cut at the sum of its lengths, not rows x longest,
    and lengths may differ freely.

    `attention_waste`: the batch runs as packed rows in one attention group (rows concatenated,
    attention padded to the longest), where a padded token costs only attention over the
    longest row, not the linear layers: its padding may hold attention_waste / longest length
    tokens more (device.cpu_attention_waste).
    """
    pad = pad_lengths if pad_lengths is not None else lengths
    ratio = None if packed else (pad_ratio if pad_ratio is not None else budget.max_pad_ratio)
    waste = budget.max_pad_waste if pad_waste is None else pad_waste
    if attention_waste and start < len(order):
        waste += attention_waste / lengths[order[start]]  # the batch's longest row comes first
    longest = 0
    pad_sum = 0
    total = 0
    end = start
    while end < len(order):
        cand = max(longest, lengths[order[end]])
        rows = end - start + 1
        size = total + lengths[order[end]] if packed else cand * rows
        if end > start and (size > budget.tokens or (budget.max_rows and rows > budget.max_rows)):
            break
        if end > start and keys is not None and keys[order[end]] != keys[order[start]]:
            break
        if end > start and ratio and pad[order[start]] > ratio * pad[order[end]]:
            # items are longest first, so pad[order[start]] is the batch's longest padded part
            if rows * pad[order[start]] - (pad_sum + pad[order[end]]) > waste:
                break
        longest = cand
        pad_sum += pad[order[end]]
        total += lengths[order[end]]
        end += 1
    return end


def packed_groups(lengths: Sequence[int], budget: TokenBudget) -> list[list[int]]:
    """Runs of consecutive items (lengths longest first, as a packed batch holds them) that
    attention pads to one length: budget.max_pad_ratio and budget.max_pad_waste decide where
    a run ends, as they decide where a padded batch ends."""
    rule = TokenBudget(MAX_TOKENS * max(1, len(lengths)), max_pad_ratio=budget.max_pad_ratio,
                       max_pad_waste=budget.max_pad_waste)
    order = list(range(len(lengths)))
    groups, start = [], 0
    while start < len(order):
        end = take_batch(lengths, order, start, rule)
        groups.append(order[start:end])
        start = end
    return groups


def sort_order(lengths: Sequence[int], keys: Sequence | None = None) -> list[int]:
    """Item indices grouped by key (in first-seen order), longest first within a key."""
    if keys is None:
        return sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rank: dict = {}
    for k in keys:
        rank.setdefault(k, len(rank))
    return sorted(range(len(lengths)), key=lambda i: (rank[keys[i]], -lengths[i]))


def plan_batches(lengths: Sequence[int], budget: TokenBudget, keys: Sequence | None = None,
                 pad_lengths: Sequence[int] | None = None, packed: bool = False,
                 attention_waste: float = 0.0) -> list[list[int]]:
    """All batches (lists of item indices, longest items first) for a fixed budget, as
    run_batched cuts them (`packed`, `attention_waste`: see take_batch)."""
    order = sort_order(lengths, keys)
    batches, start = [], 0
    while start < len(order):
        end = take_batch(lengths, order, start, budget, keys, pad_lengths, packed=packed,
                         attention_waste=attention_waste)
        batches.append(list(order[start:end]))
        start = end
    return batches


class Pending:
    """A batch's results still being computed on the device: `resolve()` reads them back (there
    the host waits for the device)."""

    def __init__(self, read: Callable[[], list[Any]]) -> None:
        """`read()` returns the batch's results."""
        self._read = read

    def resolve(self) -> list[Any]:
        """The batch's results."""
        return self._read()


def resolve(out: Any) -> Any:
    """`out` itself, or what it resolves to if it is Pending."""
    return out.resolve() if isinstance(out, Pending) else out


def run_batched(
    lengths: Sequence[int],
    fn: Callable[[list[int]], list[Any]],
    budget: TokenBudget,
    keys: Sequence | None = None,
    pad_lengths: Sequence[int] | None = None,
    pad_ratio: float | None = None,
    packed: Callable[[], bool] | None = None,
    pad_waste: int | None = None,
    attention_waste: float = 0.0,
) -> list[Any]:
    """Call fn on token-budget batches of item indices; return results in item order.

    `fn(indices)` returns one result per index, or a Pending that resolves to them: that batch
    is read back only after the next batch has been queued (fn called), so a device runs the
    next batch while the host reads this one and prepares the one after. On out-of-memory the
    budget is halved and the same items are retried in smaller batches; finished results (a
    pending batch's too) are never recomputed.
    A single item that runs out of memory twice re-raises the error. Items with different
    `keys` never share a batch; `pad_lengths` see take_batch; `pad_ratio` overrides
    budget.max_pad_ratio and `pad_waste` budget.max_pad_waste; `packed()` says whether the next
    batch runs unpadded, `attention_waste` what padding costs where it is padded only inside
    attention (take_batch).
    """
    order = sort_order(lengths, keys)
    results: list[Any] = [None] * len(lengths)
    start, single_failures = 0, 0
    last: tuple[list[int], Any] | None = None  # the batch queued before, not yet read back

    def land(idx: list[int], out: Any) -> None:
        out = resolve(out)
        if len(out) != len(idx):
            raise RuntimeError(f"batch function returned {len(out)} results for {len(idx)} items")
        for i, r in zip(idx, out):
            results[i] = r

    while start < len(order):
        unpadded = bool(packed and packed())
        end = take_batch(lengths, order, start, budget, keys, pad_lengths, pad_ratio, unpadded, pad_waste,
                         attention_waste)
        idx = list(order[start:end])
        try:
            out = fn(idx)
        except Exception as exc:  # noqa: BLE001 - only OOM is handled
            if not is_oom(exc):
                raise
            del exc
            if last is not None:  # queued before this batch failed: its results stand
                land(*last)
                last = None
            free_memory()
            if len(idx) == 1:
                # one row cannot be split further: retry once after freeing memory, then give up
                single_failures += 1
                if single_failures > 1:
                    raise
            sizes = [lengths[i] for i in idx]
            budget.shrink(sum(sizes) if unpadded else len(idx) * max(sizes))
            continue
        if last is not None:
            land(*last)
        last = (idx, out)
        single_failures = 0
        start = end
    if last is not None:
        land(*last)
    return results
