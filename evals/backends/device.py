"""The device side of the fast backend: which attention kernels run, what a forward pass or a
decoding step costs beyond its arithmetic, and budgets sized by the device's memory. These
numbers decide trade-offs (how much padding saves a batch, when a cluster joins the pool); they
never change an answer."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

from evals.backends.batching import MAX_TOKENS, kv_bytes_per_token
from evals.memory import available_memory_bytes

# A decoding step has a fixed cost (reading the weights on a CPU, launching kernels on a GPU)
# and each row adds the reads of its KV cache, so generation batches are larger than
# log-likelihood's. On the CPU (SmolLM2-135M, float32, rows of 1500 tokens, reserved KV cache)
# a step took 37.5 ms for 1 row, 70.3 ms for 5 and 191.7 ms for 27: 7.1 ms per row at 27 rows
# against 14.1 ms at 5. See gen_budget_tokens and gen_pad_waste.
CPU_GEN_MEMORY_SHARE = 0.25  # CPU: a generation batch's KV cache may fill this share of available memory
# CUDA: ... of the free device memory. Rows leaving a batch are compacted in place (compact_cache),
# so the cache is never held twice; room is left for the weights' working set and for the prefill
# groups, whose own cache is held next to it (at most GEN_PREFILL_SHARE of the batch's tokens)
GPU_GEN_MEMORY_SHARE = 0.5
GPU_ASSUMED_BANDWIDTH = 3.35e12  # bytes/s (H100; H200 4.8e12)

SDPA_ENV = "PHI2EVAL_SDPA"  # "default": leave PyTorch's choice of attention kernel alone


def attention_kernels(device: torch.device):
    """Context for the backend's forward passes. On CUDA, scaled_dot_product_attention may use
    only the flash, memory-efficient and math kernels, not cuDNN's: with an explicit mask
    PyTorch prefers cuDNN on Hopper, which builds a plan for every new shape, and packed
    batches and every decoding step bring new shapes. $PHI2EVAL_SDPA=default turns this off."""
    if device.type != "cuda" or os.environ.get(SDPA_ENV) == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def to_device(t: torch.Tensor, device: torch.device, non_blocking: bool = True) -> torch.Tensor:
    """Host tensor `t` on `device`. On CUDA with `non_blocking`, copied from pinned memory without
    making the host wait: a plain copy from pageable memory waits until the device has run all
    its queued work, so the host could not prepare the next batch while the device runs this
    one. Elsewhere `t.to(device)` (on the CPU, `t` itself)."""
    if non_blocking and device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


# Fixed cost of one forward pass on a GPU, from the H200 runs of 2026-11-27 (Phi-2 shape, bf16):
# a one-token decoding step took 23 ms, and log-likelihood batches cost 22-37 ms each beyond
# their matrix products (results/bench/gpu_probe.json, gpu_phi2_mc.json). It is mostly the
# CPU launching kernels, so it does not shrink with the batch.
GPU_FORWARD_OVERHEAD_S = 0.025
GPU_ASSUMED_FLOPS = 400e12  # bf16 matrix-product rate assumed for the trade-off (H100/H200)
# On the CPU (2 cores, SmolLM2-135M, float32) a forward pass of 1 token took 25 ms and one of
# 1024 tokens 1.17 s: 190 GFLOP/s of matrix products, and a fixed cost of about 17 tokens' worth
CPU_FORWARD_OVERHEAD_S = 0.025
CPU_ASSUMED_FLOPS = 190e9
# A log-likelihood batch on the CPU costs about 60 ms beyond its tokens (the forward pass's
# per-layer work and the batch's own Python): fitted over 15 runs of OpenBookQA, WinoGrande and
# PIQA (200 documents each, 2 to 26 batches) on the AMD EPYC, 62 ms against 1.37 ms per
# forwarded token, so 45 tokens' worth for SmolLM2-135M
CPU_LL_BATCH_OVERHEAD_S = 0.06


def gpu_pad_waste(model: Any, budget_tokens: int, attention_only: bool = False) -> int:
    """Padded tokens per batch worth accepting on a GPU to save a batch (a forward pass): the
    tokens the model computes in GPU_FORWARD_OVERHEAD_S (1800 for Phi-2), at most a quarter
    of the token budget. `attention_only` (packed rows, packed_attention.py): a padded token
    costs only attention, about row length / merge_ratio of a real token; rows are taken as
    1024 tokens long, so it is merge_ratio / 1024 times as many. Packed batches are cut by real
    tokens, so there it decides where attention groups split (packed_groups); a group costs
    only its attention calls' launches, less than a forward pass, so this errs towards fewer,
    more padded groups (not measured on a GPU yet)."""
    factor = max(1.0, merge_ratio(model) / 1024) if attention_only else 1.0
    return overhead_tokens(sum(p.numel() for p in model.parameters()), True, budget_tokens, factor)


def overhead_tokens(n_params: int, cuda: bool, budget_tokens: int, factor: float = 1.0) -> int:
    """A forward pass's fixed cost in tokens of matrix products (times `factor`) of a model of
    `n_params`: on a GPU the tokens it computes in GPU_FORWARD_OVERHEAD_S (1800 for Phi-2), at
    most a quarter of the token budget; on the CPU in CPU_FORWARD_OVERHEAD_S at
    CPU_ASSUMED_FLOPS (17 for SmolLM2-135M)."""
    if cuda:
        tokens = factor * GPU_FORWARD_OVERHEAD_S * GPU_ASSUMED_FLOPS / (2 * max(1, n_params))
        return int(min(budget_tokens // 4, tokens))
    return int(factor * cpu_tokens(CPU_FORWARD_OVERHEAD_S, n_params))


def cpu_tokens(seconds: float, n_params: int) -> float:
    """Tokens of matrix products a model of `n_params` computes on the CPU in `seconds`
    (at CPU_ASSUMED_FLOPS)."""
    return seconds * CPU_ASSUMED_FLOPS / (2 * max(1, n_params))


def cpu_attention_waste(model: Any) -> float:
    """What a log-likelihood batch of packed rows in one attention group (the CPU's, see
    FastLM.grouped_rows) may pay in padding to save another batch, as tokens x longest row
    length: a padded token costs only attention. Padding a row of l tokens to the longest, T,
    adds T^2 - l^2 (about 2T) computed pairs per padded token, each 1/merge_ratio of a real
    token's matrix-product FLOPs at a quarter to three fifths of their rate (small_attention on
    the AMD EPYC, 4 to 32 rows of 64 to 512 tokens: 49-120 GFLOP/s against 190-206 for a
    linear layer): 3.5T to 8T / merge_ratio of a real token, taken as 4T (of 1T, 4T and 16T,
    4T was fastest). So padding up to this over T costs less than a batch's fixed cost
    (CPU_LL_BATCH_OVERHEAD_S at CPU_ASSUMED_FLOPS, 42 tokens for SmolLM2-135M):
    42 x 3073 / 4, about 32.6k (195 padded
    tokens where the longest row is 167). Before, such batches were cut by the padding ratio
    alone: OpenBookQA's 200 documents took 26 batches of 12 to 330 tokens; with this allowance
    4 batches and 0.83x the time (with 4x it: 3 batches, 0.88x; with a quarter: 7, 0.86x);
    HellaSwag, WinoGrande and PIQA took 1.02x, 0.88x and 0.92x the time (one sweep of two
    repeats; the nine tasks side by side: results/bench/cpu_smollm2_nine_attention_waste.json)."""
    n_params = sum(p.numel() for p in model.parameters())
    return cpu_tokens(CPU_LL_BATCH_OVERHEAD_S, n_params) * merge_ratio(model) / 4


def forward_cost_tokens(model: Any, device: torch.device, budget_tokens: int) -> int:
    """overhead_tokens of `model` on `device` (its fixed cost per forward pass, in tokens)."""
    return overhead_tokens(sum(p.numel() for p in model.parameters()), device.type == "cuda", budget_tokens)


def _weight_bytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _value_bytes(model: Any) -> int:
    return next(model.parameters()).element_size()


def gen_budget_tokens(model: Any, device: torch.device, base: int) -> int:
    """Token budget of a generation batch (rows x (prompt + max_gen_toks)): as many tokens as
    fill a share of the memory left (CPU: CPU_GEN_MEMORY_SHARE of the available memory; CUDA:
    GPU_GEN_MEMORY_SHARE of the free device memory) with KV cache, which is most of a decoding
    batch's memory (the prefill runs in groups within the log-likelihood budget `base`); on
    the CPU never below `base`, on CUDA at least 1024. SmolLM2-135M in float32 (46 KiB per token) on a 24 GiB machine: about
    120k tokens; Phi-2 in bf16 (320 KiB) on an H200: about 206k."""
    kv = kv_bytes_per_token(model.config, _value_bytes(model))
    if device.type == "cuda" and torch.cuda.is_available():
        return kv_budget_tokens(torch.cuda.mem_get_info(device)[0], kv, GPU_GEN_MEMORY_SHARE, min(base, 1024))
    if device.type == "cpu":
        return kv_budget_tokens(available_memory_bytes(), kv, CPU_GEN_MEMORY_SHARE, base)
    return base


def kv_budget_tokens(free_bytes: int | None, kv_bytes: int | None, share: float, base: int) -> int:
    """Tokens of KV cache (`kv_bytes` each) that fill `share` of `free_bytes`, at most
    MAX_TOKENS and at least `base` (`base` if either size is unknown)."""
    if not free_bytes or not kv_bytes:
        return base
    return max(base, min(MAX_TOKENS, int(share * free_bytes / kv_bytes)))


def gen_pad_waste(model: Any, device: torch.device, budget_tokens: int) -> int:
    """Left-padding tokens a generation batch of `model` on `device` may hold in all, to save
    another batch (gen_pad_waste_tokens)."""
    kv = kv_bytes_per_token(model.config, _value_bytes(model))
    return gen_pad_waste_tokens(_weight_bytes(model), kv or 0, device.type == "cuda", budget_tokens)


def gen_pad_waste_tokens(weight_bytes: int, kv_bytes: int, cuda: bool, budget_tokens: int) -> int:
    """Left-padding tokens a generation batch may hold in all, to save another batch, i.e. a
    whole decoding loop: F / k, a decoding step's fixed cost over the cost of one token's KV
    reads in a step (rows are prefilled in groups of similar length, _prefill_groups, so the
    padding costs decoding steps only), at most a quarter of the token budget. CPU (steps
    bound by memory reads): weights over one token's KV bytes (SmolLM2-135M: 11.7k tokens;
    measured: a step of 1 row 33 ms, 2.8 us more per row and cached token). GPU:
    F = max(GPU_FORWARD_OVERHEAD_S, weights / bandwidth), k = KV bytes / bandwidth. 0 if the
    KV size is unknown."""
    if kv_bytes <= 0:
        return 0
    F = float(weight_bytes)
    if cuda:
        F = max(GPU_FORWARD_OVERHEAD_S * GPU_ASSUMED_BANDWIDTH, F)  # in bytes read at the bandwidth
    return int(min(budget_tokens // 4, F / kv_bytes))



def merge_ratio(model: Any) -> float:
    """Matrix-product FLOPs per token over attention FLOPs per token pair, which decides when
    inputs share a trie row (prefix_trie.pack_rows): non-embedding parameters over
    2 x layers x hidden size (3073 for SmolLM2-135M, about 16k for Phi-2); 1000 if the config
    does not say."""
    cfg = model.config
    layers = getattr(cfg, "num_hidden_layers", None)
    hidden = getattr(cfg, "hidden_size", None)
    if not (isinstance(layers, int) and isinstance(hidden, int)) or layers * hidden <= 0:
        return 1000.0
    emb = model.get_input_embeddings().weight.numel()
    return max(1.0, (sum(p.numel() for p in model.parameters()) - emb) / (2 * layers * hidden))
