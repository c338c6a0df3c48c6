"""BBH answer extraction on literal strings and on the real gold targets; GSM8K filters on gold."""

import json
import os
from pathlib import Path

import pytest

from evals.scoring.extract import BBH_INVALID, bbh_answer, bbh_filter

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("PHI2EVAL_DATA_DIR", REPO.parent / "shared" / "data"))
TASKS_DIR = REPO / "configs" / "tasks"


@pytest.mark.parametrize("generation, expected", [
    ("A = True. So the answer is True.", "True"),
    ("... So the answer is (B).", "(B)"),
    ("So the answer is (C) blue.", "(C)"),
    ("so the answer is: (D).", "(D)"),
    ("So the answer is A.", "(A)"),
    ("So the answer is -219.", "-219"),
    ("So the answer is 3.5.", "3.5"),
    ("So the answer is } ] >.", "} ] >"),
    ("So the answer is Monsters, Inc.", "Monsters, Inc"),
    ("So the answer is apple banana cherry.", "apple banana cherry"),
    ("So the answer is Yes. This is because the rule applies.", "Yes"),
    ("So the answer is valid.\n\nQ: next question", "valid"),
    ("First. So the answer is (A).\nSo the answer is (B).", "(A)"),
    ("So the answer is   no  .", "no"),
    ("I think it is (A).", BBH_INVALID),
    ("", BBH_INVALID),
])
def test_bbh_answer_literals(generation, expected):
    assert bbh_answer(generation) == expected


def test_bbh_filter_shape():
    assert bbh_filter([["So the answer is (A).", "no cue"], ["So the answer is 7."]], [{}, {}]) == [["(A)", BBH_INVALID], ["7"]]


def _bbh_tasks():
    from evals.loaders.generative import BBH_TASKS
    return BBH_TASKS


@pytest.mark.integration
@pytest.mark.parametrize("task", _bbh_tasks())
def test_bbh_gold_chains_score_100(task):
    path = DATA / "bbh" / "bbh" / f"{task}.json"
    if not path.is_file():
        pytest.skip(f"no BBH data at {path}")
    examples = json.loads(path.read_text(encoding="utf-8"))["examples"]
    wrong = [ex["target"] for ex in examples
             if bbh_answer(f"Step one.\nStep two. So the answer is {ex['target']}.") != ex["target"]]
    assert not wrong, wrong[:5]


# ---- GSM8K: the YAML's own filters and metric, as lm-eval builds them ----

def _gsm8k_yaml() -> dict:
    from lm_eval.tasks._yaml_loader import load_yaml
    return load_yaml(TASKS_DIR / "gsm8k.yaml", resolve_func=False)


def _gsm8k_scores(generations: list[str], references: list[str]) -> dict[str, float]:
    """exact_match per filter, through lm-eval's filter registry and exact_match metric."""
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters import build_filter_ensemble

    cfg = _gsm8k_yaml()
    kwargs = {k: v for k, v in cfg["metric_list"][0].items() if k not in ("metric", "aggregation", "higher_is_better")}
    out = {}
    for spec in cfg["filter_list"]:
        ensemble = build_filter_ensemble(spec["name"], [(f["function"], {k: v for k, v in f.items() if k != "function"})
                                                         for f in spec["filter"]])
        resps = [[g] for g in generations]
        for f in ensemble.filters:
            resps = f().apply(resps, [{}] * len(resps))
        preds = list(resps)
        out[spec["name"]] = exact_match_hf_evaluate(predictions=preds, references=references, **kwargs)["exact_match"]
    return out


def test_gsm8k_filters_literals():
    refs = ["18", "1000", "-3", "18"]
    gens = [" She has 16 - 3 - 4 = 9 eggs, 9 * 2 = 18. The answer is 18.\n\n",
            " 10 * 100 = 1,000. The answer is 1,000.\n\n",
            " 2 - 5 = -3. The answer is -3.",
            " 9 * 2 = $18 dollars in total"]  # no "The answer is": only flexible-extract finds 18
    scores = _gsm8k_scores(gens, refs)
    assert scores["strict-match"] == pytest.approx(3 / 4)
    assert scores["flexible-extract"] == pytest.approx(1.0)


@pytest.mark.integration
def test_gsm8k_gold_solutions_score_100():
    path = DATA / "gsm8k" / "test.jsonl"
    if not path.is_file():
        pytest.skip(f"no GSM8K data at {path}")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(rows) == 1319
    # the reference solution, calculator annotations removed, "#### N" rewritten as "The answer is N."
    import re
    gens, refs = [], []
    for row in rows:
        body, _, final = row["answer"].rpartition("####")
        body = re.sub(r"<<[^>]*>>", "", body).strip()
        gens.append(f" {body} The answer is {final.strip()}.\n\n")
        refs.append(row["answer"].split("####")[-1].strip())  # the YAML's doc_to_target
    scores = _gsm8k_scores(gens, refs)
    assert scores == {"strict-match": 1.0, "flexible-extract": 1.0}


def test_gsm8k_yaml_matches_lm_eval_gsm8k_cot():
    """Exemplars, prompt, filters, stops and metric are lm-eval's gsm8k-cot, unchanged."""
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    ours = _gsm8k_yaml()
    ref = load_yaml(Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k-cot.yaml", resolve_func=False)
    for key in ("doc_to_text", "doc_to_target", "num_fewshot", "filter_list", "metric_list"):
        assert ours[key] == ref[key], key
    assert ours["fewshot_config"] == ref["fewshot_config"]
    assert ours["generation_kwargs"]["until"] == ref["generation_kwargs"]["until"]
    assert len(ours["fewshot_config"]["samples"]) == 8
