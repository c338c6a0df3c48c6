"""Fast lm-eval backend: same answers as lm-eval's `hf` backend (HFLM), less work.

Log-likelihood
  * Tokenisation is HFLM's (TemplateLM._encode_pair, HFLM.tok_encode semantics, left
    truncation of context+continuation to max_length+1).
  * A request's model input is (context + continuation)[:-1]; its last len(continuation)
    positions predict the continuation. Distinct inputs, sorted, form a prefix trie
    (prefix_trie.py): neighbouring inputs that share leading tokens (the choices of one
    question, or documents sharing a passage, caption or everything before WinoGrande's
    blank) go into ONE packed row where each shared token runs once, at its depth as
    position id, under a mask that lets every token see only its ancestors. Rows stop
    growing where the extra attention of a longer row would cost more than the sharing
    saves. Single-token continuations (MMLU letters) share one input: one row position.
  * Contexts sharing >= SHARE_MIN tokens (a few-shot prompt) form a cluster whose prefix
    runs once per cluster, as a KV cache expanded to the rows of its batches.
  * A batch's rows run unpadded, concatenated into one sequence (packed_attention.py): only
    attention pays for padding, within groups of rows of similar length, so a batch takes rows
    of any length up to the token budget in real tokens (larger matrices for the linear layers,
    fewer forward passes); models whose attention is not SDPA through transformers'
    AttentionInterface run padded rows, batched by padding.
  * The base model returns hidden states; lm_head and log-softmax run only at the scored
    positions, in float32, in chunks.
  * Rows are sorted longest first and batched to a token budget (batching.py); an OOM halves
    the budget and retries.
  * Trie rows need a model that honours position ids and 4-D masks. Where the config says it
    does not (ALiBi, no key/value cache; compat.py), where a sliding window is shorter than a
    call's longest input, or where a probe before the first batch finds the trie rows
    disagreeing with the model's own forward (_check_rows: an error, or log-likelihoods apart
    by more than PROBE_TOL), every input runs alone in a right-padded row through the model's
    own forward, as HFLM runs it (_score_plain): same answers, only the batching and the
    log-softmax at scored positions saved. The reason is logged once. A model that fails the
    probe also decodes through transformers' generate (greedy decoding gives its own position
    ids and masks too).

Generation (greedy)
  * Prompts are tokenised like HFLM.tok_batch_encode (left truncation to max_length -
    max_gen_toks), sorted by length, left padded, decoded greedily with a KV cache.
  * Prompts sharing a few-shot prefix (a cluster) prefill it once; where the model's attention
    runs through transformers' AttentionInterface the rows' KV cache holds only their own
    tokens and each decoding step reads the prefix's one copy for all rows
    (prefix_attention.py), so a batch is sized by its rows' own tokens; otherwise the
    prefix's cache is copied to every row. A cluster of fewer than GEN_CLUSTER_MIN_ROWS prompts,
    or whose prefix copied to all but one of its rows is fewer tokens than the padding allowance
    (gen_pad_waste), joins the common pool, where prompts of different tasks share batches.
    On the CPU (mix_clusters) clusters also share batches, each row reading its own cluster's
    prefix in place (MultiPrefix); then only clusters of fewer than GEN_CLUSTER_MIN_ROWS
    prompts join the pool.
  * Generation batches have their own token budget (on the CPU sized by the KV cache's memory,
    gen_budget_tokens) and take rows of any length while reading their left padding's KV
    cache costs less than a decoding step's fixed cost (gen_pad_waste); a batch's rows are
    prefilled in groups of similar length whose caches are copied into one left-padded cache
    (widen_cache), so padding costs no prefill.
  * Each row stops on the model's EOS token, on max_gen_toks, or as soon as its decoded text
    holds a stop sequence whose cut can no longer move (looked for in the text of the last
    few tokens, the whole text decoded only once one appears); finished rows leave the batch,
    the rows behind them moved into their place in the reserved cache (compact_cache).
  * Output text = HFLM's post-processing (cut at the first stop sequence).
  * Sampling or unusual generation kwargs, and models without a plain key/value cache (Mamba),
    fall back to `model.generate` exactly as HFLM calls it. Under a sliding window shorter than
    a call's prompts plus max_gen_toks, prefixes are copied to every row, not read in place;
    under a longer one the cache is made of plain layers (_plain_cache), as without a window.
  * Optional (`static_cache=True`, `--static-cache`): greedy batches run through transformers'
    `generate` with a static KV cache, whose decoding step transformers compiles with
    torch.compile (CUDA graphs) on CUDA. Shapes are bucketed so few graphs are compiled; rows
    stay in the batch until all are finished and few-shot prefixes are not shared. Same text
    as the default path on CPU (tested); its speed on a GPU is not measured yet.
  * Optional (`cuda_graphs=True`, `--cuda-graphs`): the default greedy decoding, its steps run
    on fixed tensors and replayed as CUDA graphs (graph_decode.py): prefixes still read in place,
    rows compacted at half. Same text on CPU (tested, graphs through a CPU stand-in); its speed
    on a GPU is not measured yet.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import itertools
import logging
import os
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (
    configure_pad_token,
    handle_stop_sequences,
    has_bos_prefix,
    normalize_gen_kwargs,
    postprocess_generated_text,
    resolve_max_length,
)
from lm_eval.models.utils_hf import stop_sequences_criteria

from evals.backends import graph_decode
from evals.backends.batching import (
    BUDGET_ENV,
    MAX_TOKENS,
    TokenBudget,
    available_memory_bytes,
    default_budget,
    kv_bytes_per_token,
    packed_groups,
    peak_memory_bytes,
    plan_batches,
    run_batched,
)
from evals.backends.compat import kv_cache_layers, sliding_window, uses_alibi
from evals.backends.kv_cache import (
    compact_cache,
    compact_order,
    fill_rows,
    reserve_cache,
    widen_cache,
)
from evals.backends.lm_head import HeadScorer
from evals.backends.packed_attention import PACK_KW, make_pack, packed
from evals.backends.packed_attention import supports as supports_packed
from evals.backends.prefix_attention import PREFIX_KW, MultiPrefix, Prefix, cache_kv, shared_prefix
from evals.backends.prefix_attention import supports as supports_shared_prefix
from evals.backends.prefix_trie import ancestor_mask, build_row, pack_rows
from evals.backends.stops import StopCheck, stop_free_ids

log = logging.getLogger(__name__)

GREEDY_IGNORED_KWARGS = {"do_sample", "temperature", "top_p", "top_k"}
SHARE_MIN = 32  # shortest common prefix (tokens) worth running once per batch
# FastLM._check_rows: a short text whose inputs, scored through trie rows and each alone through
# the model's own forward, must agree to PROBE_TOL (largest log-likelihood difference of a request
# of 2-3 tokens; by dtype, None for any other). On SmolLM2-135M they agree to 1e-5 in float32 and
# to 0.56 in bfloat16 (rounding), while position ids or masks the model ignores put them 3.9-4.1
# apart in either dtype; in low precision the probe catches gross errors only (compat.py names
# the known subtle ones)
PROBE_TEXT = (
    "Question: A farmer has three fields. The first grows wheat, the second barley, and the third is left "
    "fallow every other year so that the soil can recover. Which field gives the smallest harvest over ten "
    "years, and why? Answer: The fallow field, because it is sown only half the time.\n\n"
    "Question: A train leaves the station at nine o'clock and travels at sixty miles an hour. A second train "
    "leaves the same station an hour later at eighty miles an hour on the same track. When does the second "
    "train catch up with the first? Answer: At one o'clock, four hours after the first train left.")
PROBE_TOL = {torch.float32: 1e-3, None: 1.5}
# generation: decoding steps cost about the same for 4 rows as for 1, so batches may hold rows
# up to 1.5x shorter (left padding) instead of log-likelihood's 1.1x
GEN_PAD_RATIO = 1.5
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
# a prefill group (rows prefilled together, then copied into the batch's reserved cache) holds at
# most this share of the generation budget, and at most the log-likelihood budget
GEN_PREFILL_SHARE = 0.25
GPU_ASSUMED_BANDWIDTH = 3.35e12  # bytes/s (H100; H200 4.8e12)
# a cluster of fewer prompts decodes in the common pool, where it may share a batch with other
# prompts (its prefix copied to its rows, or shared if the batch holds only its prompts): a
# batch of its own costs a whole decoding loop. So does a larger cluster whose prefix, copied
# to all but one row, holds no more tokens than a generation batch's padding allowance: reading
# them costs less per step than a step's fixed cost (pool_small_clusters)
GEN_CLUSTER_MIN_ROWS = 8
# a decoding batch mixing clusters (mix_clusters) holds at most this many: each adds a few
# kernels per attention layer and step (multi_prefix_attention)
MIX_MAX_CLUSTERS = 16
# static-cache generation: a benchmark's prompts are left padded to one width, a multiple of this
# many tokens (rows: see _static_greedy_batch), so a run compiles a few decoding graphs, not one per batch
STATIC_LEN_BUCKET = 256


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
    return int(factor * CPU_FORWARD_OVERHEAD_S * CPU_ASSUMED_FLOPS / (2 * max(1, n_params)))


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


def plan_generation(prompts: list[list[int]], max_gen: int, shared_decode: bool,
                    pool_tokens: int = 0, mix_budget: int = 0) -> tuple[list, list, list, list]:
    """(batching key, shared prefix length, length, padded length) of each greedy generation
    prompt: clusters of prompts sharing a few-shot prefix (share_clusters; the small ones in
    the pool, pool_small_clusters, `pool_tokens` its copied-prefix allowance; with
    `mix_budget` and `shared_decode`, clusters packed into shared batches of that budget,
    mix_clusters, and only the small ones pooled); a row's length is its prompt + max_gen
    (without the shared prefix when it is read in place, `shared_decode`); the padded part is
    what follows the prefix."""
    mix = bool(mix_budget and shared_decode)
    keys, shared = pool_small_clusters(*share_clusters(prompts), GEN_CLUSTER_MIN_ROWS, 0 if mix else pool_tokens)
    lengths = [len(p) + max_gen for p in prompts]
    pad = [n - s for n, s in zip(lengths, shared)]
    if mix:
        keys = mix_clusters(keys, shared, pad, mix_budget)
    return keys, shared, (pad if shared_decode else lengths), pad


def mix_clusters(keys: list, shared: list[int], lengths: list[int], budget: int) -> list:
    """Batching keys that let few-shot clusters share a decoding batch, each row reading its own
    cluster's prefix in place (prefix_attention.MultiPrefix): each cluster's rows, longest
    first, are cut into pieces that fill the `budget` as a batch does (rows x longest, plus the
    prefix); the pieces are packed, largest first, into the first bin they fit (at most
    MIX_MAX_CLUSTERS clusters each), and a bin's rows get one key. The pool (key None) stays
    as it is."""
    rows_of: dict = defaultdict(list)
    for i, k in enumerate(keys):
        if k is not None:
            rows_of[k].append(i)
    pieces = []  # (rows, longest, prefix, items)
    for rows in rows_of.values():
        rows.sort(key=lambda i: -lengths[i])
        S = shared[rows[0]]
        cut = [rows[0]]
        for i in rows[1:]:
            if (len(cut) + 1) * lengths[cut[0]] + S > budget:
                pieces.append((len(cut), lengths[cut[0]], S, cut))
                cut = []
            cut.append(i)
        pieces.append((len(cut), lengths[cut[0]], S, cut))
    pieces.sort(key=lambda p: -(p[0] * p[1] + p[2]))
    bins: list = []  # [rows, longest, prefix tokens, clusters, items]
    for n, longest, S, items in pieces:
        for b in bins:
            if (b[0] + n) * max(b[1], longest) + b[2] + S <= budget and b[3] < MIX_MAX_CLUSTERS:
                b[0], b[1], b[2], b[3] = b[0] + n, max(b[1], longest), b[2] + S, b[3] + 1
                b[4].extend(items)
                break
        else:
            bins.append([n, longest, S, 1, list(items)])
    out = list(keys)
    for n, b in enumerate(bins):
        for i in b[4]:
            out[i] = ("mixed", n)
    return out


def pool_small_clusters(keys: list, shared: list[int], min_rows: int, max_copied: int = 0) -> tuple[list, list[int]]:
    """share_clusters' keys and shared lengths with every cluster of fewer than `min_rows`
    items, or whose shared prefix copied to all items but one is at most `max_copied` tokens,
    moved to the common pool (key None, shared 0). BBH on an H200 (allowance 51.7k tokens):
    14 clusters of 8-19 prompts left cut to one prefix of ~1400 tokens, each a decoding loop of
    its own before (31 batches, not 44)."""
    size: dict = defaultdict(int)
    prefix: dict = {}
    for k, s in zip(keys, shared):
        size[k] += 1
        prefix[k] = s
    small = {k for k, n in size.items() if k is not None and (n < min_rows or (n - 1) * prefix[k] <= max_copied)}
    return ([None if k in small else k for k in keys],
            [0 if k in small else s for k, s in zip(keys, shared)])


def row_mask(ends: list, prefix: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive attention mask [rows, 1, T, prefix + T] of trie rows padded to the longest (T),
    from each row's subtree ends (prefix_trie.build_row): a node sees the shared prefix, itself
    and its ancestors; a padding node only itself."""
    T = max(map(len, ends))
    e = torch.arange(T).repeat(len(ends), 1)
    for b, row in enumerate(ends):
        e[b, : len(row)] = torch.tensor(row, dtype=torch.long)
    allowed = ancestor_mask(e.to(device))
    mask = torch.zeros(len(ends), 1, T, prefix + T, dtype=dtype, device=device)
    mask[..., prefix:].masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    return mask


def common_prefix_len(seqs: list) -> int:
    """Length of the longest common prefix of all sequences, capped at min length - 1
    (every sequence keeps at least its last token)."""
    first, n = seqs[0], min(len(s) for s in seqs) - 1
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def share_clusters(prefixes: list) -> tuple[list, list[int]]:
    """Batching keys and shared lengths: sequences sorted lexicographically form clusters whose
    common prefix is >= SHARE_MIN tokens (e.g. one MMLU subject's 5-shot prompt); the rest go
    to one pool (key None, shared 0)."""
    order = sorted(range(len(prefixes)), key=lambda i: prefixes[i])
    keys: list = [None] * len(prefixes)
    shared = [0] * len(prefixes)
    i = 0
    while i < len(order):
        j, common = i + 1, None
        while j < len(order):
            c = common_prefix_len([prefixes[order[i]], prefixes[order[j]]]) if common is None else \
                common_prefix_len([prefixes[order[j - 1]], prefixes[order[j]]])
            c = c if common is None else min(common, c)
            if c < SHARE_MIN:
                break
            common, j = c, j + 1
        if j - i > 1:
            for k in order[i:j]:
                keys[k], shared[k] = i, common
        i = j
    return keys, shared


def merge_ratio(model: Any) -> float:
    """Matrix-product FLOPs per token over attention FLOPs per token pair, which decides when
    inputs share a trie row (prefix_trie.pack_rows): non-embedding parameters over
    2 x layers x hidden size (1530 for SmolLM2-135M, 15400 for Phi-2); 1000 if the config
    does not say."""
    cfg = model.config
    layers = getattr(cfg, "num_hidden_layers", None)
    hidden = getattr(cfg, "hidden_size", None)
    if not (isinstance(layers, int) and isinstance(hidden, int)) or layers * hidden <= 0:
        return 1000.0
    emb = model.get_input_embeddings().weight.numel()
    return max(1.0, (sum(p.numel() for p in model.parameters()) - emb) / (2 * layers * hidden))


@dataclass
class LoglikelihoodPlan:
    """How log-likelihood requests become packed rows (see plan_loglikelihood)."""

    keys: list  # (input, continuation) of each request
    conts_of: dict  # input -> its continuations (dict as an ordered set)
    rows: list  # (shared prefix length S, sorted inputs) of each row
    row_keys: list  # cluster of each row (None: no prefix shared with other rows)
    lengths: list  # S + trie nodes of each row (the prefix KV cache costs memory in every row)
    pad: list  # trie nodes of each row (the part that is padded; the prefix runs once)

    def forward_tokens(self) -> int:
        """Tokens forwarded, without padding: every row's trie nodes, each cluster's prefix once."""
        prefixes = {k: s for k, (s, _) in zip(self.row_keys, self.rows) if k is not None}
        return sum(self.pad) + sum(prefixes.values())

    def scored_positions(self) -> int:
        """Distinct trie nodes where lm_head runs."""
        n = 0
        for S, seqs in self.rows:
            row = build_row(seqs, S)
            nodes = set()
            for x, path in zip(seqs, row.paths):
                nodes.update(path[len(x) - max(map(len, self.conts_of[x])) - S:])
            n += len(nodes)
        return n


def plan_loglikelihood(pairs: list, max_length: int, ratio: float, local: bool = False,
                       pool_tokens: float = 0, plain: bool = False) -> LoglikelihoodPlan:
    """Rows for (context tokens, continuation tokens) pairs, truncated like HFLM to
    max_length + 1 tokens. A request's model input is (context + continuation)[:-1]; its last
    len(continuation) positions predict the continuation. Inputs whose distinct contexts share
    >= SHARE_MIN tokens (a few-shot prompt) form a cluster: that prefix runs once, as a KV
    cache, and the cluster's rows are batched together; within a cluster (or among the
    rest), sorted inputs are packed into prefix-trie rows (prefix_trie.pack_rows). A cluster
    whose inputs, prefix included, fit one trie row (a few MMLU questions of one subject, as
    `--limit` gives) is that row in the common pool instead, if the attention this adds costs
    at most `pool_tokens` tokens' matrix products (forward_cost_tokens: two forward passes'
    fixed cost): its prefix still runs once, and it shares a batch with other rows rather than
    costing a prefix pass and a batch of its own.

    `local`: a row holds the inputs of one context only, so a request's numbers do not depend
    on which other documents are in the run (the same bit for bit with 1 or N processes).
    `plain`: every distinct input is a row of its own, with no shared prefix (FastLM._score_plain,
    for models that cannot take trie rows)."""
    conts_of: dict[tuple, dict[tuple, None]] = defaultdict(dict)
    keys = []
    for ctx, cont in pairs:
        assert len(ctx) > 0 and 0 < len(cont) <= max_length
        full = (ctx + cont)[-(max_length + 1):]
        x, c = tuple(full[:-1]), tuple(cont)
        conts_of[x][c] = None
        keys.append((x, c))
    seqs = sorted(conts_of)
    plan = LoglikelihoodPlan(keys, conts_of, [], [], [], [])
    if plain:
        plan.rows = [(0, [x]) for x in seqs]
        plan.row_keys = [None] * len(seqs)
        plan.lengths = [len(x) for x in seqs]
        plan.pad = list(plan.lengths)
        return plan
    parts = [x[: len(x) - max(map(len, conts_of[x]))] for x in seqs]
    distinct = list(dict.fromkeys(parts))
    part_keys, part_shared = share_clusters(distinct)
    of_part = {p: (k, s) for p, k, s in zip(distinct, part_keys, part_shared)}
    members: dict = defaultdict(list)
    for i, p in enumerate(parts):
        members[of_part[p] + ((p,) if local else ())].append(i)
    cap = max(1024, max_length)
    for (key, S, *_), idx in members.items():
        rows = None
        if key is not None and not local and pool_tokens > 0:
            whole = pack_rows([seqs[i] for i in idx], 0, cap, ratio)
            # one row: its prefix still runs once; its S queries face its n other nodes' keys in
            # a dense masked attention (S x n pairs computed for nothing), in exchange for a
            # prefix pass and a batch of its own
            if len(whole) == 1 and S * (whole[0][1] - S) <= pool_tokens * ratio:
                key, S, rows = None, 0, whole
        for part, nodes in rows or pack_rows([seqs[i] for i in idx], S, cap, ratio):
            plan.rows.append((S, [seqs[idx[k]] for k in part]))
            plan.row_keys.append(key)
            plan.lengths.append(S + nodes)
            plan.pad.append(nodes)
    return plan


class _NoSharedPrefix(Exception):
    """The model's attention did not read the shared prefix in place (see FastLM._decode)."""


class _NoWiden(Exception):
    """The model's KV cache cannot be assembled from prefill groups (widen_cache)."""


def _out_cache(out):
    """The KV cache of a model output (`cache` in transformers 5, `past_key_values` before)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


@register_model("phi2eval-fast")
class FastLM(TemplateLM):
    """lm-eval LM over an already loaded causal HF model; see the module docstring."""

    backend = "causal"
    reserve_kv = True  # decode into a reserved KV buffer (ReservedLayer) instead of torch.cat
    packed_rows = True  # log-likelihood rows run unpadded where the model allows (packed_attention.py)
    # packed batches hold rows of any length up to the token budget, padded only inside attention,
    # per group of similar length (False: batches cut by padding, as padded rows are; one group).
    # None: on CUDA only, where every forward pass has a fixed launch cost. On the CPU it gains
    # nothing: HellaSwag/PIQA (200 docs) took 1.01x/1.00x the time at a 2048-token budget,
    # 1.09x/1.07x at 4096, HellaSwag 1.15x at 8192 (larger activations fall out of the caches)
    grouped_rows: bool | None = None
    # a log-likelihood cluster that fits one trie row joins the common pool (plan_loglikelihood),
    # where the attention it adds costs less than two forward passes' fixed cost
    # (forward_cost_tokens): on an H200-sized budget, 400 documents of HellaSwag take 1 forward
    # pass instead of 11, BoolQ 1 instead of 17, MMLU 11 instead of 77, as many tokens
    pool_clusters = True
    # decoding under a shared few-shot prefix keeps one copy of its KV cache, not one per row
    shared_prefix_decode = True
    # ... and several clusters may share a decoding batch, each row reading its own prefix
    # (mix_clusters, MultiPrefix). None: not on CUDA, where each cluster in a batch adds about 10
    # kernel launches per layer and step (unmeasured there); on the CPU, BBH with 10 prompts per
    # task x 64 tokens took 0.401x the time (results/bench/cpu_smollm2_bbh_mixed_ab.json)
    mix_clusters: bool | None = None

    def __init__(
        self,
        model: Any = None,
        tokenizer: Any = None,
        batch_size: int | str | None = None,
        max_length: int | None = None,
        token_budget: int | None = None,
        max_gen_toks: int = 256,
        static_cache: bool = False,
        cuda_graphs: bool = False,
        **kwargs: Any,
    ) -> None:
        """`batch_size` (int) caps rows per batch (1: also rows of one context each, so results do
        not depend on the other documents of the run); `token_budget` caps padded tokens per batch
        (default: from free CUDA memory, or a fixed CPU default). `model` may also be a path
        or hub id (lm-eval's `pretrained=`), loaded with AutoModelForCausalLM. `static_cache`:
        greedy generation through transformers' generate with a static KV cache (compiled on CUDA).
        `cuda_graphs`: greedy decoding steps replayed as CUDA graphs (graph_decode.py; on the CPU
        the same fixed-shape steps run eagerly)."""
        super().__init__()
        model = model if model is not None else kwargs.pop("pretrained", None)
        if isinstance(model, str):
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
            model = AutoModelForCausalLM.from_pretrained(model, dtype="auto")
        if model is None or tokenizer is None:
            raise ValueError("FastLM needs a model and a tokenizer")
        self.model = model.eval()
        self.tokenizer = configure_pad_token(tokenizer, model_config=model.config)
        self._device = next(model.parameters()).device
        if self._device.type == "cuda" and getattr(model.config, "_attn_implementation", None) == "eager":
            try:
                model.set_attn_implementation("sdpa")
            except Exception:  # noqa: BLE001 - keep eager when sdpa is unsupported
                log.warning("sdpa attention unavailable for this model; using eager")
        self._max_length = int(max_length) if max_length else None
        self._max_gen_toks = int(max_gen_toks)
        self.static_cache = str(static_cache).lower() in ("1", "true", "yes")
        self._static_shapes: set[tuple[int, int, int]] = set()  # (rows, width, max_gen) run so far
        self.cuda_graphs = str(cuda_graphs).lower() in ("1", "true", "yes")
        if self.static_cache and self._device.type == "cuda":
            # transformers compiles one graph per batch shape; the default limit (8) would send
            # later shapes of a suite back to eager
            import torch._dynamo

            cfg = torch._dynamo.config
            name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
            setattr(cfg, name, max(getattr(cfg, name), 64))
        rows = int(batch_size) if str(batch_size or "").isdigit() else None
        self.budget = TokenBudget(int(token_budget or default_budget(self._device)), max_rows=rows)
        # generation batches: rows x (prompt + max_gen_toks) tokens; larger on the CPU (gen_budget_tokens)
        explicit = token_budget or os.environ.get(BUDGET_ENV, "").isdigit()
        gen_tokens = self.budget.tokens if explicit else gen_budget_tokens(model, self._device, self.budget.tokens)
        self.gen_budget = TokenBudget(gen_tokens, max_rows=rows)
        # a prefill group's cache is held next to its batch's: on CUDA (budgets from free memory)
        # it holds at most GEN_PREFILL_SHARE of the generation budget (_prefill_groups)
        self._prefill_share = GEN_PREFILL_SHARE if self._device.type == "cuda" and not explicit else 1.0
        self._widen_prefill = True  # generation batches prefill in groups of similar length (_prefill_groups)
        self.add_bos_token = None
        self._prefix = None  # (token tuple, KV cache) of the last shared prefix
        self._merge_ratio = merge_ratio(model)  # fixed per model; decides trie row packing
        self._head = HeadScorer(model)  # output layer at scored positions only
        self._recent_enc: OrderedDict = OrderedDict()  # see tok_encode
        self.peak_memory_bytes = 0
        self.stats: dict[str, int] = defaultdict(int)
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keep_kw = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
        # what the model's config rules out (compat.py); the rest is probed before the first batch
        cfg = model.config
        self._window = sliding_window(cfg)
        self._kv_decode = kv_cache_layers(cfg)
        self._rows_reason: str | None = None
        if uses_alibi(cfg):
            self._rows_reason = "ALiBi position biases (built from a padding mask, not from position ids)"
        elif not self._kv_decode:
            self._rows_reason = "no key/value cache (state-space or linear-attention layers)"
        elif self._window is not None and self._window < 100:
            self._rows_reason = f"a {self._window}-token sliding attention window, shorter than the probe's inputs"
        self._rows_checked = self._rows_reason is not None  # _check_rows runs once, if needed
        self._probe_failed = False  # the probe found trie rows wrong: decoding uses generate too
        self.plain_reasons: list[str] = []  # why log-likelihood ran plain rows (_plain_reason), once each
        # log-likelihood rows run unpadded (packed_attention.py) where the model allows it
        self._n_layers = getattr(model.config, "num_hidden_layers", None)
        self._packed = supports_packed(model) and isinstance(self._n_layers, int) and self.packed_rows
        self._grouped = self._device.type == "cuda" if self.grouped_rows is None else bool(self.grouped_rows)
        # greedy decoding reads a shared few-shot prefix once per batch (prefix_attention.py)
        self._shared_decode = self.shared_prefix_decode and supports_shared_prefix(model, self.max_length)
        # ... within the sliding window, if any (set per generation call: the prefix is read whole)
        self._within_window = True
        self._prefill_pad_waste = 0  # padded tokens a prefill group may hold beyond the ratio rule
        if self._device.type == "cuda":
            self.budget.max_pad_waste = gpu_pad_waste(model, self.budget.tokens, attention_only=self._packed)
            self._prefill_pad_waste = gpu_pad_waste(model, self.budget.tokens)

    # ----- lm-eval plumbing (HFLM semantics) -------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        if self.tokenizer.bos_token_id is not None:
            return self.tokenizer.bos_token_id
        return self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length or resolve_max_length(self.model.config, self.tokenizer)

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def _special_kwargs(self, string: str, add_special_tokens: bool | None) -> dict:
        if add_special_tokens is not None:
            return {"add_special_tokens": add_special_tokens}
        if has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            return {"add_special_tokens": False}
        return {}

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None, **kw) -> list[int]:
        """HFLM.tok_encode: tokenizer defaults, no special tokens if the string starts with BOS.

        The last two encodings are kept: TemplateLM._encode_pair encodes each choice's whole
        string, then the document's context, so the context hits every time after the first
        choice (5 tokeniser calls instead of 8 for four choices)."""
        key = (string, add_special_tokens)
        enc = self._recent_enc.get(key)
        if enc is None:
            enc = self.tokenizer.encode(string, **self._special_kwargs(string, add_special_tokens))
            self._recent_enc[key] = enc
            if len(self._recent_enc) > 2:
                self._recent_enc.popitem(last=False)
        else:
            self._recent_enc.move_to_end(key)
        return enc[-left_truncate_len:] if left_truncate_len else list(enc)

    def tok_decode(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    def _shared_len(self, seqs: list, known: int = 0) -> int:
        """Tokens at the start of all `seqs` to run once as a shared prefix: `known` (the
        cluster's common prefix, see share_clusters) if >= SHARE_MIN, else the kept prefix when
        every sequence starts with it, else their common prefix if >= SHARE_MIN tokens and
        there are several sequences, else 0."""
        if known >= SHARE_MIN:
            return known
        if self._prefix is not None:
            n = len(self._prefix[0])
            if all(len(q) > n and tuple(q[:n]) == self._prefix[0] for q in seqs):
                return n
        if len(seqs) < 2:
            return 0
        S = common_prefix_len(seqs)
        return S if S >= SHARE_MIN else 0

    def _plain_cache(self, within_window: bool) -> dict:
        """{cache keyword: an empty cache of plain layers} for a model whose config asks for
        sliding-window layers (Mistral, Gemma 2) when nothing in the call reaches past the window,
        so that the cache can be widened and compacted as usual (kv_cache.py); else {}."""
        if self._window is None or not within_window:
            return {}
        from transformers.cache_utils import DynamicCache

        return {self._cache_kw: DynamicCache()}

    def _prefix_kv(self, prefix: list[int], kind: str):
        """KV cache (batch size 1) of a shared prefix (few-shot examples). The last prefix's
        cache is kept, so consecutive batches of one cluster run the prefix once."""
        key = tuple(prefix)
        if self._prefix is None or self._prefix[0] != key:
            self._prefix = None  # free the old one first
            # log-likelihood trie rows run only within the window (_plain_reason)
            kw = self._plain_cache(kind == "ll" or self._within_window)
            out = self.model.base_model(input_ids=torch.tensor([prefix], device=self._device), use_cache=True, **kw)
            self._prefix = (key, _out_cache(out))
            self.stats[f"{kind}_shared_prefix_tokens"] += len(prefix)
            self.stats[f"{kind}_prefix_passes"] += 1
        return self._prefix[1]

    def _prefix_cache(self, prefix: list[int], rows: int, kind: str):
        """KV cache of a shared prefix (see _prefix_kv), copied and expanded to `rows` rows."""
        cache = copy.deepcopy(self._prefix_kv(prefix, kind))
        cache.batch_repeat_interleave(rows)
        return cache

    def _update_peak(self) -> None:
        self.peak_memory_bytes = max(self.peak_memory_bytes, peak_memory_bytes(self._device))

    # ----- log-likelihood ---------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """Score (request_str, context_enc, continuation_enc) triples over prefix-trie rows."""
        if not requests:
            return []
        pairs = [(ctx, cont) for _, ctx, cont in requests]
        reason = self._plain_reason(pairs)
        # batch size 1 asks for results that do not depend on the rest of the run: rows of one context
        plan = plan_loglikelihood(pairs, self.max_length, self._merge_ratio, local=self.budget.max_rows == 1,
                                  pool_tokens=2 * forward_cost_tokens(self.model, self._device, self.budget.tokens)
                                  if self.pool_clusters else 0, plain=reason is not None)
        rows, conts_of = plan.rows, plan.conts_of
        score = self._score_rows if reason is None else self._score_plain
        try:
            with torch.inference_mode(), attention_kernels(self._device):
                per_row = run_batched(plan.lengths, lambda ix: score([rows[i] for i in ix], conts_of),
                                      self.budget, plan.row_keys, plan.pad,
                                      packed=lambda: reason is None and self._packed and self._grouped)
        finally:
            self._prefix = None
            self._head.release()  # the logits buffer is not held between calls
        answers = {k: ans for row_res in per_row for k, ans in row_res}
        res = [answers[k] for k in plan.keys]
        for (req_str, _, _), ans in zip(requests, res):
            if req_str is not None:
                self.cache_hook.add_partial("loglikelihood", req_str, ans)
        self._update_peak()
        return res

    def _plain_reason(self, pairs: list) -> str | None:
        """Why these requests must run as plain rows (_score_plain), or None for trie rows: what
        the config rules out, a sliding window shorter than the longest input, or a failed
        probe (_check_rows, once per backend). The reason is logged once."""
        self._ensure_checked()
        reason = self._rows_reason
        if reason is None and self._window is not None:
            longest = max(min(len(ctx) + len(cont), self.max_length + 1) - 1 for ctx, cont in pairs)
            if longest > self._window:
                reason = f"inputs longer than the model's {self._window}-token sliding attention window"
        if reason is not None and reason not in self.plain_reasons:
            self.plain_reasons.append(reason)
            log.warning("log-likelihood: %s; each input runs as a row of its own through the model's own "
                        "forward, as lm-eval's hf backend runs it (same answers, less shared work)", reason)
        if reason is not None:
            self.stats["ll_plain_calls"] += 1
        return reason

    def _ensure_checked(self) -> None:
        """Run the probe (_check_rows) once, before the first log-likelihood or generation batch;
        its work is not counted in the run's stats. A failed probe also sends greedy decoding,
        which gives its own position ids too, to transformers' generate."""
        if self._rows_checked:
            return
        self._rows_checked = True
        stats = dict(self.stats)
        try:
            with torch.inference_mode(), attention_kernels(self._device):
                self._rows_reason = self._check_rows()
        finally:
            probe = {k: v for k, v in self.stats.items() if k.startswith("ll_probe")}
            self.stats.clear()
            self.stats.update(stats, **probe)
        if self._rows_reason is not None:
            self._probe_failed = True
            log.warning("generation: the probe found this model's position ids or masks handled differently (%s); "
                        "greedy decoding runs through transformers' generate", self._rows_reason)

    def _check_rows(self) -> str | None:
        """Probe: a short text's inputs scored through trie rows (two inputs sharing a prefix, one
        more row, and the prefix as a KV cache) against each input alone through the model's own
        forward (_score_plain). Returns why trie rows cannot be used (an error, or log-probabilities
        further apart than PROBE_TOL for the model's dtype), else None."""
        if self.max_length < 128:  # the probe's inputs would not fit: trust the config
            return None
        ids = self.tok_encode(PROBE_TEXT)
        ids = (ids * (128 // max(len(ids), 1) + 1))[:128]
        # a and b share 40 tokens, then b's 12 follow a's 48 in their trie row: wrong masks let b
        # see a's tokens, wrong positions put b 48 places off. The scored tokens are unlikely ones,
        # whose log-probabilities such errors move most (by 3.9-4.1 on SmolLM2, see PROBE_TOL)
        a, b, c = tuple(ids[:88]), tuple(ids[:40] + ids[96:108]), tuple(ids[110:122])
        conts_of = {x: {tuple(x[-3:]): None, tuple(ids[1:3]): None} for x in (a, b, c)}
        try:
            ref = {k: v for x in (a, b, c) for k, v in self._score_plain([(0, [x])], conts_of)[0]}
        except Exception as exc:  # noqa: BLE001 - the plain path is HFLM's call; let it raise later
            log.warning("log-likelihood probe: the plain forward failed (%s: %s)", type(exc).__name__, exc)
            return None
        tol = PROBE_TOL.get(self.model.dtype, PROBE_TOL[None])
        reason = None
        # packed rows first (where enabled), then padded rows: a model may not pass the packing
        # through to its attention layers, yet take padded trie rows
        for packed_rows in [True, False] if self._packed else [False]:
            self._packed = packed_rows
            try:
                got = {}
                for rows in ([(0, [a, b]), (0, [c])], [(40, [a, b])]):
                    got.update(k_v for row in self._score_rows(rows, conts_of) for k_v in row)
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means: not this way
                reason = f"the trie-row forward fails for this model ({type(exc).__name__}: {str(exc)[:120]})"
                continue
            finally:
                self._prefix = None
                self._head.release()
            diff = max(abs(got[k][0] - ref[k][0]) for k in ref)
            self.stats["ll_probe_max_diff_e6"] = int(diff * 1e6) if diff == diff else -1
            if diff <= tol:  # NaN fails too
                return None
            reason = (f"trie rows give log-likelihoods {diff:.2g} away from the model's own forward on a probe "
                      f"(tolerance {tol:g} in {str(self.model.dtype).replace('torch.', '')}): its masks, "
                      "positions or output layer work differently")
        return reason

    def _score_plain(self, rows: list[tuple[int, list[tuple]]], conts_of: dict) -> list[list[tuple[tuple, tuple[float, bool]]]]:
        """One forward over inputs of one row each, right padded, through the model's own
        forward without a mask (its own positions, masks and output layer), as HFLM runs them;
        logits only from the first scored position on where the model allows (logits_to_keep),
        log-softmax in float32. Same return as _score_rows."""
        dev = self._device
        seqs = [row_seqs[0] for _, row_seqs in rows]
        B, T = len(seqs), max(map(len, seqs))
        ids = torch.full((B, T), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        for b, x in enumerate(seqs):
            ids[b, : len(x)] = torch.tensor(x, dtype=torch.long)
        keep = T - min(len(x) - max(map(len, conts_of[x])) for x in seqs)
        kw = {self._keep_kw: keep} if self._keep_kw else {}
        logits = self.model(input_ids=ids.to(dev), use_cache=False, **kw).logits[:, -keep:]
        self.stats["ll_plain_batches"] += 1
        self.stats["ll_forward_tokens"] += B * T
        out: list[list] = [[] for _ in range(B)]
        for b, x in enumerate(seqs):
            end = len(x) - (T - keep)  # the row's last position, +1, in the kept logits
            n = max(map(len, conts_of[x]))
            logp = torch.log_softmax(logits[b, end - n : end].float(), dim=-1)  # once per row
            self.stats["ll_scored_positions"] += n
            for c in conts_of[x]:
                lpc = logp[n - len(c):]
                tgt = torch.tensor(c, dtype=torch.long, device=logp.device)
                lp = lpc.gather(-1, tgt[:, None]).sum().item()
                out[b].append(((x, c), (float(lp), bool((lpc.argmax(-1) == tgt).all()))))
        return out

    def _score_rows(self, rows: list[tuple[int, list[tuple]]], conts_of: dict) -> list[list[tuple[tuple, tuple[float, bool]]]]:
        """One forward over trie rows (shared length S, sorted sequences); returns per row
        ((sequence, continuation), (logprob, is_greedy)) for every continuation of its sequences.

        All rows of a batch belong to one cluster: its first S tokens (few-shot examples) run
        once (once per cluster: the KV cache is kept for the next batch) and their KV cache is
        expanded to every row. Each scored node runs lm_head once, however many continuations
        score it."""
        dev = self._device
        B, S = len(rows), rows[0][0]
        built = [build_row(seqs, S) for _, seqs in rows]
        lengths = [len(r.tokens) for r in built]
        T = max(lengths)
        # packed: rows concatenated; attention pads each group of rows of similar length
        pack, groups = None, None
        if self._packed:
            groups = packed_groups(lengths, self.budget) if self._grouped else [list(range(B))]
            pack = make_pack(lengths, S, dev, groups)
        # index of row b's node t in the hidden states: padded [B, T], or packed (rows concatenated)
        offsets = [b * T for b in range(B)] if pack is None else [0, *itertools.accumulate(lengths[:-1])]
        flat_pos: list[int] = []  # index of each scored node
        slot_of: dict[int, int] = {}
        pair_slot, pair_tgt, pair_req, req_keys = [], [], [], []
        for b, ((_, seqs), r) in enumerate(zip(rows, built)):
            for x, path in zip(seqs, r.paths):
                for c in conts_of[x]:
                    start = len(x) - len(c) - S
                    for o, t in enumerate(c):
                        f = offsets[b] + path[start + o]
                        slot = slot_of.get(f)
                        if slot is None:
                            slot = slot_of[f] = len(flat_pos)
                            flat_pos.append(f)
                        pair_slot.append(slot)
                        pair_tgt.append(t)
                        pair_req.append(len(req_keys))
                    req_keys.append((b, (x, c)))
        if pack is None:
            ids = torch.zeros(B, T, dtype=torch.long)
            pos = torch.zeros(B, T, dtype=torch.long)
            for b, r in enumerate(built):
                ids[b, : lengths[b]] = torch.tensor(r.tokens, dtype=torch.long)
                pos[b, : lengths[b]] = torch.tensor(r.depths, dtype=torch.long)
        else:
            ids = torch.tensor([[t for r in built for t in r.tokens]], dtype=torch.long)
            pos = torch.tensor([[d for r in built for d in r.depths]], dtype=torch.long)
        ids, pos = ids.to(dev), pos.to(dev)
        if pack is None:
            mask = row_mask([r.ends for r in built], S, self.model.dtype, dev)
        else:
            for g, idx in zip(pack.groups, groups):
                g.mask = row_mask([built[b].ends for b in idx], S, self.model.dtype, dev)
            mask = pack.groups[0].mask  # what the model is given; each group's own mask is used
        kw = {self._cache_kw: self._prefix_cache(list(rows[0][1][0][:S]), 1 if pack else B, "ll")} if S else {}
        if pack is not None:
            kw[PACK_KW] = pack
        with packed(self.model) if pack is not None else contextlib.nullcontext():
            hidden = self.model.base_model(
                input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=bool(S), **kw
            ).last_hidden_state
        del mask
        if pack is not None:
            for g in pack.groups:
                g.mask = None
        if pack is not None and pack.calls != self._n_layers:  # attention bypassed the interface: redo padded
            log.warning("%d of %d attention layers ran packed; this model runs padded rows from now on",
                        pack.calls, self._n_layers)
            self._packed = False
            return self._score_rows(rows, conts_of)
        self.stats["ll_batches"] += 1
        self.stats["ll_attention_groups"] += len(pack.groups) if pack is not None else 1
        self.stats["ll_real_tokens"] += sum(lengths)
        self.stats["ll_forward_tokens"] += sum(lengths) if pack is not None else B * T
        h = hidden.reshape(-1, hidden.shape[-1])[torch.tensor(flat_pos, device=dev)]
        del hidden
        pp = torch.tensor(pair_slot, device=dev)
        pt = torch.tensor(pair_tgt, device=dev)
        logp_pairs, hits = self._head.score(h, pp, pt)
        del h
        self.stats["ll_scored_positions"] += len(flat_pos)
        n_req = len(req_keys)
        pr = torch.tensor(pair_req, device=dev)
        total = torch.zeros(n_req, dtype=torch.float64, device=dev).index_add_(0, pr, logp_pairs.double())
        miss = torch.zeros(n_req, dtype=torch.long, device=dev).index_add_(0, pr, (~hits).long())
        out: list[list] = [[] for _ in range(B)]
        for (b, key), lp, m in zip(req_keys, total.tolist(), miss.tolist()):
            out[b].append((key, (float(lp), m == 0)))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """HFLM's rolling windows, scored by _loglikelihood_tokens."""
        out = []
        for (string,) in [r.args for r in requests]:
            windows = map(
                lm_utils.make_disjoint_window,
                lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1,
                ),
            )
            scores = self._loglikelihood_tokens([(None, c, t) for c, t in windows])
            total = sum(s for s, _ in scores)
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            out.append(total)
        return out

    # ----- generation -------------------------------------------------------------------
    def _eos_ids(self) -> set[int]:
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        if eos is None:
            return set()
        return set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}

    def _plain_greedy(self, kwargs: dict) -> bool:
        if kwargs.get("do_sample") or float(kwargs.get("temperature", 0.0)) != 0.0:
            return False
        if set(kwargs) - GREEDY_IGNORED_KWARGS:
            return False
        gc = self.model.generation_config
        return (gc.repetition_penalty in (None, 1.0) and not gc.no_repeat_ngram_size and not gc.bad_words_ids
                and not gc.suppress_tokens and not gc.begin_suppress_tokens and not gc.min_new_tokens
                and not gc.min_length and (gc.num_beams or 1) == 1 and not gc.forced_bos_token_id
                and not gc.forced_eos_token_id)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy batched generation with HFLM's stop/length semantics."""
        args = [r.args for r in requests]
        by_kwargs: dict[str, list[int]] = defaultdict(list)
        for i, (_, gk) in enumerate(args):
            by_kwargs[repr(sorted(gk.items()))].append(i)
        eos_str = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        res: list[str | None] = [None] * len(args)
        for idxs in by_kwargs.values():
            kwargs = dict(normalize_gen_kwargs(args[idxs[0]][1], self.max_gen_toks))
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_str)
            max_gen = kwargs.pop("max_gen_toks")
            max_ctx = self.max_length - max_gen
            assert max_ctx > 0, "max_gen_toks must be below the model's max length"
            prompts = []
            for i in idxs:
                ctx = args[i][0]
                enc = self.tokenizer(ctx, **self._special_kwargs(ctx, None))["input_ids"]
                prompts.append(enc[-max_ctx:])
            self._ensure_checked()
            greedy = self._plain_greedy(kwargs) and self._kv_decode and not self._probe_failed  # else generate
            # the generation budget and padding allowance are for _greedy_batch, whose prefill runs in
            # groups and whose KV cache is reserved; transformers' generate gets the log-likelihood rules
            budget = self.gen_budget if greedy and not self.static_cache else self.budget
            waste = gen_pad_waste(self.model, self._device, budget.tokens) if budget is self.gen_budget else None
            # a cluster's shared prefix is held once per batch, not once per row, when read in place;
            # then clusters may also share a batch, each row reading its own prefix (mix_clusters)
            self._within_window = self._window is None or max(map(len, prompts)) + max_gen <= self._window
            in_place = greedy and not self.static_cache and self._shared_decode and self._within_window
            mixing = self._device.type != "cuda" if self.mix_clusters is None else self.mix_clusters
            mix = budget.tokens if in_place and mixing and self.reserve_kv and self._widen_prefill else 0
            clusters, shared, lengths, pad = plan_generation(prompts, max_gen, in_place, waste or 0, mix)
            if greedy and self.static_cache:
                # one prompt width per group (a benchmark): its batches share compiled shapes
                width = min(-(-max(map(len, prompts)) // STATIC_LEN_BUCKET) * STATIC_LEN_BUCKET, max_ctx)
                fn = lambda ix: self._static_greedy_batch([prompts[j] for j in ix], until, max_gen, width)  # noqa: E731
            elif greedy:
                fn = lambda ix: self._greedy_batch([prompts[j] for j in ix], until, max_gen, [shared[j] for j in ix])  # noqa: E731
            else:
                fn = lambda ix: self._hf_generate_batch([prompts[j] for j in ix], until, max_gen, kwargs)  # noqa: E731
            try:
                with torch.inference_mode(), attention_kernels(self._device):
                    texts = run_batched(lengths, fn, budget, clusters, pad, GEN_PAD_RATIO, pad_waste=waste)
            finally:
                self._prefix = None
            for i, text in zip(idxs, texts):
                res[i] = text
                self.cache_hook.add_partial("generate_until", args[i], text)
        self._update_peak()
        return res  # type: ignore[return-value]

    def _left_pad(self, prompts: list[list[int]], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, attention mask) of `prompts` left padded to `width` (default: the longest)."""
        T = max([len(p) for p in prompts] + [width or 0])
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(prompts), T), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), T), dtype=torch.long)
        for b, p in enumerate(prompts):
            ids[b, T - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[b, T - len(p):] = 1
        return ids.to(self._device), mask.to(self._device)

    def _greedy_batch(self, prompts: list[list[int]], until: list[str], max_gen: int,
                      known_shared: int | list[int] = 0) -> list[str]:
        """Greedy decode one left-padded batch; rows leave the batch when finished.

        A common prefix of >= SHARE_MIN tokens (few-shot examples) is prefilled once per
        cluster (see _shared_len); the rest of each prompt is left padded after it. Where the
        model allows (prefix_attention.py) the rows' cache holds only their own tokens and every
        attention layer reads the prefix's one copy; otherwise its KV cache is expanded to all
        rows. `known_shared` per row (a list): rows of several clusters (mix_clusters) decode
        together, each reading its own cluster's prefix (_mixed_batch)."""
        if isinstance(known_shared, list):
            parts: dict = defaultdict(list)  # prefix (None: none) -> rows
            for i, (p, n) in enumerate(zip(prompts, known_shared)):
                parts[tuple(p[:n]) if n >= SHARE_MIN else None].append(i)
            if len(parts) > 1:
                return self._mixed_batch(prompts, known_shared, parts, until, max_gen)
            known_shared = known_shared[0] if known_shared else 0
        S = self._shared_len(prompts, known_shared)
        if S and self._shared_decode and self._within_window:
            pre = Prefix(*cache_kv(self._prefix_kv(prompts[0][:S], "gen")))
            try:
                with shared_prefix(self.model):
                    return self._decode(prompts, S, pre, until, max_gen)
            except _NoSharedPrefix as exc:
                log.warning("shared-prefix decoding unavailable (%s); expanding the prefix to every row from now on", exc)
                self._shared_decode = False
        return self._decode(prompts, S, None, until, max_gen)

    def _mixed_batch(self, prompts: list[list[int]], shared: list[int], parts: dict, until: list[str],
                     max_gen: int) -> list[str]:
        """Greedy decode a batch of several clusters' rows (`parts`: prefix -> rows). Where
        prefixes are read in place and caches widened, in one decoding loop (_decode_mixed);
        otherwise each cluster's rows as a batch of their own."""
        if None not in parts and self._shared_decode and self._within_window and self.reserve_kv and self._widen_prefill:
            try:
                pres = [Prefix(*cache_kv(self._prefix_kv(list(key), "gen"))) for key in parts]
                with shared_prefix(self.model):
                    return self._decode_mixed(prompts, shared, parts, pres, until, max_gen)
            except _NoSharedPrefix as exc:
                log.warning("shared-prefix decoding unavailable (%s); expanding the prefix to every row from now on", exc)
                self._shared_decode = False
            except _NoWiden:
                self._stop_widening()
        out: list = [None] * len(prompts)
        for key, rows in parts.items():
            texts = self._greedy_batch([prompts[i] for i in rows], until, max_gen, len(key) if key else 0)
            for i, t in zip(rows, texts):
                out[i] = t
        return out

    def _decode_mixed(self, prompts: list[list[int]], shared: list[int], parts: dict, segments: list[Prefix],
                      until: list[str], max_gen: int) -> list[str]:
        """_mixed_batch's one decoding loop: each cluster's rows are prefilled in groups under its
        prefix (`segments`, read in place) and copied into one left-padded, reserved cache (widen_cache,
        fill_rows); the decoding steps read every row's own prefix (MultiPrefix)."""
        B = len(prompts)
        own = [p[n:] for p, n in zip(prompts, shared)]
        _, mask = self._left_pad(own)
        next_pos = mask.sum(-1, keepdim=True) + torch.tensor(shared, device=mask.device)[:, None]
        row_seg = [0] * B
        batch, prefills = [None, None], 0
        for c, ((key, rows), pre) in enumerate(zip(parts.items(), segments)):
            groups = [[rows[j] for j in g] for g in self._prefill_groups([own[i] for i in rows], len(key), pre)]
            self._prefill_into(batch, groups, own, len(key), pre, list(key), 0, max_gen)
            prefills += len(groups)
            for i in rows:
                row_seg[i] = c
        logits, cache = batch
        pre = MultiPrefix(segments, row_seg)
        pre.set_valid(mask.bool())
        self.stats["gen_prefill_passes"] += prefills
        self.stats["gen_prefix_in_place_batches"] += 1
        self.stats["gen_mixed_batches"] += 1
        return self._decode_steps(logits, cache, mask, next_pos, pre, until, max_gen)

    def _prefill(self, own: list[list[int]], S: int, pre: Prefix | None, prefix: list[int]):
        """One forward pass over prompts' own tokens (left padded) after a shared prefix of S
        tokens (`pre`: read in place; else, if S, its cache expanded to these rows); returns
        (logits at the last position [rows, vocab], KV cache)."""
        B = len(own)
        ids, mask = self._left_pad(own)
        pos = mask.cumsum(-1) - 1 + S
        pos.masked_fill_(mask == 0, 1)
        if pre is None:
            kw = {self._cache_kw: self._prefix_cache(prefix, B, "gen")} if S else self._plain_cache(self._within_window)
            mask = torch.cat([torch.ones(B, S, dtype=mask.dtype, device=mask.device), mask], dim=1)
        else:
            kw = {PREFIX_KW: pre, **self._plain_cache(self._within_window)}
            pre.set_valid(mask.bool())  # the rows' own keys (the prefix is not in their cache)
            pre.calls = 0
        try:
            out = self.model(input_ids=ids, attention_mask=None if pre is not None else mask, position_ids=pos,
                             use_cache=True, logits_to_keep=1, **kw)
        except NotImplementedError as exc:
            if pre is None:
                raise
            raise _NoSharedPrefix(str(exc)) from exc
        if pre is not None and pre.calls != self._n_layers:
            raise _NoSharedPrefix(f"{pre.calls} of {self._n_layers} attention layers read it")
        self.stats["gen_prefill_tokens"] += ids.numel()
        return out.logits[:, -1, :], _out_cache(out)

    def _prefill_into(self, batch: list, groups: list[list[int]], own: list[list[int]], S: int, pre: Prefix | None,
                      prefix: list[int], cols: int, max_gen: int) -> None:
        """Prefill each group of batch rows (indices into `own`, the rows' own tokens) and copy
        its cache into the batch's: `batch` is [logits, cache], both None before the first
        group, whose cache widen_cache turns into the whole batch's (`cols` prefix columns, own
        tokens right aligned to the longest, room for max_gen); fill_rows adds the others.
        Raises _NoWiden if the model's cache cannot be assembled so."""
        B, T = len(own), max(map(len, own))
        for g in groups:
            n = max(len(own[i]) for i in g)
            lg, part = self._prefill([own[i] for i in g], S, pre, prefix)
            if batch[0] is None:
                batch[0] = lg.new_empty(B, lg.shape[-1])
                ok = widen_cache(part, B, cols, T, max_gen - 1, g, n)
                batch[1] = part
            else:
                ok = fill_rows(batch[1], part, g, cols, n)
            del part
            if not ok:
                raise _NoWiden
            batch[0][torch.tensor(g, device=batch[0].device)] = lg

    def _stop_widening(self) -> None:
        """From now on, prefill generation batches whole (the model's KV cache cannot be
        assembled from groups, widen_cache)."""
        log.warning("this model's KV cache cannot be assembled from groups; prefilling whole batches")
        self._widen_prefill = False

    def _prefill_groups(self, own: list[list[int]], S: int, pre: Prefix | None) -> list[list[int]]:
        """Rows of a generation batch prefilled together: similar lengths (the log-likelihood
        batches' padding rule and token budget, on CUDA at most GEN_PREFILL_SHARE of the
        generation budget; the rest of the batch's padding costs only decoding steps' KV
        reads, see gen_pad_waste). One group if the cache cannot be widened."""
        if not (self.reserve_kv and self._widen_prefill) or len(own) < 2:
            return [list(range(len(own)))]
        cols = S if pre is None else 0  # prefix columns in the rows' cache
        tokens = min(self.budget.tokens, max(1, int(self.gen_budget.tokens * self._prefill_share)))
        rule = TokenBudget(tokens, max_pad_ratio=self.budget.max_pad_ratio,
                           max_pad_waste=self._prefill_pad_waste)
        lengths = [cols + len(o) for o in own]
        return plan_batches(lengths, rule, pad_lengths=[len(o) for o in own])

    def _decode(self, prompts: list[list[int]], S: int, pre: Prefix | None, until: list[str], max_gen: int) -> list[str]:
        """_greedy_batch's prefill and decoding steps; `pre`: the shared prefix read in place
        (raises _NoSharedPrefix if the model's attention did not read it), or None: the
        prefix's cache (if S) expanded to every row. Rows of similar length are prefilled
        together (_prefill_groups) and their caches copied into one left-padded cache."""
        B = len(prompts)
        own = [p[S:] for p in prompts]
        prefix = prompts[0][:S]
        _, mask = self._left_pad(own)
        next_pos = mask.sum(-1, keepdim=True) + S
        if pre is None and S:
            mask = torch.cat([torch.ones(B, S, dtype=mask.dtype, device=mask.device), mask], dim=1)
        groups = self._prefill_groups(own, S, pre)
        batch, prefills = [None, None], len(groups)
        if len(groups) > 1:
            try:
                self._prefill_into(batch, groups, own, S, pre, prefix, S if pre is None else 0, max_gen)
            except _NoWiden:
                self._stop_widening()
                batch = [None, None]
        logits, cache = batch
        if cache is None:
            prefills = 1
            logits, cache = self._prefill(own, S, pre, prefix)
            if self.reserve_kv:
                reserve_cache(cache, max_gen - 1)
        if pre is not None:
            pre.set_valid(mask.bool())
        self.stats["gen_prefill_passes"] += prefills
        self.stats["gen_prefix_in_place_batches"] += pre is not None
        return self._decode_steps(logits, cache, mask, next_pos, pre, until, max_gen)

    def _decode_steps(self, logits, cache, mask, next_pos, pre: Prefix | None, until: list[str], max_gen: int) -> list[str]:
        """Greedy decoding steps after a batch's prefill (`logits` at each row's last prompt
        token, its KV cache, own-key mask and next positions; `pre`: a prefix read in place, or
        None); rows leave the batch when finished (compact_cache). Returns the rows' texts."""
        B = logits.shape[0]
        kw = {self._cache_kw: cache, **({PREFIX_KW: pre} if pre is not None else {})}
        # stop sequences are looked for only where one can newly appear (stops.py)
        stops = StopCheck(B, self.tok_decode, until, self._eos_ids(), max_gen, stop_free_ids(self.tokenizer, until))
        # fixed-shape steps replayed as CUDA graphs: a single prefix read in place, or none in place
        # (attention through SDPA, which takes a 4-D mask: not past a sliding window, which that mask
        # does not encode); not a batch mixing clusters
        if self.cuda_graphs and self._within_window and (type(pre) is Prefix or (
                pre is None and getattr(self.model.config, "_attn_implementation", None) == "sdpa")):

            def forward(ids, pos, valid):
                # without a prefix read in place, SDPA takes the columns to see as a 4-D mask
                return self.model(input_ids=ids, attention_mask=None if pre is not None else valid[:, None, None, :],
                                  position_ids=pos, use_cache=True, logits_to_keep=1, **kw)

            if graph_decode.decode(forward, logits, cache, mask, next_pos, pre, stops, max_gen, self.stats):
                return stops.texts()
        active = list(range(B))  # original row of each live batch row
        while True:
            nxt = logits.argmax(-1).tolist()
            keep = [k for k, (row, tok) in enumerate(zip(active, nxt)) if not stops.add(row, tok)]
            self.stats["gen_tokens"] += len(active)
            if not keep:
                break
            if len(keep) < len(active):
                keep = compact_order(keep, len(active))
                sel = compact_cache(cache, keep, self._device)
                mask, next_pos = mask[sel], next_pos[sel]
                active = [active[k] for k in keep]
                if pre is not None:
                    pre.keep_rows(keep)
            step = torch.tensor([nxt[k] for k in keep], device=self._device)[:, None]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            if pre is not None:
                pre.set_valid(mask.bool())
            out = self.model(input_ids=step, attention_mask=None if pre is not None else mask, position_ids=next_pos,
                             use_cache=True, logits_to_keep=1, **kw)
            logits = out.logits[:, -1, :]
            next_pos = next_pos + 1
        return stops.texts()

    def _static_greedy_batch(self, prompts: list[list[int]], until: list[str], max_gen: int, width: int) -> list[str]:
        """Greedy decode one batch with transformers' generate and a static KV cache (on CUDA
        transformers compiles its decoding step), prompts left padded to `width` tokens. Rows
        are padded (copies of the last prompt) to the fewest rows of a shape already run at this
        width and length, else to a power of two, so a run compiles few graphs: a decoding step
        costs about the same for a few more rows. Each row's text ends at its first EOS token,
        as in _greedy_batch."""
        n = len(prompts)
        seen = [r for r, w, g in self._static_shapes if (w, g) == (width, max_gen) and r >= n]
        rows = min(seen) if seen else 1 << (n - 1).bit_length()
        self._static_shapes.add((rows, width, max_gen))
        batch = prompts + [prompts[-1]] * (rows - n)
        ids, mask = self._left_pad(batch, width)
        out = self.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_gen, do_sample=False,
            cache_implementation="static", pad_token_id=self.tokenizer.pad_token_id,
            stopping_criteria=stop_sequences_criteria(self.tokenizer, until, width, rows),
        )
        self.stats["gen_prefill_tokens"] += ids.numel()
        self.stats["gen_tokens"] += rows * (out.shape[1] - width)
        eos = self._eos_ids()
        texts = []
        for row in out[:n, width:].tolist():
            cut = next((k + 1 for k, t in enumerate(row) if t in eos), len(row))
            texts.append(postprocess_generated_text(self.tok_decode(row[:cut]), until, None))
        return texts

    def _hf_generate_batch(self, prompts: list[list[int]], until: list[str], max_gen: int, kwargs: dict) -> list[str]:
        """Fallback for sampling / unusual kwargs: HFLM._model_generate on one batch."""
        kwargs = copy.deepcopy(kwargs)
        kwargs["temperature"] = kwargs.get("temperature", 0.0)
        if kwargs.get("do_sample") is False and kwargs["temperature"] == 0.0:
            kwargs.pop("temperature")
        ids, mask = self._left_pad(prompts)
        out = self.model.generate(
            input_ids=ids, attention_mask=mask, max_length=ids.shape[1] + max_gen,
            stopping_criteria=stop_sequences_criteria(self.tokenizer, until, ids.shape[1], ids.shape[0]),
            pad_token_id=self.tokenizer.pad_token_id, use_cache=True, **kwargs,
        )
        return [postprocess_generated_text(self.tok_decode(row[ids.shape[1]:]), until, None) for row in out.tolist()]
