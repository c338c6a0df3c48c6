"""Backends: an lm-eval `LM` around an already-loaded model. The runner knows nothing else."""

BACKENDS = ("fast", "hf")
DEFAULT_BACKEND = "hf"


def make_lm(backend: str, loaded, batch_size: int | str = 16, max_gen_toks: int = 256):
    """Build the lm-eval LM named `backend` ('hf' = lm-eval's HFLM, 'fast' = ours) for `loaded`."""
    if backend == "hf":
        from evals.backends.hf import make_hflm

        return make_hflm(loaded, batch_size=batch_size, max_gen_toks=max_gen_toks)
    if backend == "fast":
        from evals.backends.fast import FastLM

        return FastLM(loaded.model, loaded.tokenizer, batch_size=batch_size,
                      max_length=loaded.info["max_length"], max_gen_toks=max_gen_toks)
    raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
