"""The phi2eval command line: list, check and table need no model."""

from pathlib import Path

import pytest

from evals import cli

FIXTURE_RESULTS = Path(__file__).resolve().parent / "fixtures" / "results"
FOURTEEN = ["bbh", "piqa", "winogrande", "arc_easy", "arc_challenge", "siqa", "hellaswag", "openbookqa",
            "mmlu", "squad_v2", "boolq", "gsm8k", "humaneval", "mbpp"]


def test_list_shows_every_benchmark_and_data_status(fixture_data, capsys):
    assert cli.main(["list", "--data-dir", str(fixture_data)]) == 0
    out = capsys.readouterr().out
    for name in FOURTEEN:
        assert f"\n{name} " in out, name
    assert "arc_easy       commonsense" in out
    assert "missing mmlu/test/anatomy_test.csv" in out  # the fixtures hold one MMLU subject only


def test_check_renders_a_prompt_without_a_model(fixture_data, capsys):
    assert cli.main(["check", "arc_easy", "boolq", "--data-dir", str(fixture_data)]) == 0
    out = capsys.readouterr().out
    assert "Question: Which object is a source of light?\nAnswer:" in out
    assert "Water -- Water is a liquid at room temperature.\nQuestion: is water wet?\nAnswer:" in out
    assert "checked 2 benchmark(s)" in out


def test_unknown_benchmark_is_one_line_and_exit_2(capsys):
    assert cli.main(["check", "hellaswg"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean hellaswag" in err


def test_table_from_saved_results(tmp_path, capsys):
    assert cli.main(["table", "--results-dir", str(FIXTURE_RESULTS), "--out-dir", str(tmp_path), "--no-plots"]) == 0
    assert (tmp_path / "categories.md").is_file() and (tmp_path / "benchmarks.csv").is_file()


class _Exited(Exception):
    """os._exit, replaced in the test so that pytest survives it."""


def test_a_torchrun_process_ends_with_os_exit_after_flushing(monkeypatch, capsys):
    import os

    def fake_exit(code):
        raise _Exited(code)

    monkeypatch.setattr(os, "_exit", fake_exit)
    monkeypatch.setattr("sys.argv", ["phi2eval", "check", "hellaswg"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(_Exited) as exited:
        cli.main()
    assert exited.value.args == (2,)  # the command's own exit code
    assert "did you mean hellaswag" in capsys.readouterr().err
    assert cli.main(["check", "hellaswg"]) == 2  # called with arguments (tests, scripts): a plain return
    monkeypatch.delenv("WORLD_SIZE")
    assert cli.main() == 2  # a single process returns normally
