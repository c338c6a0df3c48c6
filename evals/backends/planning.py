"""Plans of the fast backend: which requests share a forward pass or a decoding batch. Pure
functions over token lists; they never touch the model.

  * Few-shot clusters: sequences sharing >= SHARE_MIN leading tokens (share_clusters); their
    prefix runs once per cluster. Small clusters join the common pool (pool_small_clusters);
    on the CPU clusters also share decoding batches (mix_clusters).
  * Log-likelihood: distinct model inputs, sorted, packed into prefix-trie rows per cluster
    (plan_loglikelihood, prefix_trie.pack_rows).
  * Generation: batching keys, shared lengths and padded lengths of greedy prompts
    (plan_generation).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from evals.backends.prefix_trie import build_row, pack_rows

SHARE_MIN = 32  # shortest common prefix (tokens) worth running once per batch
# a cluster of fewer prompts decodes in the common pool, where it may share a batch with other
# prompts (its prefix copied to its rows, or shared if the batch holds only its prompts): a
# batch of its own costs a whole decoding loop. So does a larger cluster whose prefix, copied
# to all but one row, holds no more tokens than a generation batch's padding allowance: reading
# them costs less per step than a step's fixed cost (pool_small_clusters)
GEN_CLUSTER_MIN_ROWS = 8
# a decoding batch mixing clusters (mix_clusters) holds at most this many: each adds a few
# kernels per attention layer and step (multi_prefix_attention)
MIX_MAX_CLUSTERS = 16


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
                       pool_tokens: float = 0, plain: bool = False, share_plain: bool = False) -> LoglikelihoodPlan:
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
    `plain`: every distinct input is a row of its own (FastLM._score_plain, for models that
    cannot take trie rows); with `share_plain` (and not `local`) a cluster's rows start after
    its prefix, which runs once as the model's own KV cache, else no prefix is shared."""
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
    parts = [x[: len(x) - max(map(len, conts_of[x]))] for x in seqs]
    share = not plain or (share_plain and not local)
    distinct = list(dict.fromkeys(parts)) if share else []
    part_keys, part_shared = share_clusters(distinct)
    of_part = {p: (k, s) for p, k, s in zip(distinct, part_keys, part_shared)}
    if plain:
        for x, p in zip(seqs, parts):
            key, S = of_part[p] if share else (None, 0)
            plan.rows.append((S, [x]))
            plan.row_keys.append(key)
            plan.lengths.append(len(x))
            plan.pad.append(len(x) - S)
        return plan
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
