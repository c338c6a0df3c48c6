"""Oracle tests: a fake model that knows the gold answer scores 100%, one that avoids it 0%.

They run the real pipeline (task YAMLs -> lm-eval -> result dict) on the hand-written fixtures.
"""

import shutil

import pytest
from lm_eval.api.model import LM

from evals import config
from evals.loaders.mmlu import SUBJECTS
from evals.run import RunOptions, gold_index, prepare, run_one, task_manager
from tests.conftest import FIXTURE_DATA

NINE = ["piqa", "winogrande", "arc_easy", "arc_challenge", "siqa", "hellaswag", "openbookqa", "mmlu", "boolq"]


class OracleLM(LM):
    """Puts all probability on the gold choice (or, with wrong=True, on the next choice)."""

    def __init__(self, tasks: dict, wrong: bool = False):
        super().__init__()
        self.tasks, self.wrong = tasks, wrong

    def loglikelihood(self, requests, disable_tqdm=False):
        out = []
        for req in requests:
            task = self.tasks[req.task_name]
            gold = gold_index(task, req.doc)
            n = len(task.doc_to_choice(req.doc))
            pick = (gold + 1) % n if self.wrong else gold
            out.append((0.0 if req.idx == pick else -100.0, req.idx == pick))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        raise NotImplementedError

    def generate_until(self, requests, disable_tqdm=False):
        raise NotImplementedError


@pytest.fixture
def oracle_data(tmp_path, monkeypatch):
    """The fixtures, with the one MMLU fixture subject copied to all 57 subjects."""
    root = tmp_path / "data"
    shutil.copytree(FIXTURE_DATA, root)
    for folder in ("test", "dev", "val"):
        src = root / "mmlu" / folder / f"abstract_algebra_{folder}.csv"
        for subject in SUBJECTS:
            if subject != "abstract_algebra":
                shutil.copy(src, root / "mmlu" / folder / f"{subject}_{folder}.csv")
    monkeypatch.setenv("PHI2EVAL_DATA_DIR", str(root))
    return root


@pytest.mark.parametrize("wrong, expected", [(False, 1.0), (True, 0.0)])
def test_oracle_scores_are_exact(oracle_data, wrong, expected):
    benches = config.select(NINE)
    tm = task_manager()
    built = prepare(benches, tm)
    tasks = {name: task for leaves in built.values() for name, task in leaves.items()}
    lm = OracleLM(tasks, wrong=wrong)
    for bench in benches:
        result, samples = run_one(bench, lm, tm, {"name": "oracle", "device": "cpu"}, RunOptions(), oracle_data,
                                  built[bench.name])
        assert result["score"] == expected, bench.name
        assert result["n"] == result["n_total"] > 0 and result["partial"] is False
        assert all(s["correct"] == expected for s in samples), bench.name
        assert all((s["prediction"] == s["gold"]) == (not wrong) for s in samples), bench.name
    assert result["benchmark"] == "boolq" and set(result["data"]["files"]) == {"boolq/val.jsonl"}
