"""Backends: an lm-eval `LM` around an already-loaded model. The runner knows nothing else."""

BACKENDS = ("fast", "hf")
DEFAULT_BACKEND = "fast"
HF_BATCH_SIZE = 16


def check_options(backend: str, static_cache: bool = False, cuda_graphs: bool = False) -> None:
    """Raise ConfigError for options the backend does not have (before any model is loaded)."""
    from evals.errors import ConfigError

    for flag, on in (("--static-cache", static_cache), ("--cuda-graphs", cuda_graphs)):
        if on and backend != "fast":
            raise ConfigError(f"{flag} is an option of the fast backend, not {backend}: "
                              "drop it or use --backend fast")
    if static_cache and cuda_graphs:
        raise ConfigError("--static-cache and --cuda-graphs are two ways of decoding: pick one")


def make_lm(backend: str, loaded, batch_size: int | None = None, max_gen_toks: int = 256,
            token_budget: int | None = None, static_cache: bool = False, cuda_graphs: bool = False):
    """Build the lm-eval LM named `backend` ('fast' = ours, 'hf' = lm-eval's HFLM) for `loaded`.

    `batch_size` caps rows per batch (None: 16 for hf; the token budget alone for fast);
    `static_cache` (fast only): greedy generation with a static KV cache, compiled on CUDA;
    `cuda_graphs` (fast only): greedy decoding steps replayed as CUDA graphs.
    """
    check_options(backend, static_cache, cuda_graphs)
    if backend == "hf":
        from evals.backends.hf import make_hflm

        return make_hflm(loaded, batch_size=batch_size or HF_BATCH_SIZE, max_gen_toks=max_gen_toks)
    if backend == "fast":
        from evals.backends.fast import FastLM

        return FastLM(loaded.model, loaded.tokenizer, batch_size=batch_size, max_length=loaded.info["max_length"],
                      token_budget=token_budget, max_gen_toks=max_gen_toks, static_cache=static_cache,
                      cuda_graphs=cuda_graphs)
    raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
