"""Why an item was recommended, free of I/O: the session items that contributed most to it.

A neighbour session adds to a candidate's score the weight ``score`` gives that candidate's
best occurrence in it (``kernel.reference.entry_weights``). The neighbour was found through the
session items it shares with the request, and its similarity is the sum of their weights; so
its addition is split among those shared items in proportion to their weights. Summed over the
neighbours, each (candidate, session item) pair gets its share of the candidate's score (idf
multiplies a candidate's whole score, so it does not change which session items weigh most).
A recommended item that is itself a session item (``recommend_seen``) is explained first by
itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.core.scoring import F64, U64, Params, Query
from service.kernel.reference import entry_weights

BECAUSE = 3


def because(query: Query, histories: Sequence[bytes | None], similarity: F64, params: Params,
            chosen: U64, limit: int = BECAUSE) -> list[list[int]]:
    """For each of ``chosen``, the hashes of up to ``limit`` of ``query.items``, the largest
    contribution first (none with no contribution)."""
    out: list[list[int]] = [[] for _ in range(len(chosen))]
    if not len(chosen) or not len(query.items):
        return out
    items, owner, weight = entry_weights(query.items, query.weights, histories, similarity,
                                         params.sequence_weight, params.before_weight)
    neighbours = len(histories)
    if len(items):
        # each neighbour's best occurrence of each chosen item
        chosen_order = np.argsort(chosen)
        sorted_chosen = chosen[chosen_order]
        at = np.minimum(np.searchsorted(sorted_chosen, items), len(chosen) - 1)
        hit = sorted_chosen[at] == items
        gains = np.zeros((neighbours, len(chosen)))
        np.maximum.at(gains, (owner[hit], chosen_order[at[hit]]), weight[hit])
        # which session items each neighbour shares, weighted
        query_order = np.argsort(query.items)
        sorted_query = query.items[query_order]
        at_q = np.minimum(np.searchsorted(sorted_query, items), len(query.items) - 1)
        shared_hit = sorted_query[at_q] == items
        shared = np.zeros((neighbours, len(query.items)))
        shared[owner[shared_hit], query_order[at_q[shared_hit]]] = 1.0
        shared *= query.weights
        totals = shared.sum(axis=1, keepdims=True)
        shares = np.divide(shared, totals, out=np.zeros_like(shared), where=totals > 0)
        contribution = gains.T @ shares  # chosen x session items
    else:
        contribution = np.zeros((len(chosen), len(query.items)))
    query_items = query.items.tolist()
    session = set(query.seen.tolist())
    for row, item in enumerate(chosen.tolist()):
        order = np.argsort(-contribution[row], kind="stable")
        ranked = [query_items[q] for q in order.tolist() if contribution[row, q] > 0]
        if item in session:  # a repeat: the item itself first
            ranked = [item, *(q for q in ranked if q != item)]
        out[row] = ranked[:limit]
    return out
