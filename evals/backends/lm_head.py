"""Log-probabilities of continuation tokens from the output layer, run only at scored positions.

The log-softmax is PyTorch's own, as in lm-eval's `hf` backend, so each log-probability is the
float32 number HFLM computes from the same logits. (A logsumexp taken another way is closer to the
exact value: on random logits PyTorch's float32 log-softmax is on average 9e-7 above the float64
value per token, one built from max, exp and sum 1e-8; on the rolling-window test document
(log-likelihood -381) the latter put the total 1.7e-3 away from HFLM's.) On the CPU the logits go
into one buffer reused within a call (a fresh 200 MB tensor per chunk costs its page faults: 1024
positions x 49152 tokens took 240 ms fresh, 190 ms into the buffer) and the log-softmax runs over
slices of LSE_ROWS positions that stay in the cache.

Whether a continuation token is the greedy one is HFLM's test, argmax(log-probs) == token. On the
CPU argmax over 49152 log-probs costs as much as the log-softmax itself (16 rows: 700-840 us,
against 40 us for their maxima), so it is decided from row maxima (greedy_hits): a token is the
argmax when its log-prob is its row's maximum and no other entry ties it; rows with a tie or a NaN
fall back to argmax.
"""

from __future__ import annotations

import bisect
from typing import Any, Sequence

import torch

from evals.backends.compat import head_scale

LOGIT_CHUNK = 1024  # scored positions per output-layer product (CPU: 3% faster than 512)
LSE_ROWS = 16  # CPU: positions per log-softmax slice (16 x 49152 float32 = 3 MiB, in L2)


class HeadScorer:
    """The model's output layer applied to chosen hidden states, chunk by chunk."""

    def __init__(self, model: Any) -> None:
        """Takes the output layer, any factor on its logits (compat.head_scale) and any final
        logit soft-capping from `model`."""
        self.head = model.get_output_embeddings()
        self.scale = head_scale(model.config)
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        w = getattr(self.head, "weight", None)
        # the buffer path needs a plain linear layer whose product is float32 on the CPU
        self._plain = (isinstance(self.head, torch.nn.Linear) and w is not None
                       and w.device.type == "cpu" and w.dtype == torch.float32)
        self._buf: torch.Tensor | None = None

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Logits [N, V] of hidden states h [N, D]; on the CPU a view of a buffer reused by the
        next call."""
        if not self._plain:
            return self.head(h)
        w, b = self.head.weight, self.head.bias
        n = h.shape[0]
        if self._buf is None or self._buf.shape[0] < n:
            self._buf = torch.empty(n, w.shape[0], dtype=w.dtype)
        out = self._buf[:n]
        if b is None:
            torch.mm(h, w.t(), out=out)
        else:
            torch.addmm(b, h, w.t(), out=out)
        return out

    def release(self) -> None:
        """Frees the logits buffer (kept only within one scoring call)."""
        self._buf = None

    def score(self, h: torch.Tensor, slots: torch.Tensor, targets: torch.Tensor,
              host_slots: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states h [N, D] of scored positions; pairs (slots[i], targets[i]). Returns the
        pairs' log-probabilities (float32 [P]) and whether each pair's target is its position's
        greedy token (bool [P]). The slices' pairs are counted on the host, from `host_slots` (the
        same slots as a host list) if given, so that nothing is read back from the device (on a
        GPU the call then queues its work without waiting for the forward pass)."""
        n = h.shape[0]
        logp_pairs = torch.empty(slots.shape[0], dtype=torch.float32, device=h.device)
        hits = torch.empty(slots.shape[0], dtype=torch.bool, device=h.device)
        on_cpu = h.device.type == "cpu"  # slices that stay in the cache; greedy flags from maxima
        step = LSE_ROWS if on_cpu else LOGIT_CHUNK
        # (chunk start, chunk end, slice start, slice end): slices of `step` positions in chunks
        slices = [(c0, c1, s0, min(s0 + step, c1))
                  for c0 in range(0, n, LOGIT_CHUNK) for c1 in [min(c0 + LOGIT_CHUNK, n)]
                  for s0 in range(c0, c1, step)]
        # the pairs of each slice: a run of the pairs sorted by position
        order = torch.argsort(slots, stable=True)
        ordered = sorted(host_slots if host_slots is not None else slots.tolist())
        bounds = [bisect.bisect_left(ordered, e) for e in [sl[2] for sl in slices] + [n]]
        for j, (c0, c1, s0, s1) in enumerate(slices):
            if s0 == c0:
                logits = self.logits(h[c0:c1])
                if self.scale != 1.0:
                    logits = logits * self.scale
                if self.softcap:
                    logits = torch.tanh(logits / self.softcap) * self.softcap
            logp = torch.log_softmax(logits[s0 - c0 : s1 - c0].float(), dim=-1)
            k = order[bounds[j] : bounds[j + 1]]
            rows, tgt = slots[k] - s0, targets[k]
            vals = logp[rows, tgt]
            logp_pairs[k] = vals
            hits[k] = greedy_hits(logp, rows, tgt, vals) if on_cpu else logp.argmax(-1)[rows] == tgt
        return logp_pairs, hits


def greedy_hits(logp: torch.Tensor, rows: torch.Tensor, tgt: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
    """argmax(logp[rows[i]]) == tgt[i] for each pair (vals[i] = logp[rows[i], tgt[i]]), from row
    maxima: a target is the argmax when it holds its row's maximum alone. Rows where the maximum is
    tied or NaN are decided by argmax itself. `logp` is changed in place and restored."""
    top = logp.amax(-1)
    hit = vals == top[rows]
    check = torch.isnan(top)  # argmax picks the first NaN; amax cannot say where it is
    if bool(hit.any()):
        r, t = rows[hit], tgt[hit]
        # another entry ties the maximum if the row's maximum is unchanged with the candidates hidden
        logp[r, t] = float("-inf")
        tied = logp.amax(-1) == top
        logp[r, t] = vals[hit]
        # a row with two different candidate targets is tied as well
        distinct = torch.unique(r * logp.shape[1] + t) // logp.shape[1]
        tied |= torch.bincount(distinct, minlength=logp.shape[0]) > 1
        check[r] |= tied[r]
    if bool(check.any()):
        sel = check[rows]
        hit[sel] = logp[rows[sel]].argmax(-1) == tgt[sel]
    return hit
