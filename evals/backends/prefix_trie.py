"""Token sequences merged into prefix tries, one trie per packed row.

Log-likelihood requests share leading tokens far beyond "same context": the choices of a
question share its context and often their first words (PIQA's two solutions), neighbouring
documents share a passage or a caption (HellaSwag), and WinoGrande's two contexts share
everything before the blank. Sorted, such sequences form a trie. A row holds the trie of a
few neighbouring sequences in preorder; every node is one token, computed once, at its
depth as position id, and sees exactly its ancestors and itself. In preorder the nodes of a
subtree are contiguous, so "j is an ancestor of i or i itself" is `j <= i <= end[j]`, where
end[j] is the last node of j's subtree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch


def lcp(a: Sequence[int], b: Sequence[int], start: int = 0) -> int:
    """Length of the longest common prefix of two sequences known to agree before `start`."""
    n = min(len(a), len(b))
    k = start
    while k < n and a[k] == b[k]:
        k += 1
    return k


def pack_rows(seqs: Sequence[Sequence[int]], shared: int, cap: int, merge_ratio: float) -> list[tuple[list[int], int]]:
    """Cut sorted, distinct `seqs` (whose first `shared` tokens run elsewhere, as a KV cache)
    into rows of consecutive sequences; returns (indices, trie nodes) per row.

    A sequence joins the row before it if the row stays within `cap` nodes and the tokens it
    shares with its predecessor save more matrix-product work than the bigger row adds in
    attention: with l shared, n new and c nodes already in the row, merge when
    l * merge_ratio > (c + n)^2 - c^2 - (n + l)^2, the pairs a dense masked attention
    computes extra; merge_ratio is matrix-product FLOPs per token over attention FLOPs per
    token pair (see FastLM.merge_ratio)."""
    rows: list[tuple[list[int], int]] = []
    idx: list[int] = []
    nodes = 0
    for i, s in enumerate(seqs):
        if idx:
            l = lcp(s, seqs[idx[-1]], shared) - shared
            n = len(s) - shared - l
            extra_pairs = (nodes + n) ** 2 - nodes ** 2 - (n + l) ** 2
            if nodes + n <= cap and l * merge_ratio > extra_pairs:
                idx.append(i)
                nodes += n
                continue
            rows.append((idx, nodes))
        idx, nodes = [i], len(s) - shared
    if idx:
        rows.append((idx, nodes))
    return rows


@dataclass
class TrieRow:
    """One packed row: node tokens, depths (position ids), subtree ends, and for each input
    sequence the node of each of its positions from `shared` on."""

    tokens: list[int] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    paths: list[list[int]] = field(default_factory=list)


def build_row(seqs: Sequence[Sequence[int]], shared: int) -> TrieRow:
    """The trie of sorted, distinct `seqs` beyond their first `shared` tokens, in preorder."""
    row = TrieRow()
    parent: list[int] = []
    path: list[int] = []  # node at each depth (from `shared`) of the previous sequence
    prev: Sequence[int] | None = None
    for s in seqs:
        keep = lcp(s, prev, shared) - shared if prev is not None else 0
        del path[keep:]
        for d in range(shared + keep, len(s)):
            parent.append(path[-1] if path else -1)
            path.append(len(row.tokens))
            row.tokens.append(s[d])
            row.depths.append(d)
        row.paths.append(list(path))
        prev = s
    row.ends = list(range(len(row.tokens)))
    for i in range(len(row.tokens) - 1, -1, -1):  # children come after their parent
        if parent[i] >= 0 and row.ends[i] > row.ends[parent[i]]:
            row.ends[parent[i]] = row.ends[i]
    return row


def ancestor_mask(ends: torch.Tensor) -> torch.Tensor:
    """allowed[b, i, j] = node j is node i or one of its ancestors, from subtree ends
    [B, T]; padding nodes (end = own index, after the real ones) see only themselves."""
    T = ends.shape[-1]
    i = torch.arange(T, device=ends.device)
    return (i[None, None, :] <= i[None, :, None]) & (i[None, :, None] <= ends[:, None, :])
