"""FastLM's generation through transformers' generate (evals/backends/hf_generate.py): the
static-cache path and the fallback for kwargs beyond plain greedy decoding give HFLM's texts.

Uses the embedded SmolLM2-135M in float32 on CPU (session fixtures in conftest.py)."""

from __future__ import annotations

import pytest

from evals.backends.fast import FastLM
from tests.backends.prompts import GEN_PROMPTS, inst


@pytest.mark.parametrize("gen_kwargs", [
    {"until": ["\n\n", "Q:"], "max_gen_toks": 24, "do_sample": False},
    {"until": [","], "max_gen_toks": 12, "temperature": 0.0},
])
def test_static_cache_generation_identical_to_hf(smol, hf_lm, gen_kwargs):
    """--static-cache: transformers' generate with a static KV cache, bucketed shapes, same text."""
    model, tok = smol
    lm = FastLM(model, tok, max_length=2048, static_cache=True)
    reqs = [inst("generate_until", (p, dict(gen_kwargs)), i) for i, p in enumerate(GEN_PROMPTS)]
    assert lm.generate_until(reqs, disable_tqdm=True) == hf_lm.generate_until(reqs, disable_tqdm=True)


def test_static_cache_batches_have_bucketed_shapes(smol, monkeypatch):
    """Rows padded to a power of two, prompts to a multiple of STATIC_LEN_BUCKET; the padding
    rows' texts are dropped and a row's text ends at its first EOS."""
    from evals.backends.hf_generate import STATIC_LEN_BUCKET

    model, tok = smol
    lm = FastLM(model, tok, max_length=2048, static_cache=True)
    shapes, real = [], model.generate

    def spy(**kw):
        shapes.append((tuple(kw["input_ids"].shape), kw["cache_implementation"]))
        return real(**kw)

    monkeypatch.setattr(model, "generate", spy)
    reqs = [inst("generate_until", (p, {"until": ["\n"], "max_gen_toks": 6}), i) for i, p in enumerate(GEN_PROMPTS[:3])]
    got = lm.generate_until(reqs, disable_tqdm=True)
    assert shapes == [((4, STATIC_LEN_BUCKET), "static")] and len(got) == 3
    prompts = [tok(p)["input_ids"] for p in GEN_PROMPTS[:3]]
    assert got == lm._greedy_batch(prompts, ["\n"], 6)
    lm.generate_until(reqs[:1], disable_tqdm=True)  # one row runs in the 4-row shape already compiled
    lm.generate_until(reqs, disable_tqdm=True)
    assert shapes[1:] == [((4, STATIC_LEN_BUCKET), "static")] * 2


def test_kwargs_beyond_greedy_fall_back_to_generate_as_hflm_calls_it(fast, hf_lm, monkeypatch):
    """A repetition penalty is not plain greedy decoding: the batch runs through generate, with
    HFLM's texts; plain greedy kwargs never reach the fallback."""
    calls = []
    real = FastLM._hf_generate_batch
    monkeypatch.setattr(FastLM, "_hf_generate_batch", lambda self, *a: calls.append(len(a[0])) or real(self, *a))
    gen_kwargs = {"until": ["\n"], "max_gen_toks": 10, "repetition_penalty": 1.3}
    reqs = [inst("generate_until", (p, dict(gen_kwargs)), i) for i, p in enumerate(GEN_PROMPTS)]
    assert fast.generate_until(reqs, disable_tqdm=True) == hf_lm.generate_until(reqs, disable_tqdm=True)
    assert sum(calls) == len(GEN_PROMPTS)
    calls.clear()
    fast.generate_until([inst("generate_until", (GEN_PROMPTS[0], {"until": ["\n"], "max_gen_toks": 4}))],
                        disable_tqdm=True)
    assert not calls
