"""Integration: the generative benchmarks on the real data with the embedded model (small limits)."""

import json

import pytest

from evals import config, results
from evals.run import RunOptions, prepare, run_one, task_manager

pytestmark = pytest.mark.integration

# bbh's limit is per task (27 tasks). To keep CI short, bbh generates at most 48 tokens and the code tasks 96
# tokens here (the YAMLs allow 512); the override is recorded in the result, as it is for users.
LIMITS = {"gsm8k": 3, "squad_v2": 6, "bbh": 1, "humaneval": 3, "mbpp": 3}
GEN_LIMITS = {"bbh": 48, "humaneval": 96, "mbpp": 96}


@pytest.mark.parametrize("name", list(LIMITS))
def test_generative_benchmark_on_real_data(name, shared_data, embedded_model, embedded_lm, tmp_path):
    bench = config.select([name])[0]
    tm = task_manager()
    built = prepare([bench], tm)
    result, samples = run_one(bench, embedded_lm, tm, embedded_model.info, RunOptions(limit=LIMITS[name], max_gen_toks=GEN_LIMITS.get(name)), shared_data,
                              built[name])
    path = results.write_result(tmp_path, "smollm2-135m", result, samples)
    saved = json.loads(path.read_text())
    assert saved["partial"] is True and saved["n"] == len(samples) == LIMITS[name] * max(1, len(bench.subtasks))
    assert 0.0 <= saved["score"] <= 1.0 and saved["scored"] is True
    assert all(isinstance(s["generation"], str) for s in samples)
    assert all(s["prompt"] for s in samples)
    assert saved["protocol"]["max_gen_toks_override"] == GEN_LIMITS.get(name)
    if bench.category == "coding":
        assert all(s["status"] in ("passed", "failed", "timeout") for s in samples)
        assert all((s["status"] == "passed") == bool(s["passed"]) for s in samples)
    assert (tmp_path / "smollm2-135m" / f"{name}.samples.jsonl").read_text().count("\n") == len(samples)
