"""Model spec resolution (no loading)."""

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
