"""Fast lm-eval backend: same answers as lm-eval's `hf` backend (HFLM), less work.

FastLM is an lm-eval LM over an already loaded causal HF model. Its work is split by kind:
  * loglikelihood.py: requests grouped into prefix-trie rows, few-shot prefixes run once as a
    KV cache, rows packed unpadded, lm_head only at scored positions; plain rows (as HFLM) for
    models that cannot take trie rows, decided by the config (compat.py) and a probe.
  * greedy.py: batched greedy decoding with a reserved KV cache, shared few-shot prefixes read
    in place, per-row stop sequences, finished rows leaving the batch; hf_generate.py:
    transformers' generate for sampling, for models greedy.py cannot decode, and with a static
    cache (--static-cache).
  * planning.py: which requests share a pass or a batch; device.py: what a pass costs on the
    device and budgets from its memory; batching.py: token-budget batches and OOM backoff.
This module holds what both share: tokenisation (HFLM's), the options, the shared-prefix KV
cache, and the checks of what the model's config rules out.
"""

from __future__ import annotations

import copy
import inspect
import logging
import os
from collections import OrderedDict, defaultdict
from typing import Any

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import configure_pad_token, has_bos_prefix, resolve_max_length

from evals.backends.batching import BUDGET_ENV, TokenBudget, default_budget, peak_memory_bytes
from evals.backends.compat import kv_cache_layers, sliding_window, uses_alibi
from evals.backends.device import cpu_attention_waste, gen_budget_tokens, gpu_pad_waste, merge_ratio, to_device
from evals.backends.greedy import GEN_PREFILL_SHARE, GreedyMixin
from evals.backends.kv_cache import out_cache
from evals.backends.lm_head import HeadScorer
from evals.backends.loglikelihood import LoglikelihoodMixin
from evals.backends.packed_attention import supports as supports_packed
from evals.backends.planning import SHARE_MIN, common_prefix_len
from evals.backends.prefix_attention import supports as supports_shared_prefix
from evals.backends.pretokenize import Ahead

log = logging.getLogger(__name__)


@register_model("phi2eval-fast")
class FastLM(LoglikelihoodMixin, GreedyMixin, TemplateLM):
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
    # ... so there a batch's one attention group pads rows of different lengths, and padding
    # costs only attention: such batches may hold more of it (device.cpu_attention_waste)
    attention_padding = True
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
    # a decoding step's attention reads each row's own keys from its first valid one, by runs of
    # rows (row_runs.py), not the batch's left padding, so a generation batch takes rows of any
    # length. None: not on CUDA, where each run adds kernel launches to a launch-bound step
    decode_runs: bool | None = None
    # loglikelihood's strings are encoded ahead in batched tokenizer calls (pretokenize.py)
    pretokenize = True
    # a log-likelihood batch goes to the device without the host waiting (pinned, non-blocking
    # copies; chunk bounds counted on the host) and is read back after the next batch is queued
    # (batching.Pending), so the host prepares the next batch while a GPU runs this one. Same
    # numbers either way; on the CPU, where every operation finishes before the next, it gains
    # nothing
    overlap = True
    _ahead: Ahead | None = None  # during a loglikelihood call, its strings encoded ahead

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
        self._prefix = None  # (token tuple, KV cache, kind of work: see _prefix_kv) of the last shared prefix
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
        self._plain_share: bool | None = None  # plain rows may continue a prefix's cache (_plain_share_ok)
        self._plain_rows_checked: set[bool] = set()  # _score_plain_checked: done within / past the window
        self.plain_reasons: list[str] = []  # why log-likelihood ran plain rows (_plain_reason), once each
        # log-likelihood rows run unpadded (packed_attention.py) where the model allows it
        self._n_layers = getattr(model.config, "num_hidden_layers", None)
        self._packed = supports_packed(model) and isinstance(self._n_layers, int) and self.packed_rows
        self._grouped = self._device.type == "cuda" if self.grouped_rows is None else bool(self.grouped_rows)
        # padding a packed batch's one attention group costs only attention (on the CPU; grouped
        # batches, CUDA's, are cut by real tokens and never use it; plain rows neither)
        self._attention_waste = (cpu_attention_waste(model) if self._device.type != "cuda"
                                 and self.attention_padding else 0.0)
        # greedy decoding reads a shared few-shot prefix once per batch (prefix_attention.py)
        self._shared_decode = self.shared_prefix_decode and supports_shared_prefix(model, self.max_length)
        # decoding attention by runs of rows (row_runs.py), where attention goes through the interface
        self._row_runs = (bool(self.decode_runs) if self.decode_runs is not None else self._device.type != "cuda") \
            and supports_packed(model) and isinstance(self._n_layers, int)
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

        Within loglikelihood the strings come encoded ahead, in batches (pretokenize.py).
        Otherwise the last two encodings are kept: TemplateLM._encode_pair encodes each
        choice's whole string, then the document's context, so the context hits every time
        after the first choice (5 tokeniser calls instead of 8 for four choices)."""
        key = (string, add_special_tokens)
        enc = self._ahead.get(key) if self._ahead is not None else None
        if enc is None:
            enc = self._recent_encode(key)
        return enc[-left_truncate_len:] if left_truncate_len else list(enc)

    def _recent_encode(self, key: tuple[str, bool | None]) -> list[int]:
        """The encoding of a (string, add_special_tokens) key, the last two kept (tok_encode)."""
        enc = self._recent_enc.get(key)
        if enc is None:
            enc = self.tokenizer.encode(key[0], **self._special_kwargs(*key))
            self._recent_enc[key] = enc
            if len(self._recent_enc) > 2:
                self._recent_enc.popitem(last=False)
        else:
            self._recent_enc.move_to_end(key)
        return enc

    def _encode_many(self, keys: list[tuple[str, bool | None]]) -> list[list[int]]:
        """tok_encode of many (string, add_special_tokens) keys, in order, with one batched
        tokenizer call per set of tokenizer arguments (the same encodings as one-string calls)."""
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, (string, add) in enumerate(keys):
            groups[tuple(self._special_kwargs(string, add).items())].append(i)
        out: list = [None] * len(keys)
        for kw, idx in groups.items():
            encs = self.tokenizer([keys[i][0] for i in idx], **dict(kw))["input_ids"]
            for i, enc in zip(idx, encs):
                out[i] = enc
        return out

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
        """KV cache (batch size 1) of a shared prefix (few-shot examples) for `kind` of work
        ("ll" trie rows, "ll_plain" plain rows, "gen" decoding). The last prefix's cache is
        kept, so consecutive batches of one cluster run the prefix once."""
        key = tuple(prefix)
        if self._prefix is None or self._prefix[0] != key or self._prefix[2] != kind:
            self._prefix = None  # free the old one first
            # log-likelihood trie rows run only within the window (_beyond_window); plain rows
            # ("ll_plain") continue the model's own cache, as its forward would build it
            kw = {} if kind == "ll_plain" else self._plain_cache(kind == "ll" or self._within_window)
            ids = to_device(torch.tensor([prefix], dtype=torch.long), self._device, self.overlap)
            out = self.model.base_model(input_ids=ids, use_cache=True, **kw)
            self._prefix = (key, out_cache(out), kind)
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
