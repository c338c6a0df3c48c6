"""Saved result files -> per-benchmark scores -> the suite's categories, with 95% confidence intervals.

Never loads a model; reads only ``results/<model>/<benchmark>.json`` (and, for bootstrap CIs, the
``<benchmark>.samples.jsonl`` beside it).

Score: the result file's ``score`` for its ``metric`` (the runner's primary metric) is authoritative.
The suite lists the metric each benchmark is expected to contribute; a mismatch is reported as a
warning, and the result's own metric is used.

Confidence intervals (``ci="analytic"``, the default):

* benchmark: ``score +- 1.96 * stderr``. ``stderr`` is the result file's (lm-eval's standard error of
  the mean of the per-document scores). If it is missing and the metric is a 0/1 outcome (acc,
  acc_norm, exact_match, pass@1), ``sqrt(p(1-p)/(n-1))`` is used, which is the same estimator.
  Otherwise the benchmark has no CI.
* category: the unweighted mean of k independent benchmark means, so
  ``stderr = sqrt(sum se_i^2) / k`` and ``score +- 1.96 * stderr``. No CI if any benchmark lacks one.

``ci="bootstrap"``: percentile bootstrap over the documents in the samples JSONL (resampling within
each subtask for groups such as MMLU and BBH; the group score is the document-weighted or the
per-subtask mean, whichever reproduces the result's score), 2,000 resamples, fixed seed, so it is
deterministic. A category resamples each benchmark independently and averages.
Falls back to the analytic CI (and says so in ``ci_method``) when a samples file is missing, has no
per-document scores, or its mean does not reproduce the result's score.

No finite-population correction: the CI describes the model's accuracy on the task's population of
questions, not only on this test set; for a partial run (n < n_total) it is the CI of the subsample.

Partial: a benchmark is partial when ``partial`` is true or ``n < n_total``. A category is complete
only when every one of its benchmarks is present and complete; otherwise its mean over the present
benchmarks is reported with ``complete == False`` and the missing / partial benchmarks named.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

Z95 = 1.96
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
RESULT_SCHEMA_PREFIX = "phi2eval.result/"
# Metrics whose per-document value is 0 or 1, so a binomial standard error is valid.
BINARY_METRICS = ("acc", "acc_norm", "exact_match", "em", "pass@1", "mc1")


@dataclass(frozen=True)
class BenchmarkScore:
    """One measured benchmark of one model. Scores and CIs are fractions in 0..1."""

    model: str
    benchmark: str
    category: str | None
    metric: str
    score: float
    stderr: float | None
    ci_low: float | None
    ci_high: float | None
    ci_method: str
    n: int | None
    n_total: int | None
    partial: bool
    shots: object = None
    expected_metric: str | None = None
    git_commit: str | None = None
    created: str | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class CategoryScore:
    """One suite category of one model: unweighted mean of the benchmarks present."""

    model: str
    category: str
    label: str
    score: float | None
    stderr: float | None
    ci_low: float | None
    ci_high: float | None
    ci_method: str
    benchmarks: tuple[str, ...]
    present: tuple[str, ...]
    missing: tuple[str, ...]
    partial_benchmarks: tuple[str, ...]
    n: int
    n_total: int | None

    @property
    def complete(self) -> bool:
        """True only when every benchmark is present and was run on all its documents."""
        return self.score is not None and not self.missing and not self.partial_benchmarks


@dataclass
class ModelSummary:
    """Everything the tables need about one measured model (one results/<model>/ folder)."""

    model: str
    benchmarks: dict[str, BenchmarkScore]
    categories: list[CategoryScore]
    info: dict = field(default_factory=dict)       # result "model" block (name, id, fingerprint, ...)
    git_commits: tuple[str, ...] = ()
    created: tuple[str, ...] = ()                  # (earliest, latest) "created" of its result files
    warnings: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------- reading

def load_results(results_dir: Path | str) -> list[dict]:
    """Read every result JSON ``<results_dir>/<model>/<benchmark>.json``, sorted by path.

    Each dict gets ``_model`` (the folder name, the model's slug) and ``_path``. Files that are not
    result files (no ``phi2eval.result/`` schema, e.g. under results/tables/) are skipped, and so is
    ``<benchmark>.partial.json`` (a partial rerun that never replaces a complete result), as in
    ``evals.results.read_results``; this reader also records the folder and path the tables need.
    """
    results_dir = Path(results_dir)
    out = []
    for path in sorted(results_dir.glob("*/*.json")):
        if path.name.endswith(".partial.json"):
            continue  # a partial rerun kept beside a complete result (evals.results.write_result)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("skipping %s: not readable JSON (%s)", path, exc)
            continue
        if not isinstance(data, dict) or not str(data.get("schema", "")).startswith(RESULT_SCHEMA_PREFIX):
            continue
        data["_model"] = path.parent.name
        data["_path"] = str(path)
        out.append(data)
    return out


def read_samples(path: Path | str) -> list[dict]:
    """Read a samples JSONL file (one document per line)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ------------------------------------------------------------------------------------ statistics

def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _base_metric(metric: str) -> str:
    """``acc_norm,none`` -> ``acc_norm``; ``exact_match,strict-match`` stays as it is."""
    metric = str(metric)
    return metric[: -len(",none")] if metric.endswith(",none") else metric


def same_metric(a: str | None, b: str | None) -> bool:
    """Metric keys equal up to lm-eval's ``,none`` filter suffix."""
    return a is not None and b is not None and _base_metric(a) == _base_metric(b)


def is_binary_metric(metric: str) -> bool:
    """True when the metric's per-document value is 0/1 (so a binomial stderr applies)."""
    return _base_metric(metric).split(",")[0] in BINARY_METRICS


def binomial_stderr(p: float, n: int) -> float | None:
    """Standard error of a mean of n 0/1 outcomes with mean p: sqrt(p(1-p)/(n-1))."""
    if n is None or n < 2:
        return None
    return math.sqrt(p * (1.0 - p) / (n - 1))


def mean_stderr(stderrs: list[float]) -> float:
    """Standard error of the unweighted mean of k independent estimates: sqrt(sum se^2)/k."""
    return math.sqrt(sum(se * se for se in stderrs)) / len(stderrs)


def bootstrap_mean_ci(groups: list[tuple[list[list[float]], bool]], n_boot: int = BOOTSTRAP_RESAMPLES,
                      seed: int = BOOTSTRAP_SEED, level: float = 0.95) -> tuple[float, float, float]:
    """Percentile bootstrap CI of an unweighted mean of benchmark scores.

    ``groups`` has one ``(strata, macro)`` per benchmark: strata are lists of per-document values
    (one per subtask). Each resample draws every stratum with replacement; a benchmark's score is the
    mean of its stratum means when ``macro`` (lm-eval ``weight_by_size: false``, e.g. BBH) and the
    document-weighted mean otherwise; the statistic is the unweighted mean over benchmarks.
    Returns (stderr, low, high); stderr is the standard deviation of the resamples.
    """
    import numpy as np  # local: only the bootstrap needs it

    rng = np.random.default_rng(seed)
    stats = np.zeros(n_boot)
    for strata, macro in groups:
        total = sum(len(v) for v in strata)
        bench = np.zeros(n_boot)
        for values in strata:
            arr = np.asarray(values, dtype=float)
            drawn = arr[rng.integers(0, len(arr), size=(n_boot, len(arr)))]
            bench += drawn.mean(axis=1) / len(strata) if macro else drawn.sum(axis=1) / total
        stats += bench
    stats /= len(groups)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(stats.std(ddof=1)), float(low), float(high)


def sample_values(samples: list[dict], metric: str) -> dict[str, list[float]] | None:
    """Per-document scores from samples, grouped by ``task``; None if a document has no score.

    Uses the document's ``<metric>`` field if present, else ``correct`` (or ``passed`` for code).
    """
    base = _base_metric(metric)
    out: dict[str, list[float]] = {}
    for s in samples:
        value = None
        nested = s.get("metrics") if isinstance(s.get("metrics"), dict) else {}
        for source, key in ((s, metric), (s, base), (nested, base), (s, "correct"), (s, "passed")):
            if key in source:
                v = source[key]
                value = float(v) if isinstance(v, bool) else _number(v)
                break
        if value is None:
            return None
        out.setdefault(str(s.get("task", "")), []).append(value)
    return out or None


def _samples_for(result: dict) -> dict[str, list[float]] | None:
    name = result.get("samples_file")
    if not name or "_path" not in result:
        return None
    path = Path(result["_path"]).parent / name
    if not path.is_file():
        return None
    return sample_values(read_samples(path), result.get("metric", ""))


def bootstrap_input(result: dict) -> tuple[list[list[float]], bool] | str:
    """``(strata, macro)`` for ``bootstrap_mean_ci`` from a result's samples, or why there is none.

    The samples must reproduce the result's score, either as the document-weighted mean (micro) or
    as the mean of per-subtask means (macro, lm-eval ``weight_by_size: false``).
    """
    values = _samples_for(result)
    if values is None:
        return "no per-document scores in a samples file"
    strata = [values[k] for k in sorted(values)]
    micro = sum(sum(v) for v in strata) / sum(len(v) for v in strata)
    macro = sum(sum(v) / len(v) for v in strata) / len(strata)
    score = float(result["score"])
    if abs(micro - score) <= 1e-6:
        return strata, False
    if abs(macro - score) <= 1e-6:
        return strata, True
    return f"samples mean {micro:.6f} (per-task mean {macro:.6f}) != result score {score:.6f}"


# ---------------------------------------------------------------------------------- benchmarks

def benchmark_score(result: dict, expected_metric: str | None = None, category: str | None = None,
                    ci: str = "analytic") -> BenchmarkScore:
    """One result dict -> BenchmarkScore (score, CI, n/N, partial flag, warnings)."""
    name = result.get("benchmark", "?")
    model = result.get("_model") or (result.get("model") or {}).get("name", "?")
    warns: list[str] = []
    metric = result.get("metric")
    score = _number(result.get("score"))
    if metric is None or score is None:
        raise ValueError(f"{result.get('_path', name)}: result has no numeric 'score' / 'metric'")
    if expected_metric and not same_metric(metric, expected_metric):
        warns.append(f"{model}/{name}: result metric {metric!r} differs from the suite's expected "
                     f"{expected_metric!r}; using the result's")
    if not 0.0 <= score <= 1.0:
        warns.append(f"{model}/{name}: score {score} is outside 0..1 (result files hold fractions); shown as is")
    if category and result.get("category") and result["category"] != category:
        warns.append(f"{model}/{name}: result category {result['category']!r}, suite says {category!r}; "
                     "using the suite's")
    n = result.get("n")
    n_total = result.get("n_total")
    partial = bool(result.get("partial")) or (isinstance(n, int) and isinstance(n_total, int) and n < n_total)

    stderr = _number(result.get("stderr"))
    method = "stderr from result file"
    if stderr is None and is_binary_metric(metric) and isinstance(n, int):
        stderr = binomial_stderr(score, n)
        method = "binomial stderr"
    low = high = None
    if stderr is not None:
        low, high = score - Z95 * stderr, score + Z95 * stderr
    else:
        method = "none"
    if ci == "bootstrap":
        given = bootstrap_input(result)
        if isinstance(given, str):
            warns.append(f"{model}/{name}: {given}; analytic CI used")
        else:
            stderr, low, high = bootstrap_mean_ci([given])
            total = sum(len(v) for v in given[0])
            method = f"bootstrap ({BOOTSTRAP_RESAMPLES} resamples over {total} documents)"
    for w in warns:
        log.warning(w)
    return BenchmarkScore(
        model=model, benchmark=name, category=category or result.get("category"), metric=metric,
        score=score, stderr=stderr, ci_low=low, ci_high=high, ci_method=method,
        n=n if isinstance(n, int) else None, n_total=n_total if isinstance(n_total, int) else None,
        partial=partial, shots=(result.get("protocol") or {}).get("shots"),
        expected_metric=expected_metric, git_commit=(result.get("env") or {}).get("git_commit"),
        created=result.get("created"), warnings=tuple(warns))


# ---------------------------------------------------------------------------------- categories

def category_score(model: str, category: dict, scores: dict[str, BenchmarkScore],
                   results: dict[str, dict] | None = None, ci: str = "analytic") -> CategoryScore:
    """Unweighted mean of a category's benchmarks that are present, with CI and partial flags."""
    names = tuple(b["benchmark"] for b in category["benchmarks"])
    present = tuple(b for b in names if b in scores)
    missing = tuple(b for b in names if b not in scores)
    partial = tuple(b for b in present if scores[b].partial)
    items = [scores[b] for b in present]
    n = sum(s.n or 0 for s in items)
    n_total = sum(s.n_total for s in items) if items and all(s.n_total is not None for s in items) else None
    label = category.get("label", category["name"])
    if not items:
        return CategoryScore(model, category["name"], label, None, None, None, None, "none", names,
                             present, missing, partial, 0, None)
    score = sum(s.score for s in items) / len(items)
    stderr = low = high = None
    method = "none"
    if ci == "bootstrap" and results is not None and all(s.ci_method.startswith("bootstrap") for s in items):
        stderr, low, high = bootstrap_mean_ci([bootstrap_input(results[b]) for b in present])
        method = "bootstrap (benchmarks resampled independently)"
    if method == "none" and all(s.stderr is not None for s in items):
        stderr = mean_stderr([s.stderr for s in items])
        low, high = score - Z95 * stderr, score + Z95 * stderr
        method = "sqrt(sum se_i^2)/k"
    return CategoryScore(model, category["name"], label, score, stderr, low, high, method, names,
                         present, missing, partial, n, n_total)


def summarize_model(model: str, results: list[dict], suite: dict, ci: str = "analytic") -> ModelSummary:
    """All results of one model -> its benchmark scores, suite categories and provenance."""
    expected = {b["benchmark"]: (cat["name"], b["metric"])
                for cat in suite["categories"] for b in cat["benchmarks"]}
    by_bench = {r["benchmark"]: r for r in sorted(results, key=lambda r: r.get("benchmark", ""))}
    scores = {}
    for name, r in by_bench.items():
        cat, metric = expected.get(name, (None, None))
        scores[name] = benchmark_score(r, expected_metric=metric, category=cat, ci=ci)
    categories = [category_score(model, cat, scores, by_bench, ci) for cat in suite["categories"]]
    warns = [w for s in scores.values() for w in s.warnings]
    fingerprints = sorted({str((r.get("model") or {}).get("fingerprint")) for r in by_bench.values()})
    if len(fingerprints) > 1:
        warns.append(f"{model}: result files come from different model fingerprints: {fingerprints}")
        log.warning(warns[-1])
    info = dict((by_bench[min(by_bench)].get("model") or {})) if by_bench else {}
    commits = tuple(sorted({s.git_commit for s in scores.values() if s.git_commit}))
    dates = sorted(s.created for s in scores.values() if s.created)
    created = (dates[0], dates[-1]) if dates else ()
    return ModelSummary(model, scores, categories, info, commits, created, tuple(warns))


def aggregate(results: list[dict], suite: dict, ci: str = "analytic") -> dict[str, ModelSummary]:
    """Result dicts (from ``load_results``) -> ``{model slug: ModelSummary}``, sorted by slug."""
    if ci not in ("analytic", "bootstrap"):
        raise ValueError(f"ci must be 'analytic' or 'bootstrap', not {ci!r}")
    by_model: dict[str, list[dict]] = {}
    for r in results:
        model = r.get("_model") or (r.get("model") or {}).get("name", "unknown")
        by_model.setdefault(model, []).append(r)
    return {m: summarize_model(m, by_model[m], suite, ci) for m in sorted(by_model)}
