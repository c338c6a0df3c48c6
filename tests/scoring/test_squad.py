"""SQuAD v2 EM/F1 (official evaluate-v2.0.py rules) against hand-computed values."""

from pathlib import Path

import pytest

from evals.scoring import squad

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "generative"


@pytest.mark.parametrize("text, expected", [
    ("The Cat!", "cat"),
    ("  An  apple, a pear & the plum. ", "apple pear plum"),
    ("theory of the atom", "theory of atom"),  # 'the' only as a whole word
    ("U.S.A.", "usa"),
    ("", ""),
])
def test_normalize_answer(text, expected):
    assert squad.normalize_answer(text) == expected


@pytest.mark.parametrize("gold, pred, f1", [
    ("the big red dog", "a red dog barked", 2 / 3),   # 2 common of 3 and 3 tokens
    ("1901", "in 1901", 2 / 3),                       # p 1/2, r 1
    ("x x y", "x y y", 2 / 3),                        # multiset overlap: x once, y once
    ("Paris", "paris.", 1.0),
    ("Paris", "London", 0.0),
    ("", "", 1.0),                                    # both empty
    ("", "something", 0.0),
    ("Paris", "", 0.0),
    ("the", "", 1.0),                                 # normalises to empty
])
def test_compute_f1(gold, pred, f1):
    assert squad.compute_f1(gold, pred) == pytest.approx(f1)


def test_compute_exact():
    assert squad.compute_exact("The Cat!", "cat") == 1
    assert squad.compute_exact("1901", "in 1901") == 0
    assert squad.compute_exact("", "") == 1


def test_gold_answers_unanswerable_is_empty_string():
    assert squad.gold_answers([]) == [""]
    assert squad.gold_answers(["the", "."]) == [""]
    assert squad.gold_answers(["1901", "the"]) == ["1901"]


def test_score_max_over_golds_and_unanswerable():
    golds = ["1901", "in 1901"]
    assert squad.score(golds, "in 1901") == {"exact_match": 1.0, "f1": 1.0}
    got = squad.score(golds, "founded in 1901")  # vs "1901": 0.5; vs "in 1901": p 2/3, r 1 -> 0.8
    assert got["exact_match"] == 0.0 and got["f1"] == pytest.approx(0.8)
    assert squad.score([], "") == {"exact_match": 1.0, "f1": 1.0}
    assert squad.score([], "Brick family") == {"exact_match": 0.0, "f1": 0.0}
    assert squad.score(golds, "") == {"exact_match": 0.0, "f1": 0.0}


@pytest.mark.parametrize("generation, pred", [
    (" France\n", "France"),
    (" Unanswerable.", ""),
    ("unanswerable\nQuestion: more", ""),
    (" the answer is unanswerable", "the answer is unanswerable"),  # only the bare word maps to ""
    ("", ""),
])
def test_prediction_rule(generation, pred):
    assert squad.prediction(generation) == pred


def test_process_results_on_fixture_file():
    """Loader + hook on the hand-written dev file: EM 1/3, F1 (1 + 0 + 2/3) / 3 = 5/9."""
    from evals.loaders.generative import squad_v2

    rows = {r["id"]: r for r in squad_v2(FIXTURES)["validation"]}
    generations = {"q1": " in 1901", "q2": " Brick family", "q3": " nothing happens"}
    scores = [squad.process_results(rows[i], [g]) for i, g in generations.items()]
    assert [s["exact_match"] for s in scores] == [1.0, 0.0, 0.0]
    assert sum(s["exact_match"] for s in scores) / 3 == pytest.approx(1 / 3)
    assert sum(s["f1"] for s in scores) / 3 == pytest.approx(5 / 9)
    assert squad.process_results(rows["q2"], [" unanswerable"]) == {"exact_match": 1.0, "f1": 1.0}


def test_doc_to_target():
    assert squad.doc_to_target({"answers": {"text": ["France", "France"], "answer_start": [1, 1]}}) == "France"
    assert squad.doc_to_target({"answers": {"text": [], "answer_start": []}}) == "unanswerable"


def test_fewshot_and_eval_docs_split_by_fixed_ids():
    import datasets

    a, u = squad.FEWSHOT_IDS
    rows = [{"id": i, "answers": {"text": [], "answer_start": []}} for i in ("x1", u, "x2", a, "x3")]
    ds = datasets.Dataset.from_list(rows)
    assert [r["id"] for r in squad.fewshot_docs(ds)] == [a, u]          # answerable first
    assert [r["id"] for r in squad.eval_docs(ds)] == ["x1", "x2", "x3"]
    with pytest.raises(ValueError, match="few-shot exemplar ids"):
        squad.fewshot_docs(datasets.Dataset.from_list(rows[:2]))
