"""Snapshots of a namespace's learned state and their differences: how the crash tests (and an
operator comparing two runs) check "the same state as one clean pass"."""

from __future__ import annotations

import math
from typing import Any

from service.core.layout import newest_entries

INDEX = "x"
CART_INDEX = "cx"
ARRIVALS = "arrivals"
LEARNED = {"h", INDEX, "ch", CART_INDEX, "names", "df", "trend", "meta", ARRIVALS}
"""Key kinds that make up the learned state (what the model reads). Stream bookkeeping,
leases, watermarks and live sessions are not learned state."""


async def learned_state(client: Any, namespace: str, index_cap: int,
                        arrival_times: bool = False) -> dict[str, Any]:
    """Every learned key of the namespace (name without the namespace) and its value; of a
    neighbour or cart index, what counts: its newest ``index_cap`` entries (the worker trims lazily,
    so two runs that agree can differ in the older entries still waiting for a trim). Of the
    arrivals, which sessions, and with ``arrival_times`` when each arrived: the same events
    sent twice (or loaded) arrive at other times, so only runs over the same stream entries
    can compare those."""
    state: dict[str, Any] = {}
    async for raw in client.scan_iter(match=f"{namespace}:*", count=1000):
        key = raw.decode()
        short = key[len(namespace):]
        part = short.split(":")[2]  # ":{tag}:<kind>[:<id>]"
        if part not in LEARNED:
            continue
        kind = (await client.type(raw)).decode()
        if kind == "string":
            value = await client.get(raw)
            state[short] = newest_entries(value, index_cap) \
                if part in (INDEX, CART_INDEX) else value
        elif kind == "hash":
            state[short] = await client.hgetall(raw)
        elif kind == "zset":
            members = dict(await client.zrange(raw, 0, -1, withscores=True))
            state[short] = members if part != ARRIVALS or arrival_times else sorted(members)
        else:
            raise ValueError(f"unexpected {kind} at {key}")
    return state


def differences(got: dict[str, Any], want: dict[str, Any], limit: int = 20) -> list[str]:
    """Keys whose values differ: byte for byte, except trending scores, float sums whose order
    depends on interleaving, compared within float rounding."""
    out = [f"missing {k}" for k in sorted(want.keys() - got.keys())]
    out += [f"unexpected {k}" for k in sorted(got.keys() - want.keys())]
    for key in sorted(want.keys() & got.keys()):
        a, b = got[key], want[key]
        if key.endswith(":trend"):
            same = a.keys() == b.keys() and all(
                math.isclose(a[m], b[m], rel_tol=1e-12, abs_tol=1e-9) for m in b)
        else:
            same = a == b
        if not same:
            out.append(f"differs {key}")
        if len(out) >= limit:
            break
    return out
