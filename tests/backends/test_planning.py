"""Plans of the fast backend (evals/backends/planning.py): few-shot clusters, trie rows and
generation batching keys, on literal token lists (no model needed)."""

from __future__ import annotations

from evals.backends.planning import (
    GEN_CLUSTER_MIN_ROWS,
    common_prefix_len,
    mix_clusters,
    plan_generation,
    plan_loglikelihood,
    pool_small_clusters,
    share_clusters,
)


def test_prefix_helpers():
    assert common_prefix_len([[1, 2, 3], [1, 2, 4]]) == 2
    assert common_prefix_len([[1, 2], [1, 2, 3]]) == 1  # every row keeps a token
    a = [7] * 40
    keys, shared = share_clusters([a + [1], [5, 6], a + [2, 3]])
    assert keys[0] == keys[2] is not None and keys[1] is None
    assert shared[0] == shared[2] == 40 and shared[1] == 0


def test_pooling_weighs_the_attention_it_adds():
    """plan_loglikelihood pools a one-row cluster only where the attention pairs it adds (its S
    prefix nodes facing its n other nodes) cost at most pool_tokens tokens of matrix products
    (merge ratio 10 here), and never at batch size 1 (local: one context per row)."""
    prefix = list(range(100, 140)) + [7]  # contexts sharing 41 tokens: a cluster (SHARE_MIN 32)
    pairs = [(prefix + [k, 8], [9]) for k in range(3)] + [([1, 2, 3], [4])]
    # pooled, the cluster is one row of 41 + 3 x 2 nodes: S x n = 41 x 6 = 246 pairs = 24.6 tokens
    for pool_tokens, pooled in ((0, False), (24, False), (25, True), (1e9, True)):
        plan = plan_loglikelihood(pairs, 2048, 10.0, pool_tokens=pool_tokens)
        assert all(k is None for k in plan.row_keys) is pooled, pool_tokens
        assert plan.forward_tokens() == 41 + 6 + 3  # the prefix once either way
        assert sorted(plan.lengths) == ([3, 47] if pooled else [3, 43, 43, 43])  # clustered: S + 2 per row
    local = plan_loglikelihood(pairs, 2048, 10.0, local=True, pool_tokens=1e9)
    assert [k is not None for k in local.row_keys].count(True) == 3


def test_plain_rows_start_after_their_clusters_prefix_when_shared():
    """Plain rows (one input each): with share_plain a cluster's rows carry its prefix length S
    and batch apart from other clusters, padded only past S; without it, or at batch size 1
    (local), no prefix is shared."""
    prefix = list(range(100, 140))  # contexts sharing 40 tokens: a cluster (SHARE_MIN 32)
    pairs = [(prefix + [k, 8], [9, 10]) for k in range(3)] + [([1, 2, 3], [4]), ([1, 2, 3], [5])]
    shared = plan_loglikelihood(pairs, 2048, 10.0, plain=True, share_plain=True)
    rows = dict(zip((tuple(seqs) for _, seqs in shared.rows), zip(shared.rows, shared.row_keys, shared.pad)))
    assert len(shared.rows) == 4  # one row per distinct input: the last two requests share one
    for k in range(3):
        (S, _), key, pad = rows[((*prefix, k, 8, 9),)]
        assert S == 40 and key is not None and pad == 3  # own tokens: k, 8 and 9
    (S, _), key, pad = rows[((1, 2, 3),)]
    assert S == 0 and key is None and pad == 3
    for plan in (plan_loglikelihood(pairs, 2048, 10.0, plain=True),
                 plan_loglikelihood(pairs, 2048, 10.0, plain=True, share_plain=True, local=True)):
        assert [S for S, _ in plan.rows] == [0] * 4 and set(plan.row_keys) == {None} and plan.pad == plan.lengths


def test_small_clusters_decode_in_the_pool():
    keys, shared = pool_small_clusters([0, 0, 0, 5, 5, None], [40, 40, 40, 33, 33, 0], 3)
    assert keys == [0, 0, 0, None, None, None] and shared == [40, 40, 40, 0, 0, 0]
    # a cluster whose prefix copied to all rows but one fits the allowance joins the pool too
    args = ([0, 0, 0, 7, 7, 7], [40, 40, 40, 30, 30, 30], 3)
    assert pool_small_clusters(*args, max_copied=60)[0] == [0, 0, 0, None, None, None]
    assert pool_small_clusters(*args, max_copied=59)[0] == [0, 0, 0, 7, 7, 7]
    assert pool_small_clusters(*args, max_copied=80) == ([None] * 6, [0] * 6)


def test_mix_clusters_packs_clusters_into_shared_batches():
    """Clusters cut into pieces that fill a batch (rows x longest + prefix), packed largest first."""
    keys = ["a"] * 4 + ["b"] * 3 + ["c"] * 2 + [None] + ["d"] * 10
    lengths = [10, 10, 9, 9, 8, 8, 8, 20, 20, 5] + [10] * 10
    got = mix_clusters(keys, [2] * 9 + [0] + [2] * 10, lengths, 90)
    assert got[9] is None  # the pool stays apart
    # a batch holds rows x longest + its prefixes (2 tokens each). d: 10 rows x 10 + 2 > 90, cut
    # into 8 rows (82) and 2; a (4 x 10 + 2) and c (2 x 20 + 2) open bins; b (3 x 8) joins a:
    # 7 rows x 10 + 4 = 74; d's last 2 rows join c: 4 x 20 + 4 = 84
    d = got[10:]
    assert len(set(d[:8])) == 1 and d[0] not in got[:10]
    assert len(set(got[:7])) == 1 and got[7] == got[8] == d[8] == d[9] != got[0]


def test_plan_generation_holds_a_read_in_place_prefix_once():
    few = [[7] * 40 + [i] for i in range(GEN_CLUSTER_MIN_ROWS)]
    prompts = few + [[5, 6], [9] * 40 + [1], [9] * 40 + [2]]  # a cluster of 8, a pair (pooled), one alone
    keys, shared, lengths, pad = plan_generation(prompts, 10, shared_decode=True)
    assert len(set(keys[:8])) == 1 and keys[0] is not None and keys[8:] == [None] * 3
    assert shared == [40] * 8 + [0, 0, 0]
    assert lengths == pad == [11] * 8 + [12, 51, 51]
    assert plan_generation(prompts, 10, shared_decode=False)[2] == [51] * 8 + [12, 51, 51]
    # the 8 prompts' prefix copied to 7 of them (280 tokens) within the allowance: pooled
    keys, shared, lengths, _ = plan_generation(prompts, 10, shared_decode=True, pool_tokens=7 * 40)
    assert keys == [None] * 11 and lengths == [51] * 8 + [12, 51, 51]
    assert plan_generation(prompts, 10, shared_decode=True, pool_tokens=7 * 40 - 1)[0][0] is not None
