"""FastLM itself (evals/backends/fast.py): registered with lm-eval, budgets from the device,
peak memory, a random Phi-shaped model."""

from __future__ import annotations

from evals.backends.fast import FastLM
from tests.backends.prompts import (
    CONTEXTS,
    CONTINUATIONS,
    FEWSHOT_PROMPTS,
    GEN_PROMPTS,
    assert_same_ll,
    inst,
)


def test_generation_budget(smol, monkeypatch):
    """On the CPU a generation batch may fill a share of the available memory with KV cache
    (never less than the log-likelihood budget); an explicit budget holds for both."""
    from evals.backends import device

    model, tok = smol
    monkeypatch.setattr(device, "available_memory_bytes", lambda: 8 << 30)
    monkeypatch.delenv("PHI2EVAL_TOKEN_BUDGET", raising=False)
    kv = 2 * 30 * 3 * 64 * 4  # float32
    lm = FastLM(model, tok, max_length=2048)
    assert lm.gen_budget.tokens == int(device.CPU_GEN_MEMORY_SHARE * (8 << 30) / kv) > lm.budget.tokens
    assert FastLM(model, tok, max_length=2048, token_budget=3000).gen_budget.tokens == 3000
    monkeypatch.setattr(device, "available_memory_bytes", lambda: 1 << 20)
    assert FastLM(model, tok, max_length=2048).gen_budget.tokens == lm.budget.tokens


def test_registered_with_lm_eval():
    from lm_eval.api.registry import get_model

    assert get_model("phi2eval-fast") is FastLM


def test_peak_memory_recorded(fast):
    fast.loglikelihood([inst("loglikelihood", ("Hello", " world"))], disable_tqdm=True)
    assert fast.peak_memory_bytes > 0


def test_random_tiny_phi_matches_hf():
    """Phi architecture (partial rotary) through the packed path: random tiny model."""
    from lm_eval.models.huggingface import HFLM

    from evals.random_model import build_random

    model, tok, info = build_random("tiny-phi", "float32", "cpu")
    assert info["random_weights"] is True and model.config.vocab_size >= len(tok)
    hf = HFLM(pretrained=model, tokenizer=tok, batch_size=4, max_length=info["max_length"], device="cpu")
    lm = FastLM(model, tok, max_length=info["max_length"])
    reqs = [inst("loglikelihood", (c, x)) for c in CONTEXTS[2:5] for x in CONTINUATIONS[:4]]
    assert_same_ll(lm.loglikelihood(reqs, disable_tqdm=True), hf.loglikelihood(reqs, disable_tqdm=True))
    g = [inst("generate_until", (p, {"until": ["\n"], "max_gen_toks": 6})) for p in GEN_PROMPTS[:3] + FEWSHOT_PROMPTS]
    assert lm.generate_until(g) == hf.generate_until(g)
    # a cluster of 4 prompts decodes in the pool (GEN_CLUSTER_MIN_ROWS); alone, it is one batch
    assert lm.generate_until(g[3:]) == hf.generate_until(g[3:])
    assert lm.stats["gen_prefix_in_place_batches"] >= 1  # Phi's attention read the shared prefix in place
