"""lm-eval's own Hugging Face backend (HFLM) around an already-loaded model."""


def make_hflm(loaded, batch_size: int | str = 16, max_gen_toks: int = 256):
    """HFLM wrapping `loaded.model`/`loaded.tokenizer` (no second load)."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size,
                max_length=loaded.info["max_length"], max_gen_toks=max_gen_toks)
