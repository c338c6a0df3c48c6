"""``phi2eval table``: saved results -> comparison tables in markdown, CSV and LaTeX (+ plots).

Three tables, each written as ``<name>.md``, ``<name>.csv`` and ``<name>.tex`` under the output
folder (default ``<results_dir>/tables``), plus ``tables.md`` with all three:

* ``categories``: the announcement's Table 1 rows plus every measured model, per category;
* ``gemini_nano2``: the announcement's Table 2 (BBH, BoolQ, MBPP, MMLU) plus measured rows;
* ``benchmarks``: every measured benchmark score with its CI, n/N and same-model published values.

Deterministic: everything is sorted and every date or commit comes from the result files, so the
same results give byte-identical markdown and CSV. Never loads a model.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from evals.aggregate import BenchmarkScore, CategoryScore, ModelSummary, aggregate, load_results
from evals.reference import Reference, load_reference, load_suite

log = logging.getLogger(__name__)

BLOG_TABLE = "A1"
GEMINI_TABLE = "A2"
GEMINI_BENCHMARKS = ("bbh", "boolq", "mbpp", "mmlu")
GEMINI_LABELS = {"bbh": "BBH", "boolq": "BoolQ", "mbpp": "MBPP", "mmlu": "MMLU"}
# Per-benchmark reference tables shown beside a measured model's own numbers, in this order.
SAME_MODEL_TABLES = ("A2", "A3", "A4", "A6-PWC", "A7", "A7-card")
DASH = "—"
CI_NOTE = ("Measured cells: score ± half-width of the 95% CI, in percent (score ± 1.96·stderr; a "
           "category is the unweighted mean of its benchmarks, stderr = sqrt(Σ se_i²)/k).")
PARTIAL_NOTE = ("`*` partial: a benchmark was run on a subset (n/N documents) or is missing; "
                "such a cell is the mean of what was run, not a full score.")


@dataclass
class Table:
    """A rendered table: display rows (markdown/LaTeX), numeric long rows (CSV) and footnotes."""

    name: str
    title: str
    header: list[str]
    rows: list[list[str]]
    csv_header: list[str]
    csv_rows: list[list[object]]
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------- formatting

def pct(x: float | None, digits: int = 1) -> str:
    """Fraction -> percent string, e.g. 0.5123 -> '51.2'."""
    return DASH if x is None else f"{100.0 * x:.{digits}f}"


def num(x: float | None, scale: float = 100.0) -> str:
    """Number for CSV: percent with 2 decimals, '' when unknown."""
    return "" if x is None else f"{scale * x:.2f}"


def _ci_text(score: float | None, stderr: float | None, low: float | None, high: float | None) -> str:
    if score is None:
        return DASH
    if low is None or high is None:
        return pct(score)
    if stderr is not None and abs((high - score) - (score - low)) < 1e-9:
        return f"{pct(score)} ± {100.0 * (high - score):.1f}"
    return f"{pct(score)} [{pct(low)}, {pct(high)}]"


def benchmark_cell(s: BenchmarkScore | None, show_n: bool = True) -> str:
    """'52.0 ± 3.1', or '52.0 ± 3.1* (n=50/2376)' for a partial run, or '—' when not run."""
    if s is None:
        return DASH
    text = _ci_text(s.score, s.stderr, s.ci_low, s.ci_high)
    if s.partial:
        text += f"* (n={s.n}/{s.n_total})" if show_n else "*"
    return text


def category_cell(c: CategoryScore) -> str:
    """Category score with CI; partial categories get '*' and what is missing or subsampled."""
    if c.score is None:
        return f"{DASH} (not run)"
    text = _ci_text(c.score, c.stderr, c.ci_low, c.ci_high)
    if c.complete:
        return text
    bits = []
    if c.missing:
        bits.append("missing " + ", ".join(c.missing))
    if c.partial_benchmarks:
        bits.append(f"n={c.n}/{c.n_total if c.n_total is not None else '?'}")
    return f"{text}* ({'; '.join(bits)})"


def shots_text(shots: object) -> str:
    """'5' -> '5-shot', '3 (CoT)' -> '3-shot CoT', 'unstated' -> 'shots unstated'."""
    text = str(shots).strip()
    if text.isdigit():
        return f"{text}-shot"
    m = re.fullmatch(r"(\d+)\s*\((.+)\)", text)
    if m:
        return f"{m.group(1)}-shot {m.group(2)}"
    return "shots unstated" if text == "unstated" else text


def _value(v: float) -> str:
    """A published value as printed (one decimal unless it has two)."""
    return f"{v:.2f}" if round(v, 1) != v else f"{v:.1f}"


def measured_note(tag: str, m: ModelSummary) -> str:
    """Footnote of a measured row: commit(s), dates and model identity, all from the result files."""
    info = m.info
    commits = ", ".join(c[:12] + ("+dirty" if c.endswith("+dirty") else "") for c in m.git_commits) or "unknown"
    dates = " to ".join(sorted({d[:10] for d in m.created})) or "unknown"
    ident = ", ".join(f"{k} {info[k]}" for k in ("id", "fingerprint", "backend", "dtype", "device")
                      if info.get(k))
    return f"[{tag}] {m.model}: measured by this harness (phi2-repro), git commit {commits}, results dated {dates}" + (
        f"; {ident}" if ident else "") + "."


def source_note(ref: Reference, sid: str) -> str:
    """Footnote of a published source: its title and URL."""
    src = ref.sources[sid]
    return f"[{sid}] {src.get('title', sid)}: {src['url']}"


def _size(ref: Reference, m: ModelSummary) -> str:
    slug = ref.match_model(m.model, m.info.get("name"), m.info.get("id"))
    if slug:
        return ref.models[slug].get("size", DASH)
    params = m.info.get("params")
    if isinstance(params, int) and params > 0:
        return f"{params / 1e6:.0f}M" if params < 1e9 else f"{params / 1e9:.1f}B"
    return DASH


def _warning_notes(models: dict[str, ModelSummary]) -> list[str]:
    return [f"Warning: {w}" for m in models.values() for w in m.warnings]


# ----------------------------------------------------------------------------------------- tables

def category_table(ref: Reference, suite: dict, models: dict[str, ModelSummary]) -> Table:
    """Announcement Table 1 rows plus one row per measured model."""
    cats = [c["name"] for c in suite["categories"]]
    labels = [c.get("label", c["name"]) for c in suite["categories"]]
    table_id = suite.get("reference_table", BLOG_TABLE)
    rows, csv_rows, notes = [], [], []
    for slug in ref.table_models(table_id):
        values = ref.categories(slug, table_id)
        info = ref.models[slug]
        rows.append([info["name"], info["size"], f"published [{table_id}]"]
                    + [_value(values[c]) if c in values else DASH for c in cats])
        for c in cats:
            if c in values:
                csv_rows.append(["published", info["name"], info["size"], c, f"{values[c]:.2f}", "", "",
                                 "", "", "true", "", "", table_id])
    notes.append(source_note(ref, table_id))
    notes.append(_blog_protocol_note(ref, cats))
    for i, m in enumerate(models.values(), 1):
        tag = f"m{i}"
        by_cat = {c.category: c for c in m.categories}
        rows.append([m.model, _size(ref, m), f"measured [{tag}]"] + [category_cell(by_cat[c]) for c in cats])
        for c in cats:
            cs = by_cat[c]
            csv_rows.append(["measured", m.model, _size(ref, m), c, num(cs.score), num(cs.ci_low),
                             num(cs.ci_high), cs.n, "" if cs.n_total is None else cs.n_total,
                             str(cs.complete).lower(), " ".join(cs.missing), " ".join(cs.partial_benchmarks),
                             tag])
        notes.append(measured_note(tag, m))
    notes += [CI_NOTE, PARTIAL_NOTE] + _warning_notes(models)
    return Table("categories", "Phi-2 announcement categories: published vs measured",
                 ["Model", "Size", "Source"] + labels, rows,
                 ["row", "model", "size", "category", "value", "ci_low", "ci_high", "n", "n_total",
                  "complete", "missing", "partial_benchmarks", "source"], csv_rows, notes)


def _blog_protocol_note(ref: Reference, cats: list[str]) -> str:
    parts = []
    for c in cats:
        shots = (ref.category_protocol.get(c) or {}).get("shots") or {}
        stated = [f"{b} {shots_text(s)}" for b, s in shots.items() if s != "unstated"]
        parts.append(f"{c}: {', '.join(stated) if stated else 'shots unstated'}")
    return "Published protocol (blog): " + "; ".join(parts) + ". Baselines re-run in Microsoft's pipeline."


def gemini_table(ref: Reference, models: dict[str, ModelSummary]) -> Table:
    """Announcement Table 2 (Gemini Nano 2 vs Phi-2) plus measured rows."""
    benches = list(GEMINI_BENCHMARKS)
    rows, csv_rows = [], []
    for slug in ref.table_models(GEMINI_TABLE):
        values = ref.benchmarks(slug, GEMINI_TABLE)
        info = ref.models[slug]
        rows.append([info["name"], info["size"], f"published [{GEMINI_TABLE}]"]
                    + [_value(values[b]) if b in values else DASH for b in benches])
        for b in benches:
            if b in values:
                csv_rows.append(["published", info["name"], info["size"], b, f"{values[b]:.2f}", "", "",
                                 "", "", "false", GEMINI_TABLE])
    notes = [source_note(ref, GEMINI_TABLE),
             "Published Phi-2 BBH is 59.3 in Table 2 but 59.2 in Table 1 (the blog disagrees with itself)."]
    for i, m in enumerate(models.values(), 1):
        tag = f"m{i}"
        rows.append([m.model, _size(ref, m), f"measured [{tag}]"] + [benchmark_cell(m.benchmarks.get(b)) for b in benches])
        for b in benches:
            s = m.benchmarks.get(b)
            if s is not None:
                csv_rows.append(["measured", m.model, _size(ref, m), b, num(s.score), num(s.ci_low),
                                 num(s.ci_high), s.n if s.n is not None else "",
                                 s.n_total if s.n_total is not None else "", str(s.partial).lower(), tag])
        notes.append(measured_note(tag, m))
    notes += [CI_NOTE, PARTIAL_NOTE]
    return Table("gemini_nano2", "Phi-2 announcement vs Gemini Nano 2: published vs measured",
                 ["Model", "Size", "Source"] + [GEMINI_LABELS[b] for b in benches], rows,
                 ["row", "model", "size", "benchmark", "value", "ci_low", "ci_high", "n", "n_total",
                  "partial", "source"], csv_rows, notes)


def same_model_published(ref: Reference, m: ModelSummary, benchmark: str) -> list[dict]:
    """Published per-benchmark rows for the reference model this measured model matches."""
    return published_benchmark_rows(ref, ref.match_model(m.model, m.info.get("name"), m.info.get("id")), benchmark)


def published_benchmark_rows(ref: Reference, slug: str | None, benchmark: str) -> list[dict]:
    """Published rows of one reference model for one benchmark, across SAME_MODEL_TABLES."""
    if slug is None:
        return []
    return [r for t in SAME_MODEL_TABLES for r in ref.select(t, slug) if r.get("benchmark") == benchmark]


def published_text(rows: list[dict]) -> str:
    """'56.3 (5-shot) [A3]; ...' for published rows, or a dash."""
    return "; ".join(f"{_value(r['value'])} ({shots_text(r['shots'])}) [{r['source']}]" for r in rows) or DASH


def benchmark_table(ref: Reference, suite: dict, models: dict[str, ModelSummary]) -> Table:
    """Every measured benchmark: score with CI, n/N, shots, metric and same-model published values."""
    order = [b["benchmark"] for c in suite["categories"] for b in c["benchmarks"]]
    rows, csv_rows, used = [], [], set()
    for m in models.values():
        names = [b for b in order if b in m.benchmarks] + sorted(set(m.benchmarks) - set(order))
        for b in names:
            s = m.benchmarks[b]
            pub = same_model_published(ref, m, b)
            used |= {r["source"] for r in pub}
            n_text = f"{s.n}/{s.n_total}" if s.n is not None else DASH
            rows.append([m.model, s.category or DASH, b, s.metric, str(s.shots) if s.shots is not None else DASH,
                         benchmark_cell(s, show_n=False), n_text, published_text(pub)])
            csv_rows.append([m.model, s.category or "", b, s.metric, "" if s.shots is None else s.shots,
                             num(s.score), num(s.stderr), num(s.ci_low), num(s.ci_high), s.ci_method,
                             "" if s.n is None else s.n, "" if s.n_total is None else s.n_total,
                             str(s.partial).lower(), s.git_commit or "", s.created or "",
                             " ".join(f"{r['source']}:{r['value']:.2f}" for r in pub)])
    notes = [measured_note(f"m{i}", m) for i, m in enumerate(models.values(), 1)]
    notes += [source_note(ref, sid) for sid in sorted(used)]
    notes += ["Measured: score ± half-width of the 95% CI (1.96·stderr), percent; `*` partial run (n/N).",
              "Published values are the same model's numbers from other sources, with their own shots and "
              "metrics; they are context, not the target."] + _warning_notes(models)
    return Table("benchmarks", "Per-benchmark measured scores",
                 ["Model", "Category", "Benchmark", "Metric", "Shots", "Score (95% CI)", "n/N",
                  "Published (same model)"], rows,
                 ["model", "category", "benchmark", "metric", "shots", "score", "stderr", "ci_low", "ci_high",
                  "ci_method", "n", "n_total", "partial", "git_commit", "created", "published"], csv_rows, notes)


# ---------------------------------------------------------------------------------------- writers

def md_escape(text: str) -> str:
    """Escape pipes for a markdown table cell."""
    return str(text).replace("|", "\\|")


def to_markdown(t: Table, level: int = 2) -> str:
    """GitHub markdown: title, pipe table, footnotes."""
    lines = [f"{'#' * level} {t.title}", "", "| " + " | ".join(t.header) + " |",
             "|" + "|".join("---" for _ in t.header) + "|"]
    lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in t.rows]
    if t.notes:
        lines.append("")
        lines += [f"- {n}" for n in t.notes]
    return "\n".join(lines) + "\n"


def to_csv(t: Table) -> str:
    """CSV with a header row, '\\n' line endings."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(t.csv_header)
    writer.writerows(t.csv_rows)
    return buf.getvalue()


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
        "±": r"$\pm$", "—": "---", "·": r"$\cdot$", "Σ": r"$\Sigma$", "²": r"$^2$", "`": ""}


def tex_escape(text: str) -> str:
    """Escape LaTeX special characters (and map ±, —, ·, Σ, ²)."""
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def to_latex(t: Table) -> str:
    """A booktabs tabular with the footnotes below it."""
    cols = "ll" + "l" + "r" * (len(t.header) - 3)
    lines = [f"% {tex_escape(t.title)}", f"\\begin{{tabular}}{{{cols}}}", "\\toprule",
             " & ".join(tex_escape(h) for h in t.header) + r" \\", "\\midrule"]
    lines += [" & ".join(tex_escape(c) for c in row) + r" \\" for row in t.rows]
    lines += ["\\bottomrule", "\\end{tabular}"]
    if t.notes:
        lines += ["", "\\begin{flushleft}\\footnotesize"]
        lines += [tex_escape(n) + r"\\" for n in t.notes]
        lines.append("\\end{flushleft}")
    return "\n".join(lines) + "\n"


def write_text(path: Path, text: str) -> Path:
    """Write text with '\\n' line endings through a temp file and a rename."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    tmp.replace(path)
    return path


def build_tables(results_dir: Path | str, suite: str = "phi2", ci: str = "analytic",
                 ref: Reference | None = None) -> tuple[list[Table], dict[str, ModelSummary], Reference, dict]:
    """Read results and references and build the three tables (nothing is written)."""
    ref = ref or load_reference()
    suite_cfg = load_suite(suite)
    models = aggregate(load_results(results_dir), suite_cfg, ci=ci)
    tables = [category_table(ref, suite_cfg, models), gemini_table(ref, models),
              benchmark_table(ref, suite_cfg, models)]
    return tables, models, ref, suite_cfg


def main(results_dir: Path | str = "results", out_dir: Path | str | None = None, plots: bool = True,
         ci: str = "analytic", suite: str = "phi2") -> list[Path]:
    """Write every table (md, csv, tex), tables.md and the category plot; return the written paths."""
    results_dir = Path(results_dir)
    out = Path(out_dir) if out_dir else results_dir / "tables"
    out.mkdir(parents=True, exist_ok=True)
    tables, models, ref, suite_cfg = build_tables(results_dir, suite, ci)
    if not models:
        log.warning("no result files under %s: the tables show published rows only", results_dir)
    written = []
    for t in tables:
        written.append(write_text(out / f"{t.name}.md", to_markdown(t)))
        written.append(write_text(out / f"{t.name}.csv", to_csv(t)))
        written.append(write_text(out / f"{t.name}.tex", to_latex(t)))
    chart = "![Category chart](categories.png)\n\n" if plots else ""
    combined = "# Phi-2 reproduction tables\n\n" + chart + "\n".join(to_markdown(t) for t in tables)
    written.append(write_text(out / "tables.md", combined))
    if plots:
        from evals import plots as plots_mod  # local: matplotlib only when plotting
        written += plots_mod.plot_categories(ref, suite_cfg, models, out)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``phi2eval table``."""
    from evals.paths import default_results_dir
    parser.add_argument("--results-dir", type=Path, default=default_results_dir(),
                        help="folder of results/<model>/<benchmark>.json (default: results/)")
    parser.add_argument("--out-dir", type=Path, default=None, help="where to write (default: <results-dir>/tables)")
    parser.add_argument("--suite", default="phi2", help="suite name or path (default: phi2)")
    parser.add_argument("--ci", choices=["analytic", "bootstrap"], default="analytic",
                        help="95%% CI method (default: analytic stderr; bootstrap needs samples files)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG/SVG chart")


def run_from_args(args: argparse.Namespace) -> int:
    """CLI entry: write the tables and print the paths; returns the exit code."""
    paths = main(args.results_dir, args.out_dir, plots=not args.no_plots, ci=args.ci, suite=args.suite)
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="phi2eval table", description=__doc__.splitlines()[0])
    add_arguments(ap)
    sys.exit(run_from_args(ap.parse_args()))
