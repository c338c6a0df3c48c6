"""Greedy generation methods of the fast backend (FastLM).

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
    cache costs less than a decoding step's fixed cost (gen_pad_waste; on the CPU, where
    decoding attention skips the padding by runs of rows, row_runs.py, of any length); a
    batch's rows are prefilled in groups of similar length whose caches are copied into one
    left-padded cache (widen_cache), so padding costs no prefill (on the CPU a long prompt with
    no prefix prefills alone, its attention causal without a mask: SOLO_PREFILL).
  * Each row stops on the model's EOS token, on max_gen_toks, or as soon as its decoded text
    holds a stop sequence whose cut can no longer move (looked for in the text of the last
    few tokens, the whole text decoded only once one appears); finished rows leave the batch,
    the rows behind them moved into their place in the reserved cache (compact_cache).
  * Output text = HFLM's post-processing (cut at the first stop sequence).
  * Sampling or unusual generation kwargs, and models without a plain key/value cache (Mamba),
    fall back to `model.generate` exactly as HFLM calls it (hf_generate.py). Under a sliding
    window shorter than a call's prompts plus max_gen_toks, prefixes are copied to every row,
    not read in place; under a longer one the cache is made of plain layers (_plain_cache), as
    without a window.
  * Optional (`static_cache=True`, `--static-cache`): greedy batches run through transformers'
    `generate` with a static KV cache (hf_generate.py).
  * Optional (`cuda_graphs=True`, `--cuda-graphs`): the default greedy decoding, its steps run
    on fixed tensors and replayed as CUDA graphs (graph_decode.py): prefixes still read in place,
    rows compacted at half. Same text on CPU (tested, graphs through a CPU stand-in); its speed
    on a GPU is not measured yet.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict

import torch
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

from evals.backends import graph_decode
from evals.backends.batching import TokenBudget, plan_batches, run_batched
from evals.backends.device import attention_kernels, gen_pad_waste
from evals.backends.hf_generate import STATIC_LEN_BUCKET, GenerateMixin
from evals.backends.kv_cache import compact_cache, compact_order, fill_rows, out_cache, reserve_cache, widen_cache
from evals.backends.planning import SHARE_MIN, plan_generation
from evals.backends.prefix_attention import PREFIX_KW, MultiPrefix, Prefix, cache_kv, shared_prefix
from evals.backends.row_runs import RUNS_KW, RowRuns, row_runs
from evals.backends.stops import StopCheck, stop_free_ids

log = logging.getLogger(__name__)

# generation: decoding steps cost about the same for 4 rows as for 1, so batches may hold rows
# up to 1.5x shorter (left padding) instead of log-likelihood's 1.1x
GEN_PAD_RATIO = 1.5
# a prefill group (rows prefilled together, then copied into the batch's reserved cache) holds at
# most this share of the generation budget, and at most the log-likelihood budget
GEN_PREFILL_SHARE = 0.25
# on the CPU a prompt of at least this many tokens with no prefix before it in its cache prefills
# alone: unpadded, its attention needs no mask and SDPA skips the causal mask's upper half, which
# a padded group's mask makes it compute (BBH's 27 prompts at one per task, 238 to 2507 tokens,
# prefilled in 0.843x the time; HumanEval's, 140 tokens on average, took 1.14x alone: they group).
# Swept on 2026-12-07 (docs/speed.md): 256 put HumanEval's prefill at 1.06x of 512's time, 1024
# BBH's at 1.24x
SOLO_PREFILL = 512


class _NoSharedPrefix(Exception):
    """The model's attention did not read the shared prefix in place (see FastLM._decode)."""


class _NoWiden(Exception):
    """The model's KV cache cannot be assembled from prefill groups (widen_cache)."""


class GreedyMixin(GenerateMixin):
    """FastLM's lm-eval generation method (see the module docstring); the model, tokenizer,
    budgets, caches and stats are FastLM's."""

    # ----- generation -------------------------------------------------------------------
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
            # HFLM.tok_batch_encode's tokens, in batched tokenizer calls
            prompts = [enc[-max_ctx:] for enc in self._encode_many([(args[i][0], None) for i in idxs])]
            self._ensure_checked()
            greedy = self._plain_greedy(kwargs) and self._kv_decode and not self._probe_failed  # else generate
            # the generation budget and padding allowance are for _greedy_batch, whose prefill runs in
            # groups and whose KV cache is reserved; transformers' generate gets the log-likelihood rules
            budget = self.gen_budget if greedy and not self.static_cache else self.budget
            waste = gen_pad_waste(self.model, self._device, budget.tokens) if budget is self.gen_budget else None
            self._within_window = self._window is None or max(map(len, prompts)) + max_gen <= self._window
            # ... but where decoding reads no left padding (row_runs.py), a batch takes rows of any length
            runs = self._row_runs and self._within_window and not self.cuda_graphs
            cut_waste = budget.tokens if waste is not None and runs else waste
            # a cluster's shared prefix is held once per batch, not once per row, when read in place;
            # then clusters may also share a batch, each row reading its own prefix (mix_clusters)
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
                    texts = run_batched(lengths, fn, budget, clusters, pad, GEN_PAD_RATIO, pad_waste=cut_waste)
            finally:
                self._prefix = None
            for i, text in zip(idxs, texts):
                res[i] = text
                self.cache_hook.add_partial("generate_until", args[i], text)
        self._update_peak()
        return res  # type: ignore[return-value]

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
        return out.logits[:, -1, :], out_cache(out)

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
        reads, see gen_pad_waste); on the CPU, with no prefix in the rows' cache, rows of
        SOLO_PREFILL tokens or more alone. One group if the cache cannot be widened."""
        if not (self.reserve_kv and self._widen_prefill) or len(own) < 2:
            return [list(range(len(own)))]
        cols = S if pre is None else 0  # prefix columns in the rows' cache
        tokens = min(self.budget.tokens, max(1, int(self.gen_budget.tokens * self._prefill_share)))
        rule = TokenBudget(tokens, max_pad_ratio=self.budget.max_pad_ratio,
                           max_pad_waste=self._prefill_pad_waste)
        lengths = [cols + len(o) for o in own]
        groups = plan_batches(lengths, rule, pad_lengths=[len(o) for o in own])
        if self._device.type == "cuda" or S:
            return groups
        solo = [[i] for g in groups for i in g if len(own[i]) >= SOLO_PREFILL]
        return solo + [rest for g in groups if (rest := [i for i in g if len(own[i]) < SOLO_PREFILL])]

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
        # the rows' own keys read from each row's first valid one (row_runs.py), on the CPU: with no
        # prefix read in place through the model's SDPA, else in the prefix's own-key attention
        runs = None
        if self._row_runs and self._within_window:
            runs = RowRuns()
            if pre is None:
                kw[RUNS_KW] = runs
            else:
                pre.row_runs = runs
        with row_runs(self.model) if runs is not None and pre is None else contextlib.nullcontext():
            return self._decode_loop(logits, cache, mask, next_pos, pre, runs, kw, stops)

    def _decode_loop(self, logits, cache, mask, next_pos, pre: Prefix | None, runs: RowRuns | None, kw: dict,
                     stops: StopCheck) -> list[str]:
        """_decode_steps' eager steps: the next tokens, finished rows out (compact_cache), one
        forward pass of the live rows (`kw`: the cache and any prefix or runs), until none is left."""
        B = logits.shape[0]
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
            elif runs is not None:
                runs.set_valid(mask.bool())
                runs.calls = 0
            out = self.model(input_ids=step, attention_mask=None if pre is not None else mask, position_ids=next_pos,
                             use_cache=True, logits_to_keep=1, **kw)
            if runs is not None and pre is None and runs.calls != self._n_layers:
                # the model's attention bypassed the interface (and took the mask, as SDPA): no runs from now on
                log.warning("%d of %d attention layers decoded by runs of rows; this model decodes over the whole "
                            "padded width from now on", runs.calls, self._n_layers)
                self._row_runs = False
                runs = None
                kw.pop(RUNS_KW)
            self.stats["gen_attention_runs"] += len(runs.runs) if runs is not None else 0
            logits = out.logits[:, -1, :]
            next_pos = next_pos + 1
        return stops.texts()
