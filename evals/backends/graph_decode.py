"""Greedy decoding steps replayed as CUDA graphs.

A GPU decoding step is bound by launching its kernels: Phi-2's 32 layers dispatch about 2,200
operations per step, and a step took 23-25 ms on an H200 (2026-11-27) whatever the rows. A CUDA
graph records a step's kernels once and launches them all at once on every replay. It replays
the same kernels on the same memory, so every tensor a step reads or writes must stay at one
address and keep its shape, and nothing may be decided on the host within a step:

* the rows' KV cache is the buffer reserved for the whole decode (kv_cache.ReservedLayer), read
  whole, [rows, kv heads, T, d] with T = its prompt columns + max_gen - 1; each step writes its
  keys and values at column `col`, a one-element device tensor advanced inside the graph
  (GraphLayer), not at a Python index;
* the mask of the columns each row sees, `valid` [rows, T], gets column `col` set inside the
  graph; the attention reads all T columns, those not written yet (and left padding) masked out
  and zeroed first (a masked column still enters the products: 0 x NaN is NaN, and a reserved
  buffer holds whatever memory it was given):
  under a shared few-shot prefix read in place through prefix_attention's decoding path (which
  reads the prefix's one copy for all rows), otherwise through the model's SDPA with `valid` as
  its 4-D mask (a prefix copied into the rows' cache, or none);
* the next token (argmax) is written into the step's input inside the graph: the host reads the
  tokens only, for the stop checks;
* finished rows stay in the batch until half of it has finished; then the live rows move to the
  front of the buffers, in place, and the step is captured again for fewer rows.

Each batch shape runs GRAPH_WARMUP steps eagerly (on a side stream, as CUDA graphs want), then
captures one step and replays it. Every graph is checked at its second replay against the same
step run eagerly (StepRunner.check_replay): graphs stay on only if their positions, cache column
and mask are equal and their logits agree. A capture that fails, or a check that does not agree,
turns graphs off for the process (with a warning); the steps then run eagerly, with the same
results. On the CPU there are no graphs and the same steps run eagerly; the tests replay them through a CPU stand-in for a CUDA graph that
re-runs the recorded operations on the same tensors (tests/backends/graph_emulator.py), which
gives wrong text wherever a step would bake a host value into a graph.

A batch mixing several clusters' prefixes (MultiPrefix, on the CPU only) decodes as before.
Opt-in (`cuda_graphs=True`, `--cuda-graphs`) until a GPU run has measured it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from evals.backends import kv_cache
from evals.backends.kv_cache import compact_cache, compact_order
from evals.errors import first_line

log = logging.getLogger(__name__)

GRAPH_WARMUP = 1  # eager steps per batch shape before its capture
# per device type: None until a replay has been checked against an eager step there (check_replay),
# then whether every check agreed; False also once a capture has failed (graphs off for the process)
GRAPHS_OK: dict[str, bool | None] = {}
# largest difference of a replay's logits from an eager step's, relative to max(1, largest logit):
# the same kernels, but a library may pick another algorithm under capture (rounding in half
# precision). A stale position may move random weights' logits less than this (0.027 for
# random:phi-2-narrow in bfloat16), so check_replay compares positions, column and mask exactly
GRAPH_TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-2, torch.bfloat16: 5e-2}

if kv_cache.DynamicLayer is not None:

    class GraphLayer(kv_cache.ReservedLayer):
        """A ReservedLayer whose update writes the step's key and value at column `col` (a device
        tensor of one element, shared by the layers) and returns the whole reserved buffers. Its
        `keys`/`values` (views of the written columns, host side) are not advanced by the steps:
        GraphStep.compact sets them before compact_cache, which moves those columns."""

        col: torch.Tensor

        def update(self, key_states, value_states, *args, **kwargs):
            self._kbuf.index_copy_(2, self.col, key_states)
            self._vbuf.index_copy_(2, self.col, value_states)
            return self._kbuf, self._vbuf


def graph_layers(cache, width: int) -> list | None:
    """The layers of `cache` if every one is a kv_cache.ReservedLayer holding its keys in a buffer
    of at least `width` tokens (one step's keys may be written at any column below it); else None."""
    layers = getattr(cache, "layers", None)
    if kv_cache.DynamicLayer is None or not layers:
        return None
    for layer in layers:
        if not isinstance(layer, kv_cache.ReservedLayer) or not layer._in_buffer() or layer._kbuf.shape[-2] < width:
            return None
    return list(layers)


class GraphStep:
    """One decoding step on fixed tensors: `forward(ids, pos, valid)` runs the model on the rows'
    next token ids [B, 1] and positions [B, 1] with the batch's cache, each row seeing the cache
    columns `valid` [B, T] marks (through `pre`, a prefix_attention.Prefix read in place, or as
    the attention mask where `pre` is None) and returns its output; the step writes the argmax
    token into `ids`, its logits into `last`, and advances `col` and `pos`. `filled`: cache columns
    written so far (host side)."""

    def __init__(self, forward: Callable, cache, pre, logits: torch.Tensor, mask: torch.Tensor,
                 next_pos: torch.Tensor):
        B, n = mask.shape
        dev = mask.device
        self.forward, self.cache, self.pre = forward, cache, pre
        self.col = torch.full((1,), n, dtype=torch.long, device=dev)
        for layer in cache.layers:
            layer.__class__ = GraphLayer
            layer.col = self.col
            # the columns not written yet are read (masked out) by every step: no garbage in them
            layer._kbuf[..., n:, :].zero_()
            layer._vbuf[..., n:, :].zero_()
        T = cache.layers[0]._kbuf.shape[-2]
        self.valid = torch.zeros(B, T, dtype=torch.bool, device=dev)
        self.valid[:, :n] = mask.bool()
        self.ids = logits.argmax(-1, keepdim=True)
        self.last = logits.clone()  # the last step's logits (what check_replay compares)
        self.pos = next_pos.clone()
        self.filled = n

    def state(self) -> list[torch.Tensor]:
        """The tensors a step reads and advances (besides the cache column it writes): ids,
        pos, col, valid (which advance exactly) and last (the logits)."""
        return [self.ids, self.pos, self.col, self.valid, self.last]

    @property
    def rows(self) -> int:
        """Rows in the batch (live or finished)."""
        return self.ids.shape[0]

    def __call__(self) -> None:
        """One step (eager, or being captured)."""
        if self.pre is not None:
            self.pre.set_valid(self.valid)  # masks built from it are rebuilt within the step
        self.valid.index_fill_(1, self.col, True)
        out = self.forward(self.ids, self.pos, self.valid)
        self.last.copy_(out.logits[:, -1, :])
        self.ids.copy_(self.last.argmax(-1, keepdim=True))
        self.col.add_(1)
        self.pos.add_(1)

    def compact(self, order: list[int]) -> None:
        """Keep rows `order` (kv_cache.compact_order: the rows past len(order) move into the
        holes), moving only the written columns of the moved rows, in place (compact_cache)."""
        for layer in self.cache.layers:
            layer.use_buffers(layer._kbuf, layer._vbuf, self.filled)  # the columns written so far
        sel = compact_cache(self.cache, order, self.ids.device)
        self.valid, self.ids, self.pos, self.last = self.valid[sel], self.ids[sel], self.pos[sel], self.last[sel]
        if self.pre is not None:
            self.pre.keep_rows(order)


def capture(step: Callable[[], None], device: torch.device, pool) -> Callable[[], None] | None:
    """`step` captured as a CUDA graph (on a CUDA `device`); returns its replay, or None where
    there are no graphs (the caller runs the step eagerly). Nothing of the step runs here."""
    if device.type != "cuda":
        return None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        step()
    return graph.replay


def _eager(step: Callable[[], None], device: torch.device) -> None:
    """Run `step` once eagerly; on CUDA on a side stream (a graph's warm-up wants one)."""
    if device.type != "cuda":
        step()
        return
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream(device).wait_stream(side)


class StepRunner:
    """Runs a GraphStep once per call: GRAPH_WARMUP times eagerly, then captured (capture) and
    replayed; eagerly throughout where there are no graphs. `pool`: a CUDA graph memory pool
    shared by a batch's graphs (None: a new one)."""

    def __init__(self, step: GraphStep, device: torch.device, stats: dict, pool=None):
        self.step, self.device, self.stats, self.pool = step, device, stats, pool
        self.warm = GRAPH_WARMUP
        self.graphs = True  # False: no graphs here (capture returned None, or failed)
        self.replay: Callable[[], None] | None = None
        self.replays = 0

    def __call__(self) -> None:
        if self.replay is None and self.graphs and self.warm <= 0:
            self._capture()
        if self.replay is None:
            self.warm -= 1
            _eager(self.step, self.device)
            return
        if self.replays == 1:  # every graph, at its second replay
            self.check_replay()
            return
        self.replay()
        self.replays += 1
        self.stats["gen_graph_replays"] += 1

    def check_replay(self) -> bool:
        """A step replayed and, from the same state, run eagerly: if the positions, cache column
        and mask they leave differ, or their logits (a value the graph baked in at capture, an
        operation it did not record), graphs are turned off for the process with a warning.
        Done for every graph (each batch shape: a fault may show in one shape only), at its
        second replay (the first runs from the state it was captured in, where a baked value is
        still right): one eager step per capture. The eager step's state stands.
        Returns whether they agreed."""
        step, dev = self.step, self.device.type
        saved = [t.clone() for t in step.state()]
        self.replay()
        replayed = [t.clone() for t in step.state()]
        for t, before in zip(step.state(), saved):
            t.copy_(before)
        _eager(step, self.device)
        eager = step.state()
        exact = all(torch.equal(a, b) for a, b in zip(replayed[1:4], eager[1:4]))  # pos, col, valid
        got, ref = replayed[4].float(), eager[4].float()
        diff = (got - ref).abs().max().item()
        ok = exact and diff <= GRAPH_TOLERANCE.get(step.last.dtype, 5e-2) * max(1.0, ref.abs().max().item())
        GRAPHS_OK[dev] = ok  # a graph is captured only while no check or capture has failed (_capture)
        self.stats["gen_graph_checks"] += 1
        if not ok:
            log.warning("a decoding step replayed as a CUDA graph disagrees with the same step run eagerly on %s "
                        "(%s; max abs logit diff %.3g); decoding eagerly", dev,
                        "same positions and mask" if exact else "other positions or mask", diff)
            self.replay, self.graphs = None, False
        else:
            self.replays += 1
        return ok

    def _capture(self) -> None:
        """Capture the step (nothing of it runs); on failure, graphs off for the process."""
        if GRAPHS_OK.get(self.device.type) is False:
            self.graphs = False
            return
        try:
            self.replay = capture(self.step, self.device, self.pool)
        except torch.cuda.OutOfMemoryError:
            raise  # the batch is retried with half the budget (batching.run_batched), graphs still on
        except Exception as exc:  # noqa: BLE001 - any other capture failure: eager steps from now on
            GRAPHS_OK[self.device.type] = False
            log.warning("decoding step could not be captured as a CUDA graph (%s); decoding eagerly",
                        first_line(exc)[:200])
        if self.replay is None:
            self.graphs = False
            return
        self.stats["gen_graph_captures"] += 1


def decode(forward: Callable, logits, cache, mask, next_pos, pre, stops, max_gen: int, stats: dict) -> bool:
    """Greedy decoding steps after a batch's prefill (as fast.FastLM._decode_steps: `logits` at
    each row's last prompt token, its KV cache, the mask of its columns [B, n], next positions
    [B, 1], `pre` a single shared prefix read in place or None, `stops` a stops.StopCheck) with
    GraphSteps (`forward`: see GraphStep).
    Returns False, having done nothing, where the cache is not a reserved buffer with room for
    max_gen - 1 more tokens."""
    if graph_layers(cache, mask.shape[1] + max_gen - 1) is None:
        return False
    step = GraphStep(forward, cache, pre, logits, mask, next_pos)
    device = mask.device
    pool = torch.cuda.graph_pool_handle() if device.type == "cuda" else None
    run = StepRunner(step, device, stats, pool)
    active = list(range(step.rows))  # original row of each batch row
    live = list(range(step.rows))  # batch rows still decoding
    while True:
        toks = step.ids[:, 0].tolist()
        t = time.perf_counter()
        stats["gen_tokens"] += len(live)
        live = [k for k in live if not stops.add(active[k], toks[k])]
        if not live:
            return True
        if len(live) <= step.rows // 2:  # half the rows finished: a smaller graph
            order = compact_order(live, step.rows)
            step.compact(order)
            active = [active[k] for k in order]
            live = list(range(len(order)))
            run = StepRunner(step, device, stats, pool)
        # the host's own time between steps (stop checks), while the device waits for the next
        # step: what pipelining the host reads would hide (reported by bench_decode_step.py)
        stats["gen_step_host_s"] += time.perf_counter() - t
        run()
        step.filled += 1
        stats["gen_graph_steps"] += 1
