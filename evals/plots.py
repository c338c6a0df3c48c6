"""Grouped bar chart of the category table (PNG + SVG), from aggregated results. Never loads a model.

Published bars are hatched and pale; measured bars are solid with 95% CI whiskers; a partial
measured category is drawn with a dotted hatch and a '*' above it.
"""

from __future__ import annotations

from pathlib import Path

from evals.aggregate import ModelSummary
from evals.reference import Reference

PUBLISHED_COLORS = ["#9ecae1", "#6baed6", "#3182bd", "#fdae6b", "#a1d99b", "#bcbddc"]
MEASURED_COLORS = ["#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]


def _bars(ref: Reference, suite: dict, models: dict[str, ModelSummary]) -> list[dict]:
    """One entry per bar series: label, values (percent or None), errors, partial flags, published?"""
    cats = [c["name"] for c in suite["categories"]]
    table_id = suite.get("reference_table", "A1")
    series = []
    for slug in ref.table_models(table_id):
        values = ref.categories(slug, table_id)
        series.append({"label": f"{ref.label(slug)} (published)", "published": True,
                       "values": [values.get(c) for c in cats], "errors": [0.0] * len(cats),
                       "partial": [False] * len(cats)})
    for m in models.values():
        by_cat = {c.category: c for c in m.categories}
        vals, errs, part = [], [], []
        for c in cats:
            cs = by_cat[c]
            vals.append(None if cs.score is None else 100.0 * cs.score)
            errs.append(0.0 if cs.ci_high is None or cs.score is None else 100.0 * (cs.ci_high - cs.score))
            part.append(cs.score is not None and not cs.complete)
        series.append({"label": f"{m.model} (measured)", "published": False, "values": vals,
                       "errors": errs, "partial": part})
    return series


def plot_categories(ref: Reference, suite: dict, models: dict[str, ModelSummary], out_dir: Path | str,
                    name: str = "categories") -> list[Path]:
    """Draw the category chart to ``<out_dir>/<name>.png`` and ``.svg``; return both paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    labels = [c.get("label", c["name"]).replace(" ", "\n", 1) for c in suite["categories"]]
    series = _bars(ref, suite, models)
    width = 0.8 / max(len(series), 1)
    plt.rcParams["svg.hashsalt"] = "phi2eval"  # stable SVG ids
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=150)
    pub_i = meas_i = 0
    for i, s in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(labels))]
        if s["published"]:
            color, pub_i = PUBLISHED_COLORS[pub_i % len(PUBLISHED_COLORS)], pub_i + 1
        else:
            color, meas_i = MEASURED_COLORS[meas_i % len(MEASURED_COLORS)], meas_i + 1
        for x, v, e, p in zip(xs, s["values"], s["errors"], s["partial"]):
            if v is None:
                if not s["published"]:
                    ax.text(x, 1.0, "not run", rotation=90, ha="center", va="bottom", fontsize=6, color="#555555")
                continue
            hatch = "///" if s["published"] else ("..." if p else None)
            ax.bar(x, v, width, color=color, alpha=0.55 if s["published"] else (0.5 if p else 0.95),
                   hatch=hatch, edgecolor="#333333" if (hatch and not s["published"]) else color, linewidth=0.6)
            if not s["published"] and e > 0:
                ax.errorbar(x, v, yerr=e, fmt="none", ecolor="black", elinewidth=0.9, capsize=2)
            if p:
                ax.text(x, v + e + 1.0, "*", ha="center", va="bottom", fontsize=11, fontweight="bold")
        ax.bar(0, 0, 0, color=color, alpha=0.55 if s["published"] else 0.95,
               hatch="///" if s["published"] else None, label=s["label"])
    if any(any(s["partial"]) for s in series):
        ax.bar(0, 0, 0, color="white", hatch="...", edgecolor="#333333", label="* partial (subset / missing)")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=9)
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Phi-2 announcement categories: published (hatched) vs measured (95% CI)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(fontsize=7, ncol=2, loc="upper left", frameon=False)
    fig.tight_layout()
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.svg"]
    fig.savefig(paths[0], metadata={"Software": None})
    fig.savefig(paths[1], metadata={"Date": None, "Creator": None})
    plt.close(fig)
    return paths
