"""phi2-repro: reproduce the Phi-2 announcement's benchmark table for any causal language model."""

__version__ = "0.1.0"
