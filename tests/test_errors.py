"""Bad input: one line with a hint, exit code 2, no traceback (unless --debug), no earlier result touched."""

import shutil
from pathlib import Path

import pytest
import torch
from lm_eval.api.model import LM

from evals import cli
from evals.models import LoadedModel

REPO = Path(__file__).resolve().parent.parent
FIXTURE_DATA = Path(__file__).resolve().parent / "fixtures" / "data"
ARC = "arc/ARC-Easy-Test.jsonl"


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A config dir with only arc_easy, a data dir with the ARC fixtures, and an earlier result file."""
    configs = tmp_path / "configs"
    shutil.copytree(REPO / "configs" / "models", configs / "models")
    (configs / "tasks").mkdir()
    shutil.copy(REPO / "configs" / "tasks" / "arc_easy.yaml", configs / "tasks")
    data = tmp_path / "data"
    shutil.copytree(FIXTURE_DATA / "arc", data / "arc")
    out = tmp_path / "results"
    earlier = out / "smollm2-135m" / "arc_easy.json"
    earlier.parent.mkdir(parents=True)
    earlier.write_text('{"schema": "phi2eval.result/1", "benchmark": "arc_easy", "partial": false, "score": 0.5}\n')
    monkeypatch.setenv("PHI2EVAL_CONFIG_DIR", str(configs))
    monkeypatch.setenv("PHI2EVAL_DATA_DIR", str(data))
    monkeypatch.setenv("PHI2EVAL_CACHE_DIR", str(tmp_path / "cache"))
    return {"configs": configs, "data": data, "out": out, "earlier": earlier, "bytes": earlier.read_bytes(),
            "task": configs / "tasks" / "arc_easy.yaml"}


def fails(world, capsys, *argv) -> str:
    """Run `phi2eval run ...`; assert exit code 2, one stderr line, the earlier result intact; return the line."""
    code = cli.main(["run", *argv, "--output-dir", str(world["out"])])
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("phi2eval:")]  # lm-eval's progress bars aside
    assert len(lines) == 1 and lines[0].startswith("phi2eval: error: ") and "Traceback" not in stderr, stderr
    err = lines[0]
    print(f"\n{err}")
    assert world["earlier"].read_bytes() == world["bytes"]
    assert sorted(p.name for p in world["out"].rglob("*") if p.is_file()) == ["arc_easy.json"]
    return err


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_unknown_benchmark(world, capsys):
    err = fails(world, capsys, "arc_esay")
    assert "unknown benchmark 'arc_esay': did you mean arc_easy?" in err


def test_unknown_model(world, capsys):
    err = fails(world, capsys, "arc_easy", "--model", "smollm-135")
    assert "unknown model 'smollm-135': did you mean smollm2-135m" in err and "use a preset" in err


def test_misspelled_task_key(world, capsys):
    edit(world["task"], "doc_to_text:", "doc_to_txt:")
    err = fails(world, capsys, "arc_easy")
    assert "arc_easy.yaml: unknown key 'doc_to_txt': did you mean 'doc_to_text'?" in err


def test_task_key_of_the_wrong_type(world, capsys):
    edit(world["task"], "num_fewshot: 0", "num_fewshot: zero")
    err = fails(world, capsys, "arc_easy")
    assert "arc_easy.yaml: key 'num_fewshot' must be int, got str" in err


def test_missing_phi2_field(world, capsys):
    edit(world["task"], "    primary_metric: acc\n", "")
    err = fails(world, capsys, "arc_easy")
    assert "arc_easy.yaml: metadata.phi2 is missing 'primary_metric' (str)" in err


def test_malformed_yaml(world, capsys):
    edit(world["task"], "num_fewshot: 0", "num_fewshot: [0")
    err = fails(world, capsys, "arc_easy")
    assert "arc_easy.yaml:" in err and "malformed YAML" in err


def test_missing_data_dir(world, capsys):
    err = fails(world, capsys, "arc_easy", "--data-dir", str(world["data"] / "nowhere"))
    assert "data dir" in err and "does not exist" in err


def test_missing_data_file(world, capsys):
    (world["data"] / ARC).unlink()
    err = fails(world, capsys, "arc_easy")
    assert f"missing data file {world['data'] / ARC} for arc_easy" in err and "allenai/ai2_arc" in err


def test_malformed_data_line_names_file_and_line(world, capsys):
    path = world["data"] / ARC
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:-5]
    path.write_text("\n".join(lines) + "\n")
    err = fails(world, capsys, "arc_easy")
    assert f"{path}:2: not valid JSON" in err


def test_empty_split(world, capsys):
    (world["data"] / ARC).write_text("")
    err = fails(world, capsys, "arc_easy")
    assert "arc_easy: split(s) test are empty" in err


class OOMLM(LM):
    """A backend whose every request runs out of GPU memory."""

    def loglikelihood(self, requests, disable_tqdm=False):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    loglikelihood_rolling = generate_until = loglikelihood


def fake_model(monkeypatch, lm: LM) -> None:
    """Skip the model load: a fake LoadedModel and the given backend."""
    info = {"name": "smollm2-135m", "id": "fake", "source": "gguf", "fingerprint": "sha256:fake",
            "dtype": "float32", "device": "cpu", "max_length": 2048}
    monkeypatch.setattr("evals.models.load_model", lambda *a, **k: LoadedModel(None, None, dict(info)))
    monkeypatch.setattr("evals.backends.make_lm", lambda *a, **k: lm)


def test_cuda_out_of_memory(world, capsys, monkeypatch):
    fake_model(monkeypatch, OOMLM())
    err = fails(world, capsys, "arc_easy")
    assert err == "phi2eval: error: CUDA out of memory; lower --batch-size, use --dtype bfloat16 or more GPUs"


class CPUOOMLM(LM):
    """A backend whose every request fails in the CPU allocator (a RuntimeError, not an OutOfMemoryError)."""

    def loglikelihood(self, requests, disable_tqdm=False):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 26843545600 bytes. Error code 12 (Cannot allocate memory)")

    loglikelihood_rolling = generate_until = loglikelihood


def test_weights_larger_than_the_memory(world, capsys, monkeypatch):
    """Refused from the config before the load (a CPU load past the memory is killed by Linux, uncaught)."""
    monkeypatch.setattr("evals.memory.available_on", lambda device: 1 << 20)
    err = fails(world, capsys, "arc_easy", "--model", "random:tiny-phi")
    assert err.startswith("phi2eval: error: random:tiny-phi needs 0.0 GiB to load its 0.01B weights in float32, but cpu "
                          "has 0.0 GiB available: use a smaller model or a machine with more memory")


def test_cpu_out_of_memory(world, capsys, monkeypatch):
    fake_model(monkeypatch, CPUOOMLM())
    err = fails(world, capsys, "arc_easy")
    assert err.startswith("phi2eval: error: out of memory (") and "can't allocate memory" in err
    assert err.endswith("lower --batch-size or use a smaller model/dtype") and "\n" not in err


class NeverCalledLM(LM):
    """A backend no request may reach: the options are refused before any work."""

    def loglikelihood(self, requests, disable_tqdm=False):
        raise AssertionError("the run started despite a bad option")

    loglikelihood_rolling = generate_until = loglikelihood


@pytest.mark.parametrize("argv,said", [
    (["--limit", "0"], "--limit must be a whole number of at least 1, not 0"),
    (["--limit", "-3"], "--limit must be a whole number of at least 1, not -3"),
    (["--batch-size", "0"], "--batch-size must be a whole number of at least 1, not 0"),
    (["--max-gen-toks", "0"], "--max-gen-toks must be a whole number of at least 1, not 0"),
    (["--dtype", "float99"], "unknown --dtype 'float99': use float32, bfloat16 or float16"),
    (["--dtype", "int8"], "unknown --dtype 'int8': use float32, bfloat16 or float16"),
    (["--device", "tpu"], "unknown --device 'tpu': use cpu, cuda or cuda:N"),
])
def test_bad_option_values_are_refused_before_the_model_loads(world, capsys, monkeypatch, argv, said):
    loads = []
    monkeypatch.setattr("evals.models.load_model", lambda *a, **k: loads.append(a))
    monkeypatch.setattr("evals.backends.make_lm", lambda *a, **k: NeverCalledLM())
    err = fails(world, capsys, "arc_easy", *argv)
    assert err == f"phi2eval: error: {said}" and not loads


def test_cuda_asked_for_where_there_is_none(world, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fake_model(monkeypatch, NeverCalledLM())
    err = fails(world, capsys, "arc_easy", "--device", "cuda:0")
    assert "--device cuda:0: this machine has no CUDA GPU" in err and err.endswith("use --device cpu")


def test_an_output_folder_that_cannot_be_written_is_refused_before_the_model_loads(world, capsys, monkeypatch, tmp_path):
    fake_model(monkeypatch, NeverCalledLM())
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    code = cli.main(["run", "arc_easy", "--output-dir", str(blocked / "results")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith(f"phi2eval: error: cannot write results to {blocked / 'results'} (")
    assert err[0].endswith("pass --output-dir with a folder you can write")


def test_debug_shows_the_traceback(world, monkeypatch):
    fake_model(monkeypatch, OOMLM())
    with pytest.raises(torch.OutOfMemoryError):
        cli.main(["--debug", "run", "arc_easy", "--output-dir", str(world["out"])])
    assert world["earlier"].read_bytes() == world["bytes"]


class ShortContextLM(LM):
    """A backend with an 8-character context: every ARC prompt is cut from the left (HFLM's rule)."""

    max_length = 8

    def tok_encode(self, text, add_special_tokens=None):
        return list(text)

    def _encode_pair(self, context, continuation):
        return list(context), list(continuation)

    def loglikelihood(self, requests, disable_tqdm=False):
        return [(-float(len(r.args[1])), False) for r in requests]

    loglikelihood_rolling = generate_until = loglikelihood


def test_prompts_longer_than_the_context_are_counted(world, monkeypatch, capsys):
    fake_model(monkeypatch, ShortContextLM())
    assert cli.main(["run", "arc_easy", "--output-dir", str(world["out"]), "--no-cache"]) == 0
    from evals.results import read_result

    result = read_result(world["earlier"])  # a complete (unlimited) run replaces the earlier complete one
    assert result["truncated"] == result["cache"]["misses"] == 7  # fixture questions with 3 and 4 choices
    assert "7 request(s) of arc_easy were longer than the model's context (8 tokens)" in capsys.readouterr().out


def test_static_cache_needs_the_fast_backend(world, capsys):
    err = fails(world, capsys, "arc_easy", "--backend", "hf", "--static-cache")
    assert "--static-cache is an option of the fast backend, not hf: drop it or use --backend fast" in err


@pytest.mark.parametrize("args,message", [
    (("--backend", "hf", "--cuda-graphs"), "--cuda-graphs is an option of the fast backend, not hf"),
    (("--static-cache", "--cuda-graphs"), "--static-cache and --cuda-graphs are two ways of decoding: pick one"),
])
def test_cuda_graphs_needs_the_fast_backend_without_static_cache(world, capsys, args, message):
    assert message in fails(world, capsys, "arc_easy", *args)


def test_cuda_graphs_reaches_the_backend_and_is_recorded(world, monkeypatch):
    seen = {}
    fake_model(monkeypatch, ShortContextLM())
    monkeypatch.setattr("evals.backends.make_lm", lambda *a, **k: seen.update(k) or ShortContextLM())
    assert cli.main(["run", "arc_easy", "--output-dir", str(world["out"]), "--cuda-graphs"]) == 0
    from evals.results import read_result

    assert seen["cuda_graphs"] is True and seen["static_cache"] is False
    assert read_result(world["earlier"])["model"]["backend"] == "fast+cuda-graphs"


def test_static_cache_reaches_the_backend_and_is_recorded(world, monkeypatch):
    seen = {}
    fake_model(monkeypatch, ShortContextLM())
    monkeypatch.setattr("evals.backends.make_lm", lambda *a, **k: seen.update(k) or ShortContextLM())
    assert cli.main(["run", "arc_easy", "--output-dir", str(world["out"]), "--static-cache"]) == 0
    from evals.results import read_result

    assert seen["static_cache"] is True
    assert read_result(world["earlier"])["model"]["backend"] == "fast+static-cache"


def test_partial_run_never_replaces_a_complete_result(world, monkeypatch):
    fake_model(monkeypatch, ShortContextLM())
    assert cli.main(["run", "arc_easy", "--limit", "1", "--output-dir", str(world["out"])]) == 0
    assert world["earlier"].read_bytes() == world["bytes"]
    partial = world["earlier"].with_name("arc_easy.partial.json")
    assert partial.is_file() and '"partial": true' in partial.read_text()


class SecondCallOOMLM(ShortContextLM):
    """Answers the first benchmark, runs out of memory on the second."""

    calls = 0

    def loglikelihood(self, requests, disable_tqdm=False):
        SecondCallOOMLM.calls += 1
        if SecondCallOOMLM.calls > 1:
            raise torch.OutOfMemoryError("CUDA out of memory.")
        return super().loglikelihood(requests)


def test_finished_benchmarks_are_saved_before_a_later_one_fails(world, monkeypatch, capsys):
    shutil.copy(REPO / "configs" / "tasks" / "arc_challenge.yaml", world["configs"] / "tasks")
    shutil.copytree(FIXTURE_DATA / "arc", world["data"] / "arc", dirs_exist_ok=True)
    world["earlier"].unlink()  # (this run is complete, so it would replace it anyway)
    fake_model(monkeypatch, SecondCallOOMLM())
    assert cli.main(["run", "arc_easy", "arc_challenge", "--output-dir", str(world["out"]), "--no-cache"]) == 2
    folder = world["out"] / "smollm2-135m"
    assert sorted(p.name for p in folder.iterdir()) == ["arc_easy.json", "arc_easy.samples.jsonl"]
    assert "CUDA out of memory" in capsys.readouterr().err


def test_a_failed_write_leaves_the_earlier_result_and_no_temp_file(world, monkeypatch):
    from evals import results

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(results.os, "replace", broken_replace)
    with pytest.raises(OSError):
        results.write_result(world["out"], "smollm2-135m", {"benchmark": "arc_easy", "partial": False}, [])
    assert world["earlier"].read_bytes() == world["bytes"]
    assert sorted(p.name for p in world["earlier"].parent.iterdir()) == ["arc_easy.json"]
