"""Integration: the nine multiple-choice benchmarks on the real data with the embedded model."""

import json

import pytest

from evals import config
from evals.run import RunOptions, prepare, run_one, task_manager
from evals import results

pytestmark = pytest.mark.integration

# Small per-task limits that keep CI fast; mmlu's limit is per subject (57 subjects).
LIMITS = {"piqa": 12, "winogrande": 12, "arc_easy": 12, "arc_challenge": 12, "siqa": 12,
          "hellaswag": 8, "openbookqa": 12, "mmlu": 1, "boolq": 8}


@pytest.mark.parametrize("name", list(LIMITS))
def test_benchmark_on_real_data(name, shared_data, embedded_model, embedded_lm, tmp_path):
    bench = config.select([name])[0]
    tm = task_manager()
    prepare([bench], tm)
    opts = RunOptions(limit=LIMITS[name], output_dir=tmp_path)
    result, samples = run_one(bench, embedded_lm, tm, embedded_model.info, opts, shared_data)
    path = results.write_result(tmp_path, "smollm2-135m", result, samples)
    saved = json.loads(path.read_text())
    assert 0.0 < saved["score"] < 1.0, (name, saved["score"])
    assert saved["partial"] is True and saved["n"] < saved["n_total"]
    assert saved["n"] == len(samples) and samples[0]["loglikelihoods"]
    assert all(len(h) == 64 for h in saved["data"]["files"].values()) and saved["data"]["files"]
    assert (tmp_path / "smollm2-135m" / f"{name}.samples.jsonl").is_file()
