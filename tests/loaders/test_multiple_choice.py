"""Local loaders on hand-written fixtures in each original release format."""

import pytest

from evals import data
from evals.errors import DataError
from evals.loaders.multiple_choice import parse_obqa_choices


def test_arc_release_layout_becomes_hub_schema(fixture_data):
    rows = data.read_local("arc_easy", fixture_data)
    assert set(rows) == {"test", "validation"}
    first = rows["test"][0]
    assert first == {"id": "Fixture_1", "question": "Which object is a source of light?",
                     "choices": {"text": ["the Sun", "a rock", "a chair"], "label": ["A", "B", "C"]}, "answerKey": "A"}
    assert rows["test"][1]["choices"]["label"] == ["1", "2", "3", "4"]


def test_piqa_siqa_winogrande_join_label_files(fixture_data):
    assert [r["label"] for r in data.read_local("piqa", fixture_data)["validation"]] == [0, 1]
    assert [r["label"] for r in data.read_local("siqa", fixture_data)["validation"]] == ["1", "3"]
    assert [r["answer"] for r in data.read_local("winogrande", fixture_data)["validation"]] == ["1", "2"]


def test_hellaswag_label_is_a_string_like_the_hub(fixture_data):
    rows = data.read_local("hellaswag", fixture_data)["validation"]
    assert [r["label"] for r in rows] == ["0", "2"]
    assert rows[0]["endings"][0] == "puts the kettle on the stove."


def test_openbookqa_tsv_choices_are_parsed(fixture_data):
    row = data.read_local("openbookqa", fixture_data)["test"][0]
    assert row["question_stem"] == "Which of these is a mammal?"
    assert row["choices"] == {"text": ["a shark", "a dog", "a trout", "a frog"], "label": ["A", "B", "C", "D"]}
    assert row["answerKey"] == "B"


def test_obqa_parser_rejects_garbage():
    with pytest.raises(ValueError):
        parse_obqa_choices("no options here")


def test_boolq_string_labels_become_ints(fixture_data):
    rows = data.read_local("boolq", fixture_data)["validation"]
    assert [r["label"] for r in rows] == [1, 0]
    assert rows[0]["passage"].startswith("Water -- ")


def test_mmlu_csv_without_header(fixture_data):
    rows = data.read_local("mmlu_abstract_algebra", fixture_data)
    assert set(rows) == {"test", "dev", "validation"}
    assert rows["test"][1] == {"question": "Which, of these, is even?", "subject": "abstract_algebra",
                               "choices": ["3", "5", "8", "9"], "answer": 2}


def test_missing_file_names_path_and_hub_id(tmp_path):
    with pytest.raises(DataError) as err:
        data.read_local("arc_easy", tmp_path, hub_path="allenai/ai2_arc")
    message = str(err.value)
    assert str(tmp_path / "arc/ARC-Easy-Test.jsonl") in message and "allenai/ai2_arc" in message


def test_malformed_jsonl_names_file_and_line(tmp_path):
    (tmp_path / "boolq").mkdir()
    (tmp_path / "boolq/val.jsonl").write_text('{"question": "q", "passage": "p", "idx": 0, "label": "true"}\n{broken\n')
    with pytest.raises(DataError, match=r"val.jsonl:2"):
        data.read_local("boolq", tmp_path)


def test_label_count_mismatch_is_an_error(tmp_path):
    (tmp_path / "piqa").mkdir()
    (tmp_path / "piqa/valid.jsonl").write_text('{"goal": "g", "sol1": "a", "sol2": "b"}\n')
    (tmp_path / "piqa/valid-labels.lst").write_text("0\n1\n")
    with pytest.raises(DataError, match="2 labels for 1 rows"):
        data.read_local("piqa", tmp_path)
