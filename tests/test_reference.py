"""configs/reference and configs/suites/phi2.yaml against the Phi-2 announcement, cell for cell."""

import pytest

from evals.errors import ConfigError
from evals.reference import load_reference, load_suite, suite_benchmarks

# Phi-2 blog Table 1, typed in from the announcement (published.md A1): BBH, commonsense, language, math, coding.
ANNOUNCEMENT_TABLE_1 = {
    ("llama-2-7b", "7B"): (40.0, 62.2, 56.7, 16.5, 21.0),
    ("llama-2-13b", "13B"): (47.8, 65.0, 61.9, 34.2, 25.4),
    ("llama-2-70b", "70B"): (66.5, 69.2, 67.6, 64.1, 38.3),
    ("mistral-7b", "7B"): (57.2, 66.4, 63.7, 46.4, 39.4),
    ("phi-2", "2.7B"): (59.2, 68.8, 62.0, 61.1, 53.7),
}
CATEGORIES = ("bbh", "commonsense", "language", "math", "coding")
# Phi-2 blog Table 2 (published.md A2): BBH, BoolQ, MBPP, MMLU.
ANNOUNCEMENT_TABLE_2 = {
    ("gemini-nano-2", "3.2B"): (42.4, 79.3, 27.2, 55.8),
    ("phi-2", "2.7B"): (59.3, 83.3, 59.1, 56.7),
}
GEMINI_BENCHMARKS = ("bbh", "boolq", "mbpp", "mmlu")
BLOG_URL = "https://www.microsoft.com/en-us/research/blog/phi-2-the-surprising-power-of-small-language-models/"


@pytest.fixture(scope="module")
def ref():
    return load_reference()


def test_table_1_matches_announcement_cell_for_cell(ref):
    rows = ref.select("A1")
    assert len(rows) == 25
    assert ref.table_models("A1") == [model for model, _ in ANNOUNCEMENT_TABLE_1]
    for (model, size), values in ANNOUNCEMENT_TABLE_1.items():
        assert ref.categories(model, "A1") == dict(zip(CATEGORIES, values)), model
        assert {r["size"] for r in ref.select("A1", model)} == {size}
        assert ref.models[model]["size"] == size


def test_table_2_matches_announcement_cell_for_cell(ref):
    assert len(ref.select("A2")) == 8
    for (model, size), values in ANNOUNCEMENT_TABLE_2.items():
        assert ref.benchmarks(model, "A2") == dict(zip(GEMINI_BENCHMARKS, values)), model
        assert {r["size"] for r in ref.select("A2", model)} == {size}


def test_every_row_is_complete_and_cites_a_url(ref):
    assert len(ref.rows) > 100
    for row in ref.rows:
        for key in ("table", "model", "size", "value", "shots", "metric", "source", "url"):
            assert row.get(key) not in (None, ""), (key, row)
        assert ("category" in row) != ("benchmark" in row)
        assert row["url"].startswith("https://")
    for row in ref.select("A1") + ref.select("A2"):
        assert row["url"] == BLOG_URL


def test_per_benchmark_sources_spot_values(ref):
    # A3 (Phi-3 card), A4 (Open LLM leaderboard), A6 (Llama 2 paper), A7 (Mistral paper).
    assert ref.benchmarks("phi-2", "A3")["mmlu"] == 56.3
    assert ref.benchmarks("mistral-7b", "A3")["humaneval"] == 28.0
    assert ref.benchmarks("phi-2", "A4") == {"arc_challenge": 61.09, "hellaswag": 75.11, "mmlu": 58.11,
                                             "truthfulqa": 44.47, "winogrande": 74.35}
    assert ref.categories("llama-2-70b", "A6-T3")["L3_bbh"] == 51.2
    assert ref.benchmarks("mistral-7b", "A7")["gsm8k"] == 52.2


def test_internal_consistency_noted_in_published_md(ref):
    a1 = {m: ref.categories(m, "A1") for m in ("phi-2", "mistral-7b")}
    a3 = {m: ref.benchmarks(m, "A3") for m in ("phi-2", "mistral-7b")}
    assert a3["phi-2"]["gsm8k"] == a1["phi-2"]["math"] == 61.1
    assert a3["mistral-7b"]["gsm8k"] == a1["mistral-7b"]["math"] == 46.4
    assert (a3["mistral-7b"]["humaneval"] + a3["mistral-7b"]["mbpp"]) / 2 == pytest.approx(39.4)
    for model in ("llama-2-7b", "llama-2-13b", "llama-2-70b"):
        per_task = ref.benchmarks(model, "A6-PWC")
        code = ref.categories(model, "A6-T3")["L3_code"]
        assert (per_task["humaneval"] + per_task["mbpp"]) / 2 == pytest.approx(code, abs=0.06)


def test_match_model_aliases(ref):
    assert ref.match_model("microsoft/phi-2") == "phi-2"
    assert ref.match_model("something", "Meta-Llama/Llama-2-7b-hf") == "llama-2-7b"
    assert ref.match_model("mistralai/Mistral-7B-v0.1") == "mistral-7b"
    assert ref.match_model("smollm2-135m", None) is None


def test_suite_groups_exactly_as_the_announcement():
    suite = load_suite("phi2")
    got = {c["name"]: [(b["benchmark"], b["metric"]) for b in c["benchmarks"]] for c in suite["categories"]}
    assert got == {
        "bbh": [("bbh", "exact_match,get-answer")],
        "commonsense": [("piqa", "acc_norm"), ("winogrande", "acc"), ("arc_easy", "acc"),
                        ("arc_challenge", "acc_norm"), ("siqa", "acc")],
        "language": [("hellaswag", "acc_norm"), ("openbookqa", "acc_norm"), ("mmlu", "acc"),
                     ("squad_v2", "f1"), ("boolq", "acc")],
        "math": [("gsm8k", "exact_match,strict-match")],
        "coding": [("humaneval", "pass@1,exec"), ("mbpp", "pass@1,exec")],
    }
    assert suite["aggregation"] == "unweighted_mean"
    assert len(suite_benchmarks(suite)) == 14


def test_row_without_source_url_is_rejected(tmp_path):
    (tmp_path / "models.yaml").write_text("models:\n  phi-2: {name: Phi-2, size: 2.7B, aliases: []}\n")
    (tmp_path / "x.yaml").write_text(
        "sources:\n  S: {title: t}\nrows:\n"
        "  - {table: T, model: phi-2, size: 2.7B, benchmark: mmlu, value: 1.0, shots: 5, metric: acc, source: S}\n")
    with pytest.raises(ConfigError, match="no url"):
        load_reference(tmp_path)


def test_row_with_both_category_and_benchmark_is_rejected(tmp_path):
    (tmp_path / "models.yaml").write_text("models:\n  phi-2: {name: Phi-2, size: 2.7B}\n")
    (tmp_path / "x.yaml").write_text(
        "sources:\n  S: {url: 'https://x'}\nrows:\n"
        "  - {table: T, model: phi-2, size: 2.7B, category: math, benchmark: gsm8k, value: 1.0, shots: 5,"
        " metric: acc, source: S}\n")
    with pytest.raises(ConfigError, match="exactly one"):
        load_reference(tmp_path)
