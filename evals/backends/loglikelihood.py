"""Log-likelihood methods of the fast backend (FastLM).

  * Tokenisation is HFLM's (TemplateLM._encode_pair, HFLM.tok_encode semantics, left
    truncation of context+continuation to max_length+1), its strings encoded ahead in
    batched tokenizer calls (pretokenize.py).
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
    does not (ALiBi, no key/value cache; compat.py), or where a probe before the first batch
    finds the trie rows disagreeing with the model's own forward (_check_rows: an error, or
    log-likelihoods apart by more than PROBE_TOL), every input runs alone in a right-padded
    row through the model's own forward, as HFLM runs it (_score_plain): same answers, only
    the batching and the log-softmax at scored positions saved. Under a sliding window only
    the inputs longer than the window run so (_beyond_window); the others take trie rows. The
    reason is logged once. Plain rows of a few-shot cluster continue the model's own KV cache
    of its prefix, run once per cluster, where the model has a KV cache and a second probe
    (_check_plain_prefix) finds the continuation giving the whole input's answers, and so does
    the first real row that continues one (_score_plain_checked). A model
    that fails the probe also decodes through transformers' generate (greedy decoding gives
    its own position ids and masks too).
"""

from __future__ import annotations

import contextlib
import itertools
import logging

import torch
from lm_eval import utils as lm_utils

from evals.backends.batching import Pending, packed_groups, resolve, run_batched
from evals.backends.device import attention_kernels, forward_cost_tokens, to_device
from evals.backends.packed_attention import PACK_KW, make_pack, packed
from evals.backends.planning import plan_loglikelihood
from evals.backends.prefix_trie import ancestor_mask, build_row
from evals.backends.pretokenize import Ahead, pair_keys
from evals.errors import first_line

log = logging.getLogger(__name__)

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


def row_mask(ends: list, prefix: int, dtype: torch.dtype, device: torch.device,
             non_blocking: bool = True) -> torch.Tensor:
    """Additive attention mask [rows, 1, T, prefix + T] of trie rows padded to the longest (T),
    from each row's subtree ends (prefix_trie.build_row): a node sees the shared prefix, itself
    and its ancestors; a padding node only itself. Built on `device` from the ends copied there
    as device.to_device copies them (`non_blocking`)."""
    T = max(map(len, ends))
    e = torch.arange(T).repeat(len(ends), 1)
    for b, row in enumerate(ends):
        e[b, : len(row)] = torch.tensor(row, dtype=torch.long)
    allowed = ancestor_mask(to_device(e, device, non_blocking))
    mask = torch.zeros(len(ends), 1, T, prefix + T, dtype=dtype, device=device)
    mask[..., prefix:].masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    return mask


class LoglikelihoodMixin:
    """FastLM's lm-eval log-likelihood methods (see the module docstring); the model, tokenizer,
    budgets, caches and stats are FastLM's."""

    # ----- log-likelihood ---------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """TemplateLM.loglikelihood (its tokenisation, then _loglikelihood_tokens), with the
        strings it tokenises one by one encoded ahead in batches (pretokenize.py)."""
        if not self.pretokenize:
            return super().loglikelihood(requests, disable_tqdm)
        ahead = self._ahead = Ahead(pair_keys(r.args for r in requests), self._encode_many)
        try:
            return super().loglikelihood(requests, disable_tqdm)
        finally:
            self.stats["ll_tokenizer_batches"] += ahead.batches
            self._ahead = None

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """Score (request_str, context_enc, continuation_enc) triples over prefix-trie rows."""
        if not requests:
            return []
        pairs = [(ctx, cont) for _, ctx, cont in requests]
        beyond = self._beyond_window(pairs)
        if 0 < len(beyond) < len(requests):
            # the inputs within the sliding window take trie rows, the longer ones plain rows
            parts = [[i for i in range(len(requests)) if i not in beyond], sorted(beyond)]
            res: list = [None] * len(requests)
            for part in parts:
                for i, ans in zip(part, self._loglikelihood_tokens([requests[i] for i in part], disable_tqdm)):
                    res[i] = ans
            return res
        reason = self._plain_reason(bool(beyond))
        if reason is not None:
            self.stats["ll_plain_requests"] += len(requests)
        # batch size 1 asks for results that do not depend on the rest of the run: rows of one context
        plan = plan_loglikelihood(pairs, self.max_length, self._merge_ratio, local=self.budget.max_rows == 1,
                                  pool_tokens=2 * forward_cost_tokens(self.model, self._device, self.budget.tokens)
                                  if self.pool_clusters else 0, plain=reason is not None,
                                  share_plain=reason is not None and self._plain_share_ok())
        rows, conts_of = plan.rows, plan.conts_of
        score = self._score_rows if reason is None else self._score_plain_checked
        try:
            with torch.inference_mode(), attention_kernels(self._device):
                per_row = run_batched(plan.lengths, lambda ix: score([rows[i] for i in ix], conts_of),
                                      self.budget, plan.row_keys, plan.pad,
                                      packed=lambda: reason is None and self._packed and self._grouped,
                                      attention_waste=self._attention_waste if reason is None and self._packed else 0.0)
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

    def _beyond_window(self, pairs: list) -> set[int]:
        """Indices of the requests whose model input is longer than the model's sliding window
        (none without one, or where every request runs plain rows anyway): trie rows ignore
        the window, exact only where an input fits it (its depth is its position)."""
        self._ensure_checked()
        if self._window is None or self._rows_reason is not None:
            return set()
        return {i for i, (ctx, cont) in enumerate(pairs)
                if min(len(ctx) + len(cont), self.max_length + 1) - 1 > self._window}

    def _plain_reason(self, past_window: bool) -> str | None:
        """Why a call's requests must run as plain rows (_score_plain), or None for trie rows:
        what the config rules out, a failed probe (_check_rows, once per backend), or
        `past_window`: they are longer than a sliding window (_beyond_window; the call runs the
        others apart). The reason is logged once."""
        self._ensure_checked()
        reason = self._rows_reason
        if reason is None and past_window:
            reason = f"inputs longer than the model's {self._window}-token sliding attention window"
        if reason is not None and reason not in self.plain_reasons:
            self.plain_reasons.append(reason)
            log.warning("log-likelihood: %s; each such input runs as a row of its own through the model's own "
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
        with self._probing():
            self._rows_reason = self._check_rows()
        if self._rows_reason is not None:
            self._probe_failed = True
            log.warning("generation: the probe found this model's position ids or masks handled differently (%s); "
                        "greedy decoding runs through transformers' generate", self._rows_reason)

    @contextlib.contextmanager
    def _probing(self):
        """A probe's work: in inference mode under the device's attention kernels, its stats
        dropped (but its own ll_probe_* figures) and its prefix cache freed afterwards."""
        stats = dict(self.stats)
        try:
            with torch.inference_mode(), attention_kernels(self._device):
                yield
        finally:
            probe = {k: v for k, v in self.stats.items() if k.startswith("ll_probe")}
            self.stats.clear()
            self.stats.update(stats, **probe)
            self._prefix = None

    def _probe_inputs(self) -> tuple[tuple, dict]:
        """The probes' inputs (a, b, c) from PROBE_TEXT (128 tokens) and their continuations.
        a and b share 40 tokens, then b's 12 follow a's 48 in their trie row: wrong masks let b
        see a's tokens, wrong positions put b 48 places off. The scored tokens are unlikely ones,
        whose log-probabilities such errors move most (by 3.9-4.1 on SmolLM2, see PROBE_TOL)."""
        ids = self.tok_encode(PROBE_TEXT)
        ids = (ids * (128 // max(len(ids), 1) + 1))[:128]
        a, b, c = tuple(ids[:88]), tuple(ids[:40] + ids[96:108]), tuple(ids[110:122])
        return (a, b, c), {x: {tuple(x[-3:]): None, tuple(ids[1:3]): None} for x in (a, b, c)}

    def _plain_share_ok(self) -> bool:
        """Whether plain rows may continue the model's own KV cache of a shared few-shot prefix:
        a model with a key/value cache whose trie rows were not refused by the probe (a model
        that mishandles position ids would mishandle a cache's too), and whose cached
        continuation gives its full forward's log-likelihoods on a probe (checked once)."""
        if self._plain_share is None:
            ok = False
            if self._kv_decode and not self._probe_failed:
                with self._probing():
                    ok = self._check_plain_prefix()
            self._plain_share = ok
        return self._plain_share

    def _check_plain_prefix(self) -> bool:
        """Probe (run under _probing): two of _check_rows's inputs (a 40-token common prefix)
        scored as plain rows that continue the model's own cache of that prefix, against each
        scored whole. False (logged) on an error or a difference beyond PROBE_TOL."""
        if self.max_length < 128:
            return False
        (a, b, _), conts_of = self._probe_inputs()
        try:
            ref = {k: v for x in (a, b) for k, v in self._score_plain([(0, [x])], conts_of)[0]}
            got = {k: v for row in self._score_plain([(40, [a]), (40, [b])], conts_of) for k, v in row}
            diff = max(abs(got[k][0] - ref[k][0]) for k in ref)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure means: no shared prefix
            diff, why = float("nan"), f"{type(exc).__name__}: {first_line(exc)[:120]}"
        else:
            why = f"log-likelihoods {diff:.2g} apart"
        if diff <= PROBE_TOL.get(self.model.dtype, PROBE_TOL[None]):  # NaN fails too
            return True
        log.warning("log-likelihood: plain rows run their few-shot prefix each (continuing the model's own "
                    "cache of it gave %s on a probe)", why)
        return False

    def _check_rows(self) -> str | None:
        """Probe: a short text's inputs scored through trie rows (two inputs sharing a prefix, one
        more row, and the prefix as a KV cache) against each input alone through the model's own
        forward (_score_plain). Returns why trie rows cannot be used (an error, or log-probabilities
        further apart than PROBE_TOL for the model's dtype), else None."""
        if self.max_length < 128:  # the probe's inputs would not fit: trust the config
            return None
        (a, b, c), conts_of = self._probe_inputs()
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
                    got.update(k_v for row in resolve(self._score_rows(rows, conts_of)) for k_v in row)
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
        log-softmax in float32. Rows of a cluster (shared length S > 0, plan_loglikelihood's
        share_plain) continue the model's own KV cache of their first S tokens, run once per
        cluster (_prefix_kv). Same return as _score_rows."""
        dev = self._device
        S = rows[0][0]
        seqs = [row_seqs[0] for _, row_seqs in rows]
        if S and self._plain_share is False:  # refused by _score_plain_checked in this call: each row whole
            return [self._score_plain([(0, [x])], conts_of)[0] for x in seqs]
        own = [x[S:] for x in seqs]
        B, T = len(own), max(map(len, own))
        ids = torch.full((B, T), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        for b, o in enumerate(own):
            ids[b, : len(o)] = torch.tensor(o, dtype=torch.long)
        keep = T - min(len(o) - max(map(len, conts_of[x])) for x, o in zip(seqs, own))
        kw = {self._keep_kw: keep} if self._keep_kw else {}
        if S:
            kw[self._cache_kw] = self._prefix_cache(list(seqs[0][:S]), B, "ll_plain")
        logits = self.model(input_ids=ids.to(dev), use_cache=bool(S), **kw).logits[:, -keep:]
        self.stats["ll_plain_batches"] += 1
        self.stats["ll_forward_tokens"] += B * T
        out: list[list] = [[] for _ in range(B)]
        for b, (x, o) in enumerate(zip(seqs, own)):
            end = len(o) - (T - keep)  # the row's last position, +1, in the kept logits
            n = max(map(len, conts_of[x]))
            logp = torch.log_softmax(logits[b, end - n : end].float(), dim=-1)  # once per row
            self.stats["ll_scored_positions"] += n
            for c in conts_of[x]:
                lpc = logp[n - len(c):]
                tgt = torch.tensor(c, dtype=torch.long, device=logp.device)
                lp = lpc.gather(-1, tgt[:, None]).sum().item()
                out[b].append(((x, c), (float(lp), bool((lpc.argmax(-1) == tgt).all()))))
        return out

    def _score_plain_checked(self, rows: list[tuple[int, list[tuple]]], conts_of: dict) -> list:
        """_score_plain, checking the first real row that continued a prefix's cache, once per
        backend within a sliding window and once past it (or without one): scored again whole,
        it must give the same log-likelihoods (to PROBE_TOL), for the probe's short text
        reaches neither a real window nor real content. Else sharing stops (logged) and this
        batch's rows, like the rest, run whole."""
        out = self._score_plain(rows, conts_of)
        x = rows[0][1][0]
        past = self._window is not None and len(x) - 1 > self._window
        if not rows[0][0] or past in self._plain_rows_checked:
            return out
        ref = dict(self._score_plain([(0, [x])], conts_of)[0])  # out of memory: the retried batch checks
        self._plain_rows_checked.add(past)
        self.stats["ll_plain_row_checks"] += 1
        diff = max(abs(ref[k][0] - ans[0]) for k, ans in out[0])
        if diff <= PROBE_TOL.get(self.model.dtype, PROBE_TOL[None]):
            return out
        self._plain_share = False
        log.warning("log-likelihood: plain rows run their few-shot prefix each from now on (continuing the "
                    "model's own cache of it put a real input's log-likelihoods %.2g from its whole forward)", diff)
        return self._score_plain(rows, conts_of)

    def _score_rows(self, rows: list[tuple[int, list[tuple]]], conts_of: dict) -> list[list[tuple[tuple, tuple[float, bool]]]]:
        """One forward over trie rows (shared length S, sorted sequences); returns per row
        ((sequence, continuation), (logprob, is_greedy)) for every continuation of its sequences.

        All rows of a batch belong to one cluster: its first S tokens (few-shot examples) run
        once (once per cluster: the KV cache is kept for the next batch) and their KV cache is
        expanded to every row. Each scored node runs lm_head once, however many continuations
        score it."""
        dev, nb = self._device, self.overlap
        B, S = len(rows), rows[0][0]
        built = [build_row(seqs, S) for _, seqs in rows]
        lengths = [len(r.tokens) for r in built]
        T = max(lengths)
        # packed: rows concatenated; attention pads each group of rows of similar length
        pack, groups = None, None
        if self._packed:
            groups = packed_groups(lengths, self.budget) if self._grouped else [list(range(B))]
            pack = make_pack(lengths, S, dev, groups, nb)
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
        ids, pos = to_device(ids, dev, nb), to_device(pos, dev, nb)
        # the indices the output layer needs go to the device now, ahead of the forward pass
        pp, pt, pr, at = (to_device(torch.tensor(x, dtype=torch.long), dev, nb)
                          for x in (pair_slot, pair_tgt, pair_req, flat_pos))
        if pack is None:
            mask = row_mask([r.ends for r in built], S, self.model.dtype, dev, nb)
        else:
            for g, idx in zip(pack.groups, groups):
                g.mask = row_mask([built[b].ends for b in idx], S, self.model.dtype, dev, nb)
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
        h = hidden.reshape(-1, hidden.shape[-1])[at]
        del hidden
        logp_pairs, hits = self._head.score(h, pp, pt, host_slots=pair_slot)
        del h
        self.stats["ll_scored_positions"] += len(flat_pos)
        n_req = len(req_keys)
        # per request: its log-likelihood and its count of non-greedy tokens, read back in one copy
        both = torch.zeros(2, n_req, dtype=torch.float64, device=dev).index_add_(
            1, pr, torch.stack([logp_pairs.double(), (~hits).double()]))

        def results() -> list[list]:
            out: list[list] = [[] for _ in range(B)]
            lps, misses = both.tolist()
            for (b, key), lp, m in zip(req_keys, lps, misses):
                out[b].append((key, (float(lp), m == 0)))
            return out

        # up to here nothing was read back from the device: with `overlap`, run_batched reads
        # these results after it has queued the next batch
        return Pending(results) if self.overlap else results()

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
