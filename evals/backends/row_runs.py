"""Decoding attention that reads each row's own keys, not its batch's left padding.

A generation batch holds prompts of different lengths, left padded to the longest: at every
decoding step, attention over the rows' KV cache reads every row's padding too. On the CPU a
step is bound by memory reads, so a batch could take only as much padding as a step's weight
reads are worth (device.gen_pad_waste) and BBH's prompts (238 to 2507 tokens at one prompt per
task) decoded as two batches, each reading the model's weights at every step.

Here a decoding step's attention runs over runs of consecutive rows, each reading the cache's
columns from its own first valid key on (a slice: no copy). Row b's valid keys are the columns
from starts[b] on (left padding, then its prompt and the tokens generated so far), so a run
[b0, b1) reads (b1 - b0) x (L - min start) keys; the runs (cut_runs) minimise the keys read plus
RUN_COST per run, in the rows' current order (which compaction changes), and change only when
the rows' starts do. Each run is the same attention as before on fewer columns: the columns it
leaves out are masked out for every row of the run.

Used on the CPU only (FastLM.decode_runs): on a GPU a decoding step is bound by launching
kernels, and each run adds its own. Not with --cuda-graphs, whose fixed-shape steps read the
whole width, nor past a sliding window (the masks built here do not encode one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from evals.backends.packed_attention import attention_implementation, register, sdpa_attention_forward

RUNS = "phi2eval_row_runs"
RUNS_KW = "phi2eval_runs"
# a run's fixed cost in keys read: one more attention call per layer and step (estimated at about
# 25 us on the CPU) against one key and value of one layer of SmolLM2-135M (1.5 KiB, about 0.1 us
# at 15 GB/s). Not a sensitive choice: BBH quick decoded in the same time, within this CPU's
# noise, at 64, 256, 1024 and 4096 (1.006x to 1.204x the valid keys read; bench_run_cost.py)
RUN_COST = 256


def starts_of(valid: torch.Tensor) -> list[int] | None:
    """Each row's first valid key, from `valid` [rows, L] (bool), where every row's valid keys
    are one run up to the last column (left padding); None where some row's are not."""
    L = valid.shape[1]
    first = valid.int().argmax(-1)
    count = valid.sum(-1)
    if not bool(((count == L - first) & valid[:, -1]).all()):
        return None
    return first.tolist()


def cut_runs(starts: list[int], cost: int = RUN_COST) -> list[tuple[int, int, int]]:
    """Runs (b0, b1, first column) of consecutive rows, minimising the keys read (rows x columns
    from the run's smallest start) plus `cost` per run; exact (dynamic programming over run ends,
    quadratic in the rows)."""
    n = len(starts)
    best = [0] + [None] * n  # best[j]: cost of rows [0, j) minus the keys from column 0 on
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        low = starts[j - 1]
        for i in range(j - 1, -1, -1):  # run [i, j)
            low = min(low, starts[i])
            c = best[i] + cost - (j - i) * low
            if best[j] is None or c < best[j]:
                best[j], cut[j] = c, i
    runs = []
    j = n
    while j > 0:
        i = cut[j]
        runs.append((i, j, min(starts[i:j])))
        j = i
    return runs[::-1]


@dataclass
class RowRuns:
    """The runs of a decoding batch's rows (cut_runs; one run from column 0 where their own-key
    mask is not left padding); calls: attention layers that ran here."""

    runs: list = field(default_factory=list)
    calls: int = 0
    cost: int | None = None  # a run's fixed cost in keys read (None: RUN_COST)
    _starts: list | None = field(default=None, repr=False)

    def set_valid(self, valid: torch.Tensor) -> None:
        """The rows' own-key mask `valid` [rows, L] of this step; the runs are cut again when the
        rows' first valid keys changed (a new batch, or rows compacted)."""
        starts = starts_of(valid)
        if starts is None:
            self._starts, self.runs = None, [(0, valid.shape[0], 0)]
        elif starts != self._starts:
            self._starts, self.runs = starts, cut_runs(starts, RUN_COST if self.cost is None else self.cost)


def over_runs(attend, runs: list, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              bias: torch.Tensor | None):
    """attend(query, key, value, bias) over each run's rows and columns, the results (a tensor,
    or a tuple of tensors, rows first) concatenated by row."""
    if len(runs) == 1 and runs[0][2] == 0:
        return attend(query, key, value, bias)
    outs = [attend(query[b0:b1], key[b0:b1, :, s:], value[b0:b1, :, s:], None if bias is None else bias[b0:b1, ..., s:])
            for b0, b1, s in runs]
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outs))
    return torch.cat(outs)


def row_runs_forward(module, query, key, value, attention_mask, **kwargs):
    """AttentionInterface function: a decoding step (one query per row) with the `phi2eval_runs`
    keyword (a RowRuns) runs transformers' SDPA over each run of rows from its first valid
    column, under that run's part of `attention_mask` (the 4-D mask transformers builds for SDPA,
    see _register); anything else is plain SDPA. Returns ([rows, 1, H, d], None)."""
    rr: RowRuns | None = kwargs.pop(RUNS_KW, None)
    if rr is None or query.shape[2] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    rr.calls += 1
    kw = {**kwargs, "is_causal": False}
    out = over_runs(lambda q, k, v, b: sdpa_attention_forward(module, q, k, v, b, **kw)[0],
                    rr.runs, query, key, value, attention_mask)
    return out, None


def _register() -> bool:
    """RUNS as an attention implementation, whose 4-D masks transformers builds as for SDPA: the
    runs take their part of it, and a model whose attention bypasses the interface still gets
    its mask."""
    if not register(RUNS, row_runs_forward):
        return False
    try:
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    except ImportError:  # pragma: no cover - transformers without the mask interface
        return False
    ALL_MASK_ATTENTION_FUNCTIONS.register(RUNS, sdpa_mask)
    return True


_REGISTERED = _register()


def row_runs(model):
    """Within the block, the model's attention implementation is RUNS (then restored)."""
    return attention_implementation(model, RUNS)
