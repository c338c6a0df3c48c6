"""evals.tables / evals.plots on fixture results: determinism, partial marking, published rows, speed."""

import argparse
import csv
import io
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evals import tables

FIXTURES = Path(__file__).parent / "fixtures" / "results"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def results(tmp_path):
    dest = tmp_path / "results"
    shutil.copytree(FIXTURES, dest)
    return dest


def read(out, name):
    return (out / name).read_text(encoding="utf-8")


def test_regeneration_is_byte_identical(results, tmp_path):
    first = tables.main(results, tmp_path / "a", plots=False)
    second = tables.main(results, tmp_path / "b", plots=False)
    third = tables.main(FIXTURES, tmp_path / "c", plots=False)   # another path to the same results
    names = sorted(p.name for p in first)
    assert names == sorted(p.name for p in second) == sorted(p.name for p in third)
    assert {"categories.md", "categories.csv", "categories.tex", "gemini_nano2.md", "benchmarks.csv",
            "tables.md"} <= set(names)
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "c" / name).read_bytes(), name


def test_default_out_dir_and_rerun_over_own_output(results):
    paths = tables.main(results, plots=False)
    assert all(p.parent == results / "tables" for p in paths)
    before = read(results / "tables", "tables.md")
    tables.main(results, plots=False)                     # results/tables/ is not read as results
    assert read(results / "tables", "tables.md") == before


def test_category_table_published_rows_and_measured_cells(results):
    tables.main(results, plots=False)
    md = read(results / "tables", "categories.md")
    assert "| Llama-2 | 7B | published [A1] | 40.0 | 62.2 | 56.7 | 16.5 | 21.0 |" in md
    assert "| Llama-2 | 13B | published [A1] | 47.8 | 65.0 | 61.9 | 34.2 | 25.4 |" in md
    assert "| Llama-2 | 70B | published [A1] | 66.5 | 69.2 | 67.6 | 64.1 | 38.3 |" in md
    assert "| Mistral | 7B | published [A1] | 57.2 | 66.4 | 63.7 | 46.4 | 39.4 |" in md
    assert "| Phi-2 | 2.7B | published [A1] | 59.2 | 68.8 | 62.0 | 61.1 | 53.7 |" in md
    phi2 = next(line for line in md.splitlines() if line.startswith("| phi-2 |"))
    assert phi2.startswith("| phi-2 | 2.7B | measured [m1] | 59.2 ± 1.2 | 68.6 ± 1.0 | 64.6 ± 1.0 | 58.0 ± 2.7 |")
    assert "*" not in phi2
    small = next(line for line in md.splitlines() if line.startswith("| smollm2-135m |"))
    cells = [c.strip() for c in small.strip("|").split("|")][3:]
    assert cells[0] == "— (not run)" and cells[4] == "— (not run)"
    assert cells[1] == "54.3 ± 4.8* (missing arc_challenge, siqa; n=3155/5481)"
    assert cells[2].startswith("33.0 ± 2.6* (missing openbookqa, squad_v2, boolq; n=10327/24084")
    assert cells[3] == "2.0 ± 0.8"
    # provenance from the result files, not from now
    assert "git commit 0123456789ab, results dated 2026-11-26 to 2026-11-27" in md
    assert "git commit fedcba987654, results dated 2026-11-20" in md
    assert "https://www.microsoft.com/en-us/research/blog/phi-2-the-surprising-power-of-small-language-models/" in md
    assert "Warning: smollm2-135m/gsm8k" in md


def test_partial_never_shown_as_full_score_in_csv(results):
    tables.main(results, plots=False)
    rows = list(csv.DictReader(io.StringIO(read(results / "tables", "categories.csv"))))
    measured = {(r["model"], r["category"]): r for r in rows if r["row"] == "measured"}
    assert measured[("smollm2-135m", "commonsense")]["complete"] == "false"
    assert measured[("smollm2-135m", "commonsense")]["missing"] == "arc_challenge siqa"
    assert measured[("smollm2-135m", "bbh")]["value"] == ""
    assert measured[("phi-2", "commonsense")]["complete"] == "true"
    assert measured[("phi-2", "commonsense")]["value"] == "68.60"
    published = [r for r in rows if r["row"] == "published"]
    assert len(published) == 25 and all(r["source"] == "A1" for r in published)


def test_gemini_and_benchmark_tables(results):
    tables.main(results, plots=False)
    md = read(results / "tables", "gemini_nano2.md")
    assert "| Gemini Nano 2 | 3.2B | published [A2] | 42.4 | 79.3 | 27.2 | 55.8 |" in md
    assert "| Phi-2 | 2.7B | published [A2] | 59.3 | 83.3 | 59.1 | 56.7 |" in md
    assert "| smollm2-135m | — | measured [m2] | — | — | — | 25.0 ± 5.0* (n=285/14042) |" in md
    bench = read(results / "tables", "benchmarks.md")
    assert "| smollm2-135m | commonsense | arc_easy | acc | 0 | 52.0 ± 14.0* | 50/2376 | — |" in bench
    assert "56.3 (5-shot) [A3]; 58.11 (5-shot) [A4]" in bench
    rows = list(csv.DictReader(io.StringIO(read(results / "tables", "benchmarks.csv"))))
    assert len(rows) == 20
    assert {r["partial"] for r in rows if r["benchmark"] in ("arc_easy", "mmlu") and r["model"] == "smollm2-135m"} == {"true"}


def test_latex_is_escaped(results):
    tables.main(results, plots=False)
    tex = read(results / "tables", "benchmarks.tex")
    assert "\\begin{tabular}" in tex and "arc\\_easy" in tex and "$\\pm$" in tex
    body = tex.replace("\\_", "").replace("\\&", "").replace("\\%", "")
    assert "_" not in body.split("\\begin{tabular}", 1)[1].split("\\end{tabular}")[0]


def test_empty_results_dir_gives_published_rows_only(tmp_path):
    tables.main(tmp_path / "nothing", tmp_path / "out", plots=False)
    md = read(tmp_path / "out", "categories.md")
    assert "published [A1]" in md and "measured [m" not in md


def test_plots_written(results, tmp_path):
    paths = tables.main(results, tmp_path / "p", plots=True)
    png, svg = tmp_path / "p" / "categories.png", tmp_path / "p" / "categories.svg"
    assert png in paths and svg in paths
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "<svg" in svg.read_text()


def test_cli_functions(results, capsys):
    parser = argparse.ArgumentParser()
    tables.add_arguments(parser)
    args = parser.parse_args(["--results-dir", str(results), "--no-plots"])
    assert tables.run_from_args(args) == 0
    assert "categories.md" in capsys.readouterr().out


def test_fast_and_no_heavy_imports(results):
    start = time.perf_counter()
    tables.main(results, plots=False)
    assert time.perf_counter() - start < 5.0
    code = ("import sys, evals.aggregate, evals.tables, evals.plots, evals.report, evals.reference; "
            "heavy = [m for m in ('torch', 'transformers', 'lm_eval', 'datasets', 'matplotlib', 'pandas') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
