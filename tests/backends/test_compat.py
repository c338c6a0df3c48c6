"""What model configs say about the fast backend's shortcuts (evals/backends/compat.py)."""

from __future__ import annotations

import pytest
from transformers import AutoConfig

from evals.backends.compat import head_scale, kv_cache_layers, sliding_window, uses_alibi


def cfg(model_type: str, **kw):
    return AutoConfig.for_model(model_type, **kw)


@pytest.mark.parametrize("model_type, kw, window", [
    ("llama", {}, None),
    ("mistral", {"sliding_window": 4096}, 4096),
    ("mistral", {"sliding_window": None}, None),
    ("qwen2", {"sliding_window": 4096}, None),  # carried, but use_sliding_window is off
    ("qwen2", {"use_sliding_window": True, "sliding_window": 4096}, 4096),
    ("gemma3_text", {"sliding_window": 512}, 512),  # sliding layers listed in layer_types
    ("gpt_neo", {"window_size": 256}, 256),  # GPT-Neo's local layers
    ("gpt_neo", {"attention_types": [[["global"], 24]], "num_layers": 24}, None),
])
def test_sliding_window(model_type, kw, window):
    assert sliding_window(cfg(model_type, **kw)) == window


def test_a_window_counts_only_where_a_layer_slides():
    c = cfg("gemma3_text", sliding_window=512, num_hidden_layers=2, layer_types=["full_attention", "full_attention"])
    assert sliding_window(c) is None


@pytest.mark.parametrize("model_type, kw, alibi", [
    ("bloom", {}, True), ("mpt", {}, True), ("falcon", {"alibi": True}, True),
    ("falcon", {}, False), ("llama", {}, False), ("gpt2", {}, False),
])
def test_uses_alibi(model_type, kw, alibi):
    assert uses_alibi(cfg(model_type, **kw)) is alibi


@pytest.mark.parametrize("model_type, kv", [("llama", True), ("gemma3_text", True), ("gpt2", True), ("mamba", False)])
def test_kv_cache_layers(model_type, kv):
    assert kv_cache_layers(cfg(model_type)) is kv


def test_kv_cache_layers_says_no_when_transformers_cannot_tell():
    class Odd:  # not a PretrainedConfig
        pass

    assert kv_cache_layers(Odd()) is False


def test_head_scale():
    assert head_scale(cfg("llama")) == 1.0
    assert head_scale(cfg("cohere", logit_scale=0.0625)) == 0.0625
    assert head_scale(cfg("granite", logits_scaling=8.0)) == 0.125
