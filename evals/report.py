"""``phi2eval report --model M``: one measured model against its published row, per category.

For each category of the suite: measured score with 95% CI, the published value (the announcement's
Table 1 row of the same model: phi-2 -> Phi-2, llama-2-7b -> Llama-2 7B, ...; or ``--reference``),
the difference measured - published with its CI, whether the published value lies inside the
measured CI, and the protocol details known to differ (blog shots vs the shots in our result files,
notes from published.md A1/A3/A8). The published value is treated as a constant (no published
error bars exist), so the CI of the difference is the measured CI shifted by the published value.

Writes ``<out_dir>/report_<model>.md`` (default out_dir: ``<results_dir>/tables``). Never loads a model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evals.aggregate import ModelSummary, aggregate, load_results
from evals.errors import Phi2EvalError
from evals.reference import Reference, load_reference, load_suite
from evals.tables import (DASH, md_escape, measured_note, published_text, source_note, write_text,
                          benchmark_cell, category_cell, published_benchmark_rows, shots_text)


def _diff_text(cs, published: float) -> tuple[str, str]:
    """('+1.2 [-0.8, +3.2]', 'yes'|'no'|'no CI') for a category against a published percent value."""
    if cs.score is None:
        return DASH, DASH
    d = 100.0 * cs.score - published
    if cs.ci_low is None or cs.ci_high is None:
        return _signed(d), "no CI"
    lo, hi = 100.0 * cs.ci_low - published, 100.0 * cs.ci_high - published
    inside = "yes" if lo <= 0.0 <= hi else "no"
    if not cs.complete:
        inside += " (partial: not comparable)"
    return f"{_signed(d)} [{_signed(lo)}, {_signed(hi)}]", inside


def _signed(x: float) -> str:
    """'+1.2' / '-0.3', never '-0.0'."""
    text = f"{x:+.1f}"
    return "+0.0" if text == "-0.0" else text


def _protocol_rows(ref: Reference, suite: dict, m: ModelSummary) -> list[list[str]]:
    rows = []
    for cat in suite["categories"]:
        blog = (ref.category_protocol.get(cat["name"]) or {}).get("shots") or {}
        for b in cat["benchmarks"]:
            name = b["benchmark"]
            s = m.benchmarks.get(name)
            ours = DASH if s is None or s.shots is None else shots_text(s.shots)
            theirs = blog.get(name, "unstated")
            if s is None:
                verdict = "not run"
            elif theirs == "unstated":
                verdict = "unknown (blog states no shots)"
            elif str(theirs).split(" ")[0] == str(s.shots):
                verdict = "same shot count"
            else:
                verdict = "differs"
            metric = DASH if s is None else s.metric
            rows.append([cat["name"], name, ours, metric, shots_text(theirs), verdict])
    return rows


def build_report(results_dir: Path | str, model: str, reference: str | None = None,
                 suite: str = "phi2", ci: str = "analytic") -> str:
    """The markdown report of one measured model (results/<model>/) against its published row."""
    ref = load_reference()
    suite_cfg = load_suite(suite)
    results = [r for r in load_results(results_dir) if r["_model"] == model]
    if not results:
        available = sorted({r["_model"] for r in load_results(results_dir)})
        raise Phi2EvalError(f"no results for model {model!r} under {results_dir}; "
                            f"available: {', '.join(available) or 'none'} (run `phi2eval run` first)")
    m = aggregate(results, suite_cfg, ci=ci)[model]
    table_id = suite_cfg.get("reference_table", "A1")
    slug = reference or ref.match_model(model, m.info.get("name"), m.info.get("id"))
    if slug is not None and slug not in ref.models:
        raise Phi2EvalError(f"unknown reference model {slug!r}; choose one of {', '.join(sorted(ref.models))}")
    published = ref.categories(slug, table_id) if slug else {}

    lines = [f"# Reproduction report: {model}", ""]
    if published:
        lines += [f"Measured `{model}` against the **{ref.label(slug)}** row of the Phi-2 announcement's "
                  f"Table 1 [{table_id}].", ""]
    else:
        lines += [f"No published category row matches `{model}`"
                  + (f" (reference model {ref.label(slug)} has no row in {table_id})" if slug else "")
                  + f"; pass `--reference` with one of: {', '.join(ref.table_models(table_id))}. "
                  "Measured scores only.", ""]
    lines += ["## Categories", "",
              "| Category | Measured (95% CI) | Published | Measured − published (95% CI) | Published inside CI? | n/N |",
              "|---|---|---|---|---|---|"]
    inside_count = complete_count = 0
    for cs in m.categories:
        pub = published.get(cs.category)
        diff, inside = _diff_text(cs, pub) if pub is not None else (DASH, DASH)
        complete_count += cs.complete
        inside_count += cs.complete and inside == "yes"
        n_text = f"{cs.n}/{cs.n_total}" if cs.n_total is not None and cs.present else DASH
        lines.append(f"| {cs.label} | {md_escape(category_cell(cs))} | "
                     f"{DASH if pub is None else f'{pub:.1f}'} | {diff} | {inside} | {n_text} |")
    lines += ["", f"{complete_count} of {len(m.categories)} categories complete"
              + (f"; the published value lies inside the measured 95% CI for {inside_count} of them." if published else ".")]
    lines += ["", "## Protocol: ours vs the blog", "",
              "| Category | Benchmark | Our shots | Our metric | Blog shots | Comparison |", "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in _protocol_rows(ref, suite_cfg, m)]
    lines += ["", "Known differences (published.md A1, A3, A8):", ""]
    for cat in suite_cfg["categories"]:
        for note in (ref.category_protocol.get(cat["name"]) or {}).get("notes", []):
            lines.append(f"- {cat['name']}: {note}")
    lines += ["- all: the blog's rows come from Microsoft's internal pipeline (baselines re-run in-house); ours "
              "come from lm-eval task YAMLs in configs/tasks, so prompts and answer extraction differ even "
              "where shots match."]

    lines += ["", "## Per benchmark", "",
              "| Benchmark | Category | Measured (95% CI) | n/N | Published (same model, other sources) |",
              "|---|---|---|---|---|"]
    order = [b["benchmark"] for c in suite_cfg["categories"] for b in c["benchmarks"]]
    used = set()
    for b in order + sorted(set(m.benchmarks) - set(order)):
        s = m.benchmarks.get(b)
        pub_rows = published_benchmark_rows(ref, slug, b)
        used |= {r["source"] for r in pub_rows}
        n_text = f"{s.n}/{s.n_total}" if s is not None and s.n is not None else DASH
        lines.append(f"| {b} | {s.category if s and s.category else DASH} | "
                     f"{md_escape(benchmark_cell(s, show_n=False)) if s else 'not run'} | {n_text} | "
                     f"{md_escape(published_text(pub_rows))} |")

    lines += ["", "## Sources", ""]
    if published:
        lines.append(f"- {source_note(ref, table_id)}")
    lines += [f"- {source_note(ref, sid)}" for sid in sorted(used - {table_id})]
    lines.append(f"- {measured_note('measured', m)}")
    lines.append("- CI: score ± 1.96·stderr (result file's stderr); category stderr = sqrt(Σ se_i²)/k; "
                 "difference CI = measured CI minus the published value (published numbers carry no error).")
    lines += [f"- Warning: {w}" for w in m.warnings]
    return "\n".join(lines) + "\n"


def main(results_dir: Path | str, model: str, out_dir: Path | str | None = None,
         reference: str | None = None, ci: str = "analytic") -> Path:
    """Write ``report_<model>.md`` and return its path."""
    text = build_report(results_dir, model, reference=reference, ci=ci)
    out = Path(out_dir) if out_dir else Path(results_dir) / "tables"
    out.mkdir(parents=True, exist_ok=True)
    return write_text(out / f"report_{model}.md", text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``phi2eval report``."""
    from evals.paths import default_results_dir
    parser.add_argument("--model", required=True, help="measured model: the folder name under results/")
    parser.add_argument("--results-dir", type=Path, default=default_results_dir())
    parser.add_argument("--out-dir", type=Path, default=None, help="default: <results-dir>/tables")
    parser.add_argument("--reference", default=None,
                        help="published row to compare with (phi-2, llama-2-7b, llama-2-13b, llama-2-70b, "
                             "mistral-7b); default: the row whose aliases match the model")
    parser.add_argument("--ci", choices=["analytic", "bootstrap"], default="analytic")


def run_from_args(args: argparse.Namespace) -> int:
    """CLI entry: write the report, print it; returns the exit code."""
    path = main(args.results_dir, args.model, args.out_dir, reference=args.reference, ci=args.ci)
    print(path.read_text(encoding="utf-8"), end="")
    print(f"(written to {path})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="phi2eval report", description=__doc__.splitlines()[0])
    add_arguments(ap)
    sys.exit(run_from_args(ap.parse_args()))
