"""The benchmark registry and its validation (no model)."""

import pytest

from evals import config
from evals.errors import ConfigError

NINE = ["piqa", "winogrande", "arc_easy", "arc_challenge", "siqa", "hellaswag", "openbookqa", "mmlu", "boolq"]


def test_the_nine_multiple_choice_benchmarks_are_declared():
    table = config.benchmarks()
    for name in NINE:
        assert name in table, name
    assert len(table["mmlu"].subtasks) == 57
    assert table["mmlu"].shots == 5
    assert {table[n].category for n in ["piqa", "winogrande", "arc_easy", "arc_challenge", "siqa"]} == {"commonsense"}
    assert {table[n].category for n in ["hellaswag", "openbookqa", "mmlu", "boolq"]} == {"language"}


def test_unknown_benchmark_suggests_close_names():
    with pytest.raises(ConfigError, match="did you mean arc_easy"):
        config.select(["arc_esay"])


def test_malformed_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: x\nmetadata: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: malformed YAML"):
        config.benchmarks(tmp_path)


def test_phi2_block_is_validated(tmp_path):
    (tmp_path / "t.yaml").write_text(
        "task: t\nmetadata:\n  phi2: {category: commonsense, primary_metric: acc, shots: zero, split: test,"
        " protocol: p, source: s}\n")
    with pytest.raises(ConfigError, match="shots must be int"):
        config.benchmarks(tmp_path)
    (tmp_path / "t.yaml").write_text(
        "task: t\nmetadata:\n  phi2: {category: trivia, primary_metric: acc, shots: 0, split: test,"
        " protocol: p, source: s}\n")
    with pytest.raises(ConfigError, match="category 'trivia'"):
        config.benchmarks(tmp_path)


def test_function_tags_do_not_break_parsing(tmp_path):
    (tmp_path / "t.yaml").write_text(
        "task: t\ncustom_dataset: !function evals.data.load\nmetadata:\n  phi2: {category: math,"
        " primary_metric: acc, shots: 0, split: test, protocol: p, source: s}\n")
    assert config.benchmarks(tmp_path)["t"].metric_key == "acc,none"
