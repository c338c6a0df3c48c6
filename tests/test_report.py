"""evals.report: a measured model against its published announcement row, on fixture results."""

import argparse
from pathlib import Path

import pytest

from evals import report
from evals.errors import Phi2EvalError

FIXTURES = Path(__file__).parent / "fixtures" / "results"


def line_of(text, start):
    return next(line for line in text.splitlines() if line.startswith(start))


def test_phi2_report_compares_with_the_announcement_row():
    text = report.build_report(FIXTURES, "phi-2")
    assert "**Phi-2 2.7B** row of the Phi-2 announcement's Table 1 [A1]" in text
    assert line_of(text, "| BBH |") == "| BBH | 59.2 ± 1.2 | 59.2 | +0.0 [-1.2, +1.2] | yes | 6511/6511 |"
    assert line_of(text, "| Language Understanding |") == (
        "| Language Understanding | 64.6 ± 1.0 | 62.0 | +2.6 [+1.6, +3.6] | no | 39727/39727 |")
    assert line_of(text, "| Math |").startswith("| Math | 58.0 ± 2.7 | 61.1 | -3.1 [-5.8, -0.4] | no |")
    assert "5 of 5 categories complete; the published value lies inside the measured 95% CI for 3 of them." in text
    # protocol differences: blog states no commonsense shots; ours are recorded from the result files
    assert "| commonsense | piqa | 0-shot | acc_norm | shots unstated | unknown (blog states no shots) |" in text
    assert "| language | mmlu | 5-shot | acc | 5-shot | same shot count |" in text
    assert "Phi-3 card labels the same value (61.1) '0-Shot; CoT'" in text
    assert "| mmlu | language | 56.0 ± 0.8 | 14042/14042 | 56.7 (shots unstated) [A2]; 56.3 (5-shot) [A3]; 58.11 (5-shot) [A4] |" in text


def test_unmatched_model_without_reference_shows_measured_only():
    text = report.build_report(FIXTURES, "smollm2-135m")
    assert "No published category row matches `smollm2-135m`" in text
    assert line_of(text, "| BBH |") == "| BBH | — (not run) | — | — | — | — |"
    assert "1 of 5 categories complete." in text
    assert "Warning: smollm2-135m/gsm8k" in text


def test_partial_category_is_flagged_against_a_chosen_reference():
    text = report.build_report(FIXTURES, "smollm2-135m", reference="llama-2-7b")
    line = line_of(text, "| Commonsense Reasoning |")
    assert "54.3 ± 4.8* (missing arc_challenge, siqa; n=3155/5481)" in line
    assert "| 62.2 |" in line and "(partial: not comparable)" in line
    assert "| mbpp | — | not run | — | 20.8 (3-shot) [A6-PWC] |" in text


def test_main_writes_report_file(tmp_path):
    path = report.main(FIXTURES, "phi-2", out_dir=tmp_path)
    assert path == tmp_path / "report_phi-2.md"
    assert path.read_text() == report.build_report(FIXTURES, "phi-2")


def test_cli_prints_the_report(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    report.add_arguments(parser)
    args = parser.parse_args(["--model", "phi-2", "--results-dir", str(FIXTURES), "--out-dir", str(tmp_path)])
    assert report.run_from_args(args) == 0
    assert capsys.readouterr().out.startswith("# Reproduction report: phi-2")


def test_unknown_model_or_reference():
    with pytest.raises(Phi2EvalError, match="available: phi-2, smollm2-135m"):
        report.build_report(FIXTURES, "nope")
    with pytest.raises(Phi2EvalError, match="unknown reference model"):
        report.build_report(FIXTURES, "phi-2", reference="gpt-5")
