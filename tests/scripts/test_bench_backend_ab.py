"""scripts/bench_backend_ab.py: an old revision runs its own modules, and a record names the
working tree's change to evals/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_backend_ab  # noqa: E402


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
