"""Prefix-trie rows: every distinct prefix is one node, the mask is exactly "ancestor or
self", and rows merge only sequences that share tokens."""

from __future__ import annotations

import itertools
import random

import torch

from evals.backends.prefix_trie import ancestor_mask, build_row, lcp, pack_rows


def _brute_force(seqs, shared):
    """Nodes = distinct prefixes beyond `shared`; allowed[i][j] = prefix j is a prefix of i."""
    nodes = sorted({tuple(s[: d + 1]) for s in seqs for d in range(shared, len(s))})
    return nodes, [[len(b) <= len(a) and a[: len(b)] == b for b in nodes] for a in nodes]


def test_lcp():
    assert lcp([1, 2, 3], [1, 2, 4]) == 2
    assert lcp([1, 2], [1, 2, 3]) == 2
    assert lcp([], [1]) == 0


def test_build_row_matches_brute_force():
    rng = random.Random(0)
    for shared in (0, 2):
        for _ in range(50):
            base = [7, 8]  # every sequence starts with the shared tokens
            seqs = sorted({tuple(base + [rng.randrange(3) for _ in range(rng.randrange(1, 6))]) for _ in range(rng.randrange(1, 7))})
            row = build_row(seqs, shared)
            nodes, allowed = _brute_force(seqs, shared)
            assert len(row.tokens) == len(nodes)
            # node identity: the prefix ending at each node, read off each sequence's path
            prefix_of = {}
            for s, path in zip(seqs, row.paths):
                assert len(path) == len(s) - shared
                for d, node in enumerate(path):
                    assert row.tokens[node] == s[shared + d] and row.depths[node] == shared + d
                    assert prefix_of.setdefault(node, tuple(s[: shared + d + 1])) == tuple(s[: shared + d + 1])
            got = ancestor_mask(torch.tensor([row.ends]))[0]
            order = [nodes.index(prefix_of[i]) for i in range(len(row.tokens))]
            for i, j in itertools.product(range(len(order)), repeat=2):
                assert bool(got[i, j]) == allowed[order[i]][order[j]]


def test_ancestor_mask_padding_sees_only_itself():
    row = build_row([(1, 2, 3), (1, 2, 4)], 0)  # 4 nodes; pad to 6
    ends = torch.arange(6)
    ends[:4] = torch.tensor(row.ends)
    m = ancestor_mask(ends[None])[0]
    assert m[4].tolist() == [False] * 4 + [True, False]
    assert m[5].tolist() == [False] * 5 + [True]
    assert not m[:4, 4:].any()


def test_pack_rows_merges_only_shared_sequences():
    ctx = list(range(100, 130))
    seqs = sorted([tuple(ctx + [1, 2]), tuple(ctx + [1, 3]), tuple(ctx + [4]), (5, 6, 7), (8, 9)])
    rows = pack_rows(seqs, 0, 1024, 1000.0)
    groups = [[seqs[i] for i in idx] for idx, _ in rows]
    assert sorted(map(len, groups)) == [1, 1, 3]  # the three continuations of ctx share a row
    for (idx, nodes), g in zip(rows, groups):
        assert nodes == len(build_row(g, 0).tokens)
    # sequences that share nothing never share a row, whatever the ratio
    assert len(pack_rows([(1, 2), (3, 4), (5, 6)], 0, 1024, 1e9)) == 3


def test_pack_rows_respects_cap_and_attention_cost():
    seqs = [tuple([1] * 10 + [i]) for i in range(20)]  # 10 shared tokens, 1 new each
    for idx, nodes in pack_rows(seqs, 0, 15, 1e9):
        assert nodes <= 15
    assert len(pack_rows(seqs, 0, 1024, 1e9)) == 1
    # merging 1 shared token into long rows adds more attention pairs than it saves tokens
    long = [tuple([1] + [i] * 50) for i in range(2, 6)]
    assert len(pack_rows(long, 0, 1024, 100.0)) == 4
    assert len(pack_rows(long, 0, 1024, 1e6)) == 1
    # a shared prefix that runs elsewhere (KV cache) is not counted as a node
    two = [tuple([1] * 10 + [5, i]) for i in (0, 1)]
    assert pack_rows(two, 10, 1024, 1e9) == [([0, 1], 3)]
    assert len(pack_rows(seqs[:2], 10, 1024, 1e9)) == 2  # nothing shared beyond the prefix
