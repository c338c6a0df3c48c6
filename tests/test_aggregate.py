"""evals.aggregate on hand-made result files (tests/fixtures/results): means, CIs, partial categories."""

import json
import math
import shutil
from pathlib import Path

import pytest

from evals.aggregate import aggregate, benchmark_score, binomial_stderr, bootstrap_mean_ci, load_results, mean_stderr
from evals.reference import load_suite

FIXTURES = Path(__file__).parent / "fixtures" / "results"


@pytest.fixture(scope="module")
def suite():
    return load_suite("phi2")


@pytest.fixture(scope="module")
def models(suite):
    return aggregate(load_results(FIXTURES), suite)


def cats(summary):
    return {c.category: c for c in summary.categories}


def test_load_results_reads_every_result_file_and_skips_others(tmp_path):
    shutil.copytree(FIXTURES, tmp_path / "results")
    (tmp_path / "results" / "tables").mkdir()
    (tmp_path / "results" / "tables" / "x.json").write_text('{"not": "a result"}')
    (tmp_path / "results" / "phi-2" / "broken.json").write_text("{")
    results = load_results(tmp_path / "results")
    assert len(results) == 14 + 6
    assert {r["_model"] for r in results} == {"phi-2", "smollm2-135m"}
    assert [r["_path"] for r in results] == sorted(r["_path"] for r in results)


def test_complete_model_category_means(models):
    c = cats(models["phi-2"])
    assert c["bbh"].score == pytest.approx(0.592)
    assert c["commonsense"].score == pytest.approx((0.79 + 0.76 + 0.80 + 0.53 + 0.55) / 5)   # 0.686
    assert c["language"].score == pytest.approx((0.73 + 0.51 + 0.56 + 0.60 + 0.83) / 5)     # 0.646
    assert c["math"].score == pytest.approx(0.58)
    assert c["coding"].score == pytest.approx((0.48 + 0.60) / 2)
    assert all(x.complete for x in c.values())
    assert c["commonsense"].n == c["commonsense"].n_total == 1838 + 1267 + 2376 + 1172 + 1954


def test_category_ci_is_root_sum_of_squares_over_k(models):
    m = models["phi-2"]
    names = ["piqa", "winogrande", "arc_easy", "arc_challenge", "siqa"]
    se = math.sqrt(sum(m.benchmarks[b].stderr ** 2 for b in names)) / 5
    c = cats(m)["commonsense"]
    assert c.stderr == pytest.approx(se)
    assert (c.ci_low, c.ci_high) == pytest.approx((c.score - 1.96 * se, c.score + 1.96 * se))
    assert mean_stderr([0.03, 0.04]) == pytest.approx(0.025)


def test_benchmark_ci_uses_result_stderr_else_binomial(models):
    m = models["phi-2"]
    squad = m.benchmarks["squad_v2"]
    assert squad.stderr == 0.0042 and squad.ci_method == "stderr from result file"
    assert (squad.ci_low, squad.ci_high) == pytest.approx((0.6 - 1.96 * 0.0042, 0.6 + 1.96 * 0.0042))
    he = m.benchmarks["humaneval"]            # the fixture has "stderr": null
    assert he.ci_method == "binomial stderr"
    assert he.stderr == pytest.approx(math.sqrt(0.48 * 0.52 / 163))
    assert binomial_stderr(0.5, 1) is None


def test_partial_and_missing_benchmarks_make_a_partial_category(models):
    c = cats(models["smollm2-135m"])
    cs = c["commonsense"]
    assert not cs.complete
    assert cs.missing == ("arc_challenge", "siqa")
    assert cs.partial_benchmarks == ("arc_easy",)
    assert cs.present == ("piqa", "winogrande", "arc_easy")
    assert cs.score == pytest.approx((0.60 + 0.51 + 0.52) / 3)
    assert (cs.n, cs.n_total) == (1838 + 1267 + 50, 1838 + 1267 + 2376)
    lang = c["language"]
    assert not lang.complete and lang.partial_benchmarks == ("mmlu",)
    assert lang.missing == ("openbookqa", "squad_v2", "boolq")
    assert c["bbh"].score is None and not c["bbh"].complete and c["bbh"].missing == ("bbh",)
    assert c["coding"].score is None
    assert c["math"].complete


def test_partial_inferred_from_n_when_flag_absent():
    r = json.loads((FIXTURES / "smollm2-135m" / "mmlu.json").read_text())
    del r["partial"]
    assert benchmark_score(r).partial
    r["n"] = r["n_total"]
    assert not benchmark_score(r).partial


def test_metric_mismatch_warns_and_uses_the_results_metric(models, caplog):
    gsm = models["smollm2-135m"].benchmarks["gsm8k"]
    assert gsm.metric == "exact_match,flexible-extract" and gsm.score == 0.02
    assert any("differs from the suite's expected" in w for w in gsm.warnings)
    assert not models["phi-2"].warnings
    r = json.loads((FIXTURES / "phi-2" / "piqa.json").read_text())
    r["metric"] = "acc_norm,none"          # lm-eval's filter suffix is not a mismatch
    assert not benchmark_score(r, expected_metric="acc_norm").warnings


def test_bootstrap_ci_from_samples_is_deterministic(suite):
    results = [r for r in load_results(FIXTURES) if r["_model"] == "smollm2-135m"]
    a = aggregate(results, suite, ci="bootstrap")["smollm2-135m"]
    b = aggregate(results, suite, ci="bootstrap")["smollm2-135m"]
    arc = a.benchmarks["arc_easy"]
    assert arc.ci_method.startswith("bootstrap")
    assert arc.ci_low < 0.52 < arc.ci_high
    assert (arc.ci_low, arc.ci_high) == (b.benchmarks["arc_easy"].ci_low, b.benchmarks["arc_easy"].ci_high)
    assert 0.10 < (arc.ci_high - arc.ci_low) / 2 < 0.18   # analytic half-width is 0.14
    # no samples file: analytic CI, said so
    assert a.benchmarks["piqa"].ci_method == "stderr from result file"
    assert any("no per-document scores" in w for w in a.benchmarks["piqa"].warnings)
    # category with a non-bootstrapped benchmark falls back to the analytic formula
    assert cats(a)["commonsense"].ci_method == "sqrt(sum se_i^2)/k"


def test_bootstrap_falls_back_when_samples_disagree_with_score(tmp_path, suite):
    shutil.copytree(FIXTURES / "smollm2-135m", tmp_path / "m")
    path = tmp_path / "m" / "arc_easy.json"
    r = json.loads(path.read_text())
    r["score"] = 0.9
    path.write_text(json.dumps(r))
    s = aggregate(load_results(tmp_path), suite, ci="bootstrap")["m"].benchmarks["arc_easy"]
    assert s.ci_method == "stderr from result file"
    assert any("samples mean" in w for w in s.warnings)


def test_bootstrap_mean_ci_on_known_data():
    data = [1.0] * 30 + [0.0] * 70
    se, lo, hi = bootstrap_mean_ci([([data], False)], n_boot=2000, seed=1)
    assert lo < 0.3 < hi
    assert se == pytest.approx(math.sqrt(0.3 * 0.7 / 100), rel=0.15)
    se2, _, _ = bootstrap_mean_ci([([data], False), ([data], False)], n_boot=2000, seed=1)
    assert se2 == pytest.approx(se / math.sqrt(2), rel=0.15)
    # macro weighting: a 10-document stratum counts as much as a 90-document one
    se3, lo3, hi3 = bootstrap_mean_ci([([[1.0] * 10, [0.0] * 90], True)], n_boot=500, seed=1)
    assert (se3, lo3, hi3) == (0.0, 0.5, 0.5)


def test_invalid_ci_method(suite):
    with pytest.raises(ValueError):
        aggregate([], suite, ci="magic")


def _write_group_result(folder, score):
    """A BBH-like group: task a 4/4 correct, task b 1/8 correct (macro 0.5625, micro 5/12)."""
    folder.mkdir(parents=True)
    r = json.loads((FIXTURES / "phi-2" / "bbh.json").read_text())
    r.update(score=score, n=12, n_total=12, partial=False, samples_file="bbh.samples.jsonl")
    (folder / "bbh.json").write_text(json.dumps(r))
    lines = [{"task": "bbh_a", "doc_id": i, "metrics": {"exact_match": 1.0}, "correct": 1.0} for i in range(4)]
    lines += [{"task": "bbh_b", "doc_id": i, "correct": float(i == 0)} for i in range(8)]
    (folder / "bbh.samples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_bootstrap_detects_macro_group_weighting(tmp_path, suite):
    _write_group_result(tmp_path / "macro", 0.5625)
    _write_group_result(tmp_path / "micro", 5 / 12)
    _write_group_result(tmp_path / "neither", 0.3)
    got = aggregate(load_results(tmp_path), suite, ci="bootstrap")
    for model in ("macro", "micro"):
        s = got[model].benchmarks["bbh"]
        assert s.ci_method.startswith("bootstrap"), model
        assert s.ci_low <= s.score <= s.ci_high
    assert got["neither"].benchmarks["bbh"].ci_method == "stderr from result file"
    assert cats(got["macro"])["bbh"].ci_method.startswith("bootstrap")


def test_partial_rerun_file_and_out_of_range_score(tmp_path, suite):
    shutil.copytree(FIXTURES / "phi-2", tmp_path / "phi-2")
    r = json.loads((tmp_path / "phi-2" / "mmlu.json").read_text())
    (tmp_path / "phi-2" / "mmlu.partial.json").write_text(json.dumps(dict(r, score=0.1, n=5, partial=True)))
    squad = json.loads((tmp_path / "phi-2" / "squad_v2.json").read_text())
    (tmp_path / "phi-2" / "squad_v2.json").write_text(json.dumps(dict(squad, score=60.0)))
    results = load_results(tmp_path)
    assert len(results) == 14
    m = aggregate(results, suite)["phi-2"]
    assert m.benchmarks["mmlu"].score == 0.56 and not m.benchmarks["mmlu"].partial
    assert any("outside 0..1" in w for w in m.benchmarks["squad_v2"].warnings)
