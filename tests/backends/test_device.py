"""The fast backend's device side (evals/backends/device.py): attention kernels, fixed costs
per forward pass and decoding step, budgets from memory."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from evals.backends.batching import MAX_TOKENS
from evals.backends.device import (
    GPU_ASSUMED_BANDWIDTH,
    GPU_ASSUMED_FLOPS,
    GPU_FORWARD_OVERHEAD_S,
    SDPA_ENV,
    attention_kernels,
    gen_pad_waste,
    gpu_pad_waste,
    kv_budget_tokens,
    merge_ratio,
    to_device,
)


def test_attention_kernels_exclude_cudnn_on_cuda_only(monkeypatch):
    """On CUDA the backend's forwards run without cuDNN attention (a plan per new shape:
    1.3 s for the first packed batch on an H200, results/bench/gpu_probe.json); CPU and
    PHI2EVAL_SDPA=default leave PyTorch's choice alone."""
    monkeypatch.delenv(SDPA_ENV, raising=False)
    before = torch.backends.cuda.cudnn_sdp_enabled()
    with attention_kernels(torch.device("cuda")):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
    with attention_kernels(torch.device("cpu")):
        assert torch.backends.cuda.cudnn_sdp_enabled() == before
    monkeypatch.setenv(SDPA_ENV, "default")
    with attention_kernels(torch.device("cuda")):
        assert torch.backends.cuda.cudnn_sdp_enabled() == before


def test_kv_budget_tokens():
    """Phi-2 in bf16 (320 KiB per token) in 35% of an H200's memory after its weights: 144k tokens."""
    assert kv_budget_tokens(135 * 10**9, 327680, 0.35, 1024) == 144195
    assert kv_budget_tokens(10**12, 327680, 0.6, 8192) == MAX_TOKENS
    assert kv_budget_tokens(10**9, 327680, 0.6, 1024) == int(0.6 * 10**9 / 327680)
    assert kv_budget_tokens(10**6, 327680, 0.6, 1024) == 1024  # never below the base
    assert kv_budget_tokens(None, 327680, 0.6, 1024) == kv_budget_tokens(10**9, None, 0.6, 1024) == 1024


def test_generation_pad_waste_is_a_steps_fixed_cost_in_kv_reads(smol):
    """CPU: weights over one token's KV bytes; GPU: at least the forward overhead's worth of
    bytes at the assumed bandwidth; a quarter of the budget at most."""
    model, _ = smol
    weights = sum(p.numel() * 4 for p in model.parameters())
    kv = 2 * 30 * 3 * 64 * 4
    assert gen_pad_waste(model, torch.device("cpu"), 10**9) == int(weights / kv)  # ~11.7k tokens
    assert gen_pad_waste(model, torch.device("cpu"), 4000) == 1000
    gpu = gen_pad_waste(model, torch.device("cuda"), 10**9)
    assert gpu == int(GPU_FORWARD_OVERHEAD_S * GPU_ASSUMED_BANDWIDTH / kv)


def test_gpu_pad_waste_is_the_tokens_of_one_forward_overhead():
    model = torch.nn.Linear(1000, 1000)  # ~1M parameters: capped by the budget
    assert gpu_pad_waste(model, 4000) == 1000
    n = sum(p.numel() for p in model.parameters())
    assert gpu_pad_waste(model, 10**12) == int(GPU_FORWARD_OVERHEAD_S * GPU_ASSUMED_FLOPS / (2 * n))


def test_gpu_pad_waste_of_packed_rows_counts_attention_only():
    """Packed rows pay padding in attention only: merge_ratio / 1024 times the padded-row waste."""
    class Deep(torch.nn.Module):  # 2 layers of hidden 64 with 1M matrix-product parameters
        config = SimpleNamespace(num_hidden_layers=2, hidden_size=64)

        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 64)
            self.body = torch.nn.Linear(1000, 1000, bias=False)

        def get_input_embeddings(self):
            return self.emb

    model = Deep()
    ratio = merge_ratio(model)
    assert ratio == 1_000_000 / (2 * 2 * 64)
    padded = gpu_pad_waste(model, 10**12)
    assert gpu_pad_waste(model, 10**12, attention_only=True) == pytest.approx(padded * ratio / 1024, rel=1e-3)
    assert gpu_pad_waste(model, 4000, attention_only=True) == 1000  # still a quarter of the budget at most


def test_to_device_pins_and_does_not_wait_on_cuda_only():
    """On CUDA a host tensor is copied from pinned memory, non-blocking (a plain copy would wait
    for the device's queued work); blocking when asked; on the CPU the tensor itself."""
    calls = []

    class _Host:
        def pin_memory(self):
            calls.append("pin")
            return self

        def to(self, device, non_blocking=False):
            calls.append(("to", str(device), non_blocking))
            return "copied"

    cuda = torch.device("cuda")
    assert to_device(_Host(), cuda) == "copied" and calls == ["pin", ("to", "cuda", True)]
    calls.clear()
    assert to_device(_Host(), cuda, non_blocking=False) == "copied" and calls == [("to", "cuda", False)]
    t = torch.arange(3)
    assert to_device(t, torch.device("cpu")) is t
