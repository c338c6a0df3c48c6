"""Log-probabilities of continuation tokens from the output layer, run only at scored positions.

The log-softmax is PyTorch's own, as in lm-eval's `hf` backend, so each log-probability is the
float32 number HFLM computes from the same logits. (A logsumexp taken another way is closer to the
exact value: on random logits PyTorch's float32 log-softmax is on average 9e-7 above the float64
value per token, one built from max, exp and sum 1e-8; on the rolling-window test document
(log-likelihood -381) the latter put the total 1.7e-3 away from HFLM's.) On the CPU the logits go
into one buffer reused within a call (a fresh 200 MB tensor per chunk costs its page faults: 1024
positions x 49152 tokens took 240 ms fresh, 190 ms into the buffer) and the log-softmax runs over
slices of LSE_ROWS positions that stay in the cache.
"""

from __future__ import annotations

from typing import Any

import torch

LOGIT_CHUNK = 1024  # scored positions per output-layer product (CPU: 3% faster than 512)
LSE_ROWS = 16  # CPU: positions per log-softmax slice (16 x 49152 float32 = 3 MiB, in L2)


class HeadScorer:
    """The model's output layer applied to chosen hidden states, chunk by chunk."""

    def __init__(self, model: Any) -> None:
        """Takes the output layer and any final logit soft-capping from `model`."""
        self.head = model.get_output_embeddings()
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

    def score(self, h: torch.Tensor, slots: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states h [N, D] of scored positions; pairs (slots[i], targets[i]). Returns the
        pairs' log-probabilities (float32 [P]) and each position's greedy token (long [N])."""
        n = h.shape[0]
        logp_pairs = torch.empty(slots.shape[0], dtype=torch.float32, device=h.device)
        greedy = torch.empty(n, dtype=torch.long, device=h.device)
        step = LSE_ROWS if h.device.type == "cpu" else LOGIT_CHUNK
        # (chunk start, chunk end, slice start, slice end): slices of `step` positions in chunks
        slices = [(c0, c1, s0, min(s0 + step, c1))
                  for c0 in range(0, n, LOGIT_CHUNK) for c1 in [min(c0 + LOGIT_CHUNK, n)]
                  for s0 in range(c0, c1, step)]
        # the pairs of each slice: a run of the pairs sorted by position
        order = torch.argsort(slots, stable=True)
        edges = torch.tensor([sl[2] for sl in slices] + [n], device=h.device)
        bounds = torch.searchsorted(slots[order], edges).tolist()
        for j, (c0, c1, s0, s1) in enumerate(slices):
            if s0 == c0:
                logits = self.logits(h[c0:c1])
                if self.softcap:
                    logits = torch.tanh(logits / self.softcap) * self.softcap
            logp = torch.log_softmax(logits[s0 - c0 : s1 - c0].float(), dim=-1)
            greedy[s0:s1] = logp.argmax(-1)
            k = order[bounds[j] : bounds[j + 1]]
            logp_pairs[k] = logp[slots[k] - s0, targets[k]]
        return logp_pairs, greedy
