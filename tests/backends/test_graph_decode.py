"""graph_decode.py: fixed-shape decoding steps under a shared prefix, replayed as graphs.

There is no GPU here, so the graphs are replayed by a CPU stand-in (graph_emulator.py) that,
like a CUDA graph, re-runs the captured operations on the same tensors: a step that baked a
host value into its graph would give other text than the default decoding path."""

from __future__ import annotations

import logging

import pytest
import torch

from evals.backends import graph_decode
from evals.backends.fast import FastLM
from tests.backends.graph_emulator import CaptureSyncError, EmulatedGraph, emulated_capture
from tests.backends.prompts import FEWSHOT

# rows that finish at different steps (a sum, a list running to max_gen, ...): the batch compacts
QUESTIONS = ["What is 5 plus 5?", "What is 11 plus 4?", "Name three colours.", "Tell me a story about a cat.",
             "What is 2 plus 30?", "List the days of the week.", "Describe the sea.", "What is 8 plus 1?"]
UNTIL = ["\n\n", "Q:"]


@pytest.fixture(scope="module")
def prompts(smol):
    _, tok = smol
    return [tok(FEWSHOT + f"Q: {q}\nA:")["input_ids"] for q in QUESTIONS]


@pytest.fixture(scope="module")
def reference(smol, prompts):
    """The default decoding path's texts (itself tested against HFLM in test_greedy.py)."""
    model, tok = smol
    with torch.inference_mode():
        return FastLM(model, tok, max_length=2048)._greedy_batch(prompts, UNTIL, 24)


@pytest.fixture
def fresh_state(monkeypatch):
    """The process-wide checks (graphs, fused attention) start afresh and are restored after."""
    from evals.backends import prefix_attention

    monkeypatch.setattr(graph_decode, "GRAPHS_OK", {})
    monkeypatch.setattr(prefix_attention, "LSE_PATH", {})


def _decode(smol, prompts, max_gen=24, in_place=True, until=UNTIL, widen=True):
    model, tok = smol
    lm = FastLM(model, tok, max_length=2048, cuda_graphs=True)
    lm._shared_decode, lm._widen_prefill = in_place, widen
    with torch.inference_mode():
        return lm._greedy_batch(prompts, until, max_gen), lm.stats


def test_fixed_shape_steps_give_the_default_texts(smol, prompts, reference, fresh_state, monkeypatch):
    """On the CPU (no graphs) the fixed-shape steps run eagerly: the same texts, rows compacted."""
    sizes, real = [], graph_decode.GraphStep.compact
    monkeypatch.setattr(graph_decode.GraphStep, "compact", lambda self, order: sizes.append(len(order)) or real(self, order))
    got, stats = _decode(smol, prompts)
    assert got == reference
    assert stats["gen_graph_steps"] == 23 and stats["gen_graph_replays"] == 0
    assert sizes and sizes[0] <= len(prompts) // 2  # half the rows finished: they left the batch


@pytest.mark.parametrize("in_place", [True, False], ids=["prefix-in-place", "prefix-in-rows-cache"])
def test_replayed_graphs_give_the_default_texts(smol, prompts, reference, fresh_state, monkeypatch, in_place):
    """Each batch shape captured once and replayed (CPU stand-in for a CUDA graph): the same
    texts, including after the rows are compacted and the step captured again; with the shared
    prefix read in place and with it copied into every row's cache (SDPA over a 4-D mask)."""
    monkeypatch.setattr(graph_decode, "capture", emulated_capture)
    got, stats = _decode(smol, prompts, in_place=in_place)
    assert got == reference
    assert stats["gen_prefix_in_place_batches"] == int(in_place)
    assert stats["gen_graph_captures"] == 2  # the full batch, then the rows left after compaction
    assert stats["gen_graph_checks"] == 2 and graph_decode.GRAPHS_OK["cpu"] is True  # each graph == eager step
    assert stats["gen_graph_replays"] == stats["gen_graph_steps"] - 2 * graph_decode.GRAPH_WARMUP - 2


def test_prompts_without_a_shared_prefix_replay_too(smol, fresh_state, monkeypatch):
    """Left-padded prompts of different lengths and no common prefix: the same texts as the
    default path, and as each prompt decoded alone."""
    from tests.backends.prompts import GEN_PROMPTS

    model, tok = smol
    enc = [tok(p)["input_ids"] for p in GEN_PROMPTS[:4]]
    with torch.inference_mode():
        ref = FastLM(model, tok, max_length=2048)._greedy_batch(enc, ["\n", "."], 16)
    monkeypatch.setattr(graph_decode, "capture", emulated_capture)
    got, stats = _decode(smol, enc, 16, until=["\n", "."])
    assert got == ref and stats["gen_graph_replays"] > 0


def test_a_step_that_reads_the_device_on_the_host_is_not_captured(smol, prompts, reference, fresh_state,
                                                                    monkeypatch, caplog):
    """A cache layer writing at a Python column (read from the device) cannot be captured: the
    capture fails, graphs are turned off with a warning, and the steps run eagerly, same texts."""
    monkeypatch.setattr(graph_decode, "capture", emulated_capture)

    def host_column(self, key_states, value_states, *args, **kwargs):
        c = int(self.col.item())
        self._kbuf[:, :, c:c + 1] = key_states
        self._vbuf[:, :, c:c + 1] = value_states
        return self._kbuf, self._vbuf

    monkeypatch.setattr(graph_decode.GraphLayer, "update", host_column)
    with caplog.at_level(logging.WARNING):
        got, stats = _decode(smol, prompts)
    assert got == reference
    assert stats["gen_graph_replays"] == 0 and graph_decode.GRAPHS_OK["cpu"] is False
    assert "could not be captured as a CUDA graph" in caplog.text


def _new_positions(self):
    """GraphStep.__call__ with `pos = pos + 1` for `pos.add_(1)`: right eagerly, stale in a graph."""
    self.pre.set_valid(self.valid)
    self.valid.index_fill_(1, self.col, True)
    out = self.forward(self.ids, self.pos, self.valid)
    self.last.copy_(out.logits[:, -1, :])
    self.ids.copy_(self.last.argmax(-1, keepdim=True))
    self.col.add_(1)
    self.pos = self.pos + 1


def test_a_graph_that_baked_a_host_value_is_caught_by_its_check(smol, prompts, reference, fresh_state,
                                                               monkeypatch, caplog):
    """A step that advances its positions into a new tensor runs right eagerly, but its graph
    keeps reading the positions it captured: the check of the first graph's second replay
    against the eager step catches it, turns graphs off with a warning, and the texts stay right."""
    monkeypatch.setattr(graph_decode, "capture", emulated_capture)
    monkeypatch.setattr(graph_decode.GraphStep, "__call__", _new_positions)
    with caplog.at_level(logging.WARNING):
        got, stats = _decode(smol, prompts)
    assert got == reference
    assert graph_decode.GRAPHS_OK["cpu"] is False and stats["gen_graph_checks"] == 1
    assert stats["gen_graph_replays"] == 1  # the first replay only, from the captured state
    assert "disagrees with the same step run eagerly" in caplog.text


def test_a_fault_in_a_later_graph_shape_is_caught_too(smol, prompts, reference, fresh_state, monkeypatch, caplog):
    """Every graph is checked, not only a process's first: a step that goes stale only after the
    batch is compacted (its second graph) is caught there, graphs go off, the texts stay right."""
    monkeypatch.setattr(graph_decode, "capture", emulated_capture)
    real = graph_decode.GraphStep.compact

    def compact_then_stale(self, order):
        real(self, order)
        self.__class__ = type("StaleStep", (graph_decode.GraphStep,), {"__call__": _new_positions})

    monkeypatch.setattr(graph_decode.GraphStep, "compact", compact_then_stale)
    with caplog.at_level(logging.WARNING):
        got, stats = _decode(smol, prompts)
    assert got == reference
    assert stats["gen_graph_captures"] == 2 and stats["gen_graph_checks"] == 2
    assert graph_decode.GRAPHS_OK["cpu"] is False
    assert "disagrees with the same step run eagerly" in caplog.text


def test_the_emulator_bakes_host_values_into_its_graph():
    """The stand-in fails where a CUDA graph would: a column chosen on the host is the captured
    one at every replay; one held in a device tensor advances."""
    buf = torch.zeros(2, 4)
    col, host = torch.zeros(1, dtype=torch.long), {"col": 0}

    def device_step():
        buf.index_fill_(1, col, 1.0)
        col.add_(1)

    def host_step():
        buf[:, host["col"]] = 2.0
        host["col"] += 1

    for step in (device_step, host_step):
        graph, before = EmulatedGraph(), buf.clone()
        graph.capture(step)
        assert torch.equal(buf, before) and col.item() in (0, 3)  # capture changes no tensor
        for _ in range(3):
            graph.replay()
    assert buf.tolist() == [[2.0, 1.0, 1.0, 0.0]] * 2  # host: column 0 three times; device: 0, 1, 2


_X, _MASK, _REPEATS = torch.arange(6.0), torch.arange(6) > 2, torch.ones(6, dtype=torch.long)
# what a CUDA capture refuses: a value read on the host, an output sized by device data, host data copied in
REFUSED = {"item": lambda: _X.add_(_X.sum().item()), "bool": lambda: bool(_X.any()), "nonzero": lambda: _MASK.nonzero(),
           "boolean index": lambda: _X[_MASK], "boolean index write": lambda: _X.__setitem__(_MASK, 0.0),
           "masked_select": lambda: _X.masked_select(_MASK), "unique": lambda: _X.unique(),
           "repeat_interleave": lambda: _X.repeat_interleave(_REPEATS), "torch.tensor(list)": lambda: torch.tensor([1, 2])}
# what it takes: fixed-size results, integer indices, a scalar
ALLOWED = {"where": lambda: torch.where(_MASK, _X, 0.0), "masked_fill_": lambda: _X.masked_fill_(_MASK, 0.0),
           "integer index": lambda: _X[torch.arange(3)], "index_fill_": lambda: _X.index_fill_(0, _REPEATS[:1], 1.0),
           "repeat_interleave with output_size": lambda: _X.repeat_interleave(_REPEATS, output_size=6),
           "repeat_interleave by an int": lambda: _X.repeat_interleave(2), "torch.tensor(scalar)": lambda: torch.tensor(3.0)}


@pytest.mark.parametrize("name", REFUSED)
def test_the_emulator_refuses_what_a_cuda_capture_refuses(name):
    before = _X.clone()
    with pytest.raises(CaptureSyncError):
        EmulatedGraph().capture(lambda: (_X.add_(1.0), REFUSED[name]()))
    assert torch.equal(_X, before)  # a failed capture has run nothing either


@pytest.mark.parametrize("name", ALLOWED)
def test_the_emulator_captures_fixed_size_operations(name):
    before = _X.clone()
    EmulatedGraph().capture(ALLOWED[name])
    assert torch.equal(_X, before)  # captured, nothing changed


def test_only_a_reserved_cache_decodes_in_graphs(smol, prompts, reference, fresh_state, monkeypatch):
    """Without a cache reserved for the whole decode (reserve_kv off) the default steps run."""
    monkeypatch.setattr(FastLM, "reserve_kv", False)
    got, stats = _decode(smol, prompts)
    assert got == reference and stats["gen_graph_steps"] == 0
    assert graph_decode.graph_layers(None, 8) is None


@pytest.mark.parametrize("in_place", [True, False], ids=["prefix-in-place", "prefix-in-rows-cache"])
def test_garbage_in_the_unwritten_cache_columns_is_never_read(smol, prompts, reference, fresh_state, monkeypatch,
                                                              in_place):
    """A reserved buffer holds whatever memory it was given (on a GPU, freed tensors' bytes). The
    steps read its unwritten columns masked out, and a masked NaN still poisons the products
    (0 x NaN): filled with NaN, they give the default texts (one prefill group: reserve_cache)."""
    from evals.backends import kv_cache

    real = kv_cache.ReservedLayer.reserve

    def poisoned(self, extra):
        n = self.keys.shape[-2]
        real(self, extra)
        self._kbuf[..., n:, :] = float("nan")
        self._vbuf[..., n:, :] = float("nan")

    monkeypatch.setattr(kv_cache.ReservedLayer, "reserve", poisoned)
    got, stats = _decode(smol, prompts, in_place=in_place, widen=False)
    assert got == reference and stats["gen_graph_steps"] == 23 and stats["gen_prefill_passes"] == 1


@pytest.mark.parametrize("in_place", [True, False], ids=["prefix-in-place", "prefix-in-rows-cache"])
def test_phi_architecture_replays_the_default_tokens(fresh_state, monkeypatch, in_place):
    """Phi's own layers (partial rotary, parallel attention and MLP; random weights, so every row
    runs to max_gen): the tokens of replayed graphs equal the default path's."""
    from evals.random_model import build_random

    model, tok, _ = build_random("tiny-phi", "float32", "cpu")
    prompts = [tok(FEWSHOT + f"Q: {q}\nA:")["input_ids"] for q in QUESTIONS[:5]]
    with torch.inference_mode():
        default = FastLM(model, tok, max_length=2048)
        default._shared_decode = in_place
        ref = default._greedy_batch(prompts, ["@@never@@"], 12)
    monkeypatch.setattr(graph_decode, "capture", emulated_capture)
    lm = FastLM(model, tok, max_length=2048, cuda_graphs=True)
    lm._shared_decode = in_place
    with torch.inference_mode():
        got = lm._greedy_batch(prompts, ["@@never@@"], 12)
    assert got == ref and lm.stats["gen_graph_replays"] == 11 - graph_decode.GRAPH_WARMUP - lm.stats["gen_graph_checks"]
    assert lm.stats["gen_prefix_in_place_batches"] == int(in_place)


def test_out_of_memory_in_a_capture_is_left_to_the_budget_backoff(smol, prompts, reference, fresh_state,
                                                                  monkeypatch):
    """An out-of-memory error while capturing propagates (run_batched halves the budget and
    retries the batch) and leaves graphs on; other capture errors turn them off."""
    calls = []

    def oom_once(step, device, pool):
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return emulated_capture(step, device, pool)

    monkeypatch.setattr(graph_decode, "capture", oom_once)
    model, tok = smol
    lm = FastLM(model, tok, max_length=2048, cuda_graphs=True)
    with torch.inference_mode(), pytest.raises(torch.cuda.OutOfMemoryError):
        lm._greedy_batch(prompts, UNTIL, 24)
    assert "cpu" not in graph_decode.GRAPHS_OK
    got, stats = _decode(smol, prompts)
    assert got == reference and stats["gen_graph_replays"] > 0


def test_the_check_compares_positions_exactly_where_logits_barely_move(fresh_state, monkeypatch, caplog):
    """Random weights in bfloat16: a position one step stale moves the logits by less than the
    half-precision tolerance (0.004 here), so the check also compares the positions, column and
    mask the two steps leave, exactly."""
    from evals.random_model import build_random

    monkeypatch.setattr(graph_decode, "capture", emulated_capture)
    monkeypatch.setattr(graph_decode.GraphStep, "__call__", _new_positions)
    model, tok, _ = build_random("tiny-phi", "bfloat16", "cpu")
    prompts = [tok(FEWSHOT + f"Q: {q}\nA:")["input_ids"] for q in QUESTIONS[:4]]
    lm = FastLM(model, tok, max_length=2048, cuda_graphs=True)
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        lm._greedy_batch(prompts, ["@@never@@"], 6)
    assert graph_decode.GRAPHS_OK["cpu"] is False and lm.stats["gen_graph_checks"] == 1
    assert "other positions or mask" in caplog.text
