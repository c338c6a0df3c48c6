"""What a model's config says about the fast backend's shortcuts, before anything runs.

The fast backend's log-likelihood rows give every token its own position id and a mask of its
own (prefix_trie.py), and its decoding keeps a key/value cache it can copy, cut and widen
(kv_cache.py). Most causal LMs honour both. Some do not, and would give wrong numbers or
crash if they were sent that way:

  * sliding-window or local attention (Mistral's `sliding_window`, Gemma 2/3 and Cohere 2's
    sliding layers, GPT-Neo's local layers): a token must not see keys more than `window`
    positions back, which the backend's own masks do not encode. Inputs shorter than the
    window are unaffected.
  * ALiBi (BLOOM, MPT, Falcon with `alibi`): the position bias is built from a 2-D padding
    mask, not from position ids.
  * state-space or linear-attention layers (Mamba, Jamba): no key/value cache to copy.

FastLM asks these functions which paths a model may take; whatever they miss, its probe
(FastLM._check_rows) compares the shortcut with a plain forward on a short text before the
first real batch.
"""

from __future__ import annotations

from typing import Any

SLIDING_LAYER_TYPES = ("sliding", "local", "chunked")


def sliding_window(config: Any) -> int | None:
    """Tokens a layer's attention reaches back, where some layer is limited to fewer than
    all (the smallest such window), else None."""
    windows = []
    types = getattr(config, "layer_types", None) or []
    limited = any(any(s in str(t) for s in SLIDING_LAYER_TYPES) for t in types)
    window = getattr(config, "sliding_window", None)
    if isinstance(window, int) and window > 0:
        # Qwen2-style configs carry a window that only use_sliding_window switches on; where the
        # config lists layer types, a window counts only if some layer is of a sliding type
        if getattr(config, "use_sliding_window", True) is not False and (limited or not types):
            windows.append(window)
    if "local" in (getattr(config, "attention_layers", None) or []):  # GPT-Neo
        windows.append(int(getattr(config, "window_size", 256)))
    chunk = getattr(config, "attention_chunk_size", None)  # Llama 4: chunked local attention
    if isinstance(chunk, int) and chunk > 0:
        windows.append(chunk)
    return min(windows) if windows else None


def uses_alibi(config: Any) -> bool:
    """Whether attention adds ALiBi biases (computed from a 2-D mask, not from position ids)."""
    if getattr(config, "model_type", None) == "bloom" or getattr(config, "alibi", False) is True:
        return True
    attn = getattr(config, "attn_config", None)  # MPT
    if isinstance(attn, dict):
        return bool(attn.get("alibi", False))
    return bool(getattr(attn, "alibi", False))


def kv_cache_layers(config: Any) -> bool:
    """Whether every layer keeps a plain key/value cache (transformers' DynamicLayer or its
    sliding-window form), as the backend's decoding loop needs; False for state-space and
    linear-attention layers, or where transformers cannot say."""
    try:
        from transformers.cache_utils import DynamicCache, DynamicLayer

        layers = DynamicCache(config=config).layers
    except Exception:  # noqa: BLE001 - an unknown config: take the safe path
        return False
    return bool(layers) and all(isinstance(layer, DynamicLayer) for layer in layers)


def head_scale(config: Any) -> float:
    """Factor on the output layer's logits that the model's own forward applies (Cohere's
    `logit_scale`, Granite's 1 / `logits_scaling`); 1.0 for most models."""
    scale = 1.0
    if isinstance(getattr(config, "logit_scale", None), (int, float)):
        scale *= float(config.logit_scale)
    if isinstance(getattr(config, "logits_scaling", None), (int, float)) and config.logits_scaling:
        scale /= float(config.logits_scaling)
    return scale
