"""ARC-Easy: this harness (its YAML, loader and default fast backend) and lm-eval's built-in arc_easy
task scored by lm-eval's own HF backend give the same per-sample predictions."""

from pathlib import Path

import lm_eval
import pytest
import yaml
from lm_eval.api.task import ConfigurableTask

from evals import config, data
from evals.backends import DEFAULT_BACKEND, make_lm
from evals.run import RunOptions, run_one, task_manager

pytestmark = pytest.mark.integration
LIMIT = 16


def builtin_arc_easy() -> ConfigurableTask:
    """lm-eval's own arc_easy.yaml, with only its data source swapped for our local loader (same rows)."""
    path = Path(lm_eval.__file__).parent / "tasks" / "arc" / "arc_easy.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg.pop("dataset_path"), cfg.pop("dataset_name")
    cfg["custom_dataset"] = data.load
    cfg["dataset_kwargs"] = {"benchmark": "arc_easy"}
    cfg["training_split"] = None  # zero-shot: the local release has no train split to load
    cfg["task"] = "lm_eval_builtin_arc_easy"
    return ConfigurableTask(config=cfg)


def test_same_predictions_as_lm_eval_builtin(shared_data, embedded_model):
    ours_bench = config.select(["arc_easy"])[0]
    ours, samples = run_one(ours_bench, make_lm(DEFAULT_BACKEND, embedded_model), task_manager(),
                            embedded_model.info, RunOptions(limit=LIMIT), shared_data)
    assert ours["runner"]["backend_class"] == "FastLM"
    builtin = builtin_arc_easy()
    assert builtin.config.doc_to_text == yaml.safe_load(ours_bench.path.read_text().replace("!function", ""))["doc_to_text"]
    hf = make_lm("hf", embedded_model)
    out = lm_eval.simple_evaluate(model=hf, tasks=[builtin], limit=LIMIT, log_samples=True, verbosity="ERROR")
    theirs = sorted(out["samples"]["lm_eval_builtin_arc_easy"], key=lambda s: s["doc_id"])
    mine = sorted(samples, key=lambda s: s["doc_id"])
    assert len(theirs) == len(mine) == LIMIT
    for a, b in zip(mine, theirs):
        lls = [r[0] for r in b["filtered_resps"]]
        assert a["prediction"] == max(range(len(lls)), key=lls.__getitem__)
        assert max(abs(x - y) for x, y in zip(a["loglikelihoods"], lls)) < 1e-4
        assert a["correct"] == b["acc"]
    assert ours["score"] == out["results"]["lm_eval_builtin_arc_easy"]["acc,none"]
