"""``sessionrec load``: bootstrap the learned state from a historical click log.

It leaves exactly the state the workers would leave after streaming the same events: each
session's events go through the same pure update rule (``service.core.model.apply_events``), and
the per-item structures, which are order-free (neighbour and cart indexes), are built in bulk
instead of being spliced entry by entry. Trending scores are summed in log space per item; they
equal the streamed ones within float rounding (the stream's own sum order depends on interleaving).
Sessions' arrivals are the one difference: streamed, a session arrives when the server accepted
its first event; loaded, when the log's own clock says (the same sessions, other times).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from redis.asyncio.client import Pipeline

from service.core.layout import partition_of, shard_of
from service.core.model import Event, apply_events, arrivals_kept, no_later_than, trending
from service.failures import Refused
from service.offline.progress import bar, counted
from service.settings import Settings
from service.store.state import Store

PIPELINE = 2000
BULK_TIMEOUT = 60.0
"""Socket timeout of a bulk load's client: a pipeline of 2000 multi-kilobyte writes can take
longer than the API's one-second budget, on a busy machine or a cluster node."""


def bulk_store(settings: Settings) -> Store:
    return Store(settings.replace(redis_timeout=max(settings.redis_timeout, BULK_TIMEOUT)))


@dataclass(frozen=True)
class LoadReport:
    events: int
    sessions: int
    items: int
    seconds: float


class NotEmpty(Refused, RuntimeError):
    """The namespace already holds learned state: loading would mix two histories."""


def build_indexes(changes: Iterable[tuple[bytes, bytes, bytes]], cap: int) -> dict[bytes, bytes]:
    """Final neighbour index per item: apply each (item, old, new) replacement, keep the
    newest ``cap`` entries sorted. Equal to splicing them one by one with trimming, because an
    entry is only ever replaced by a newer one (see the proof in docs/ACCURACY.md)."""
    entries: dict[bytes, set[bytes]] = {}
    for item, old, new in changes:
        bucket = entries.setdefault(item, set())
        if old:
            bucket.discard(old)
        bucket.add(new)
    return {item: b"".join(sorted(bucket)[-cap:]) for item, bucket in entries.items()}


async def refuse_unless_empty(store: Store) -> None:
    """``NotEmpty`` when the namespace has learned state (a load would mix two histories)."""
    s = store.settings
    if await store.redis.exists(store.keys.trend()):
        raise NotEmpty(f"namespace {s.namespace!r} at {s.redis_url_for_logs()} already has "
                       "learned state, and load needs an empty one: pass a new --namespace "
                       "(SESSIONREC_NAMESPACE), or give all the files to one load")


async def load(store: Store, events: Iterable[Event]) -> LoadReport:
    """Write the learned state of ``events`` (each session's events in order) into an empty
    namespace."""
    started = time.perf_counter()
    s = store.settings
    keys = store.keys
    await refuse_unless_empty(store)
    # as the workers would cap them on arrival (now): no event later than the allowed skew
    ceiling = time.time() + s.max_clock_skew
    events = [no_later_than(ev, ceiling) for ev in events]
    fx = apply_events({}, counted(events, "learning", len(events), "events"), s.history_cap)
    indexes = build_indexes(fx.index, s.index_cap)
    cart_indexes = build_indexes(fx.cart_index, s.index_cap)
    trend = trending(fx.trend, s.trend_half_life)
    ttl = s.history_ttl * 1000
    commands: list[Callable[[Pipeline], object]] = []
    for sess, blob in fx.histories.items():
        commands.append(partial(_set, keys.history(sess), blob, ttl))
    for item, blob in indexes.items():
        commands.append(partial(_set, keys.index(item), blob, ttl))
    for sess, blob in fx.carts.items():
        commands.append(partial(_set, keys.cart(sess), blob, ttl))
    for item, blob in cart_indexes.items():
        commands.append(partial(_set, keys.cart_index(item), blob, ttl))
    for item, name in fx.names.items():
        commands.append(partial(_hsetnx, keys.names(shard_of(item)), item.hex(), name))
    for item, count in fx.doc_freq.items():
        commands.append(partial(_hincrby, keys.doc_freq(shard_of(item)), item.hex(), count))
    commands.append(partial(_hincrby, keys.meta(), "sessions", fx.new_sessions))
    # a log's sessions arrived when its clock says (the operator's log, not public traffic):
    # its newest sessions are what the first tuning runs hold out
    by_partition: dict[int, dict[bytes, int]] = {}
    for sess, arrived in fx.arrivals.items():
        by_partition.setdefault(partition_of(sess, s.partitions), {})[sess] = arrived
    keep = arrivals_kept(s.partitions)
    for p, arrivals in by_partition.items():
        newest = sorted(arrivals.items(), key=lambda pair: (pair[1], pair[0]))[-keep:]
        for start in range(0, len(newest), 1000):
            commands.append(partial(_zadd, keys.arrivals(p),
                                    {sess: float(t) for sess, t in newest[start:start + 1000]}))
    members = list(trend.items())
    for start in range(0, len(members), 1000):
        commands.append(partial(_zadd, keys.trend(), dict(members[start:start + 1000])))
    with bar("writing", len(commands), "keys", scale=True) as shown:
        for start in range(0, len(commands), PIPELINE):
            async with store.redis.pipeline(transaction=False) as pipe:
                for command in commands[start:start + PIPELINE]:
                    command(pipe)
                await pipe.execute()
            shown.update(len(commands[start:start + PIPELINE]))
    return LoadReport(len(events), len(fx.histories), len(fx.names),
                      time.perf_counter() - started)


def _set(key: str, value: bytes, px: int | None, pipe: Pipeline) -> object:
    return pipe.set(key, value, px=px)


def _hsetnx(key: str, field: str, value: str, pipe: Pipeline) -> object:
    return pipe.hsetnx(key, field, value)


def _hincrby(key: str, field: str, value: int, pipe: Pipeline) -> object:
    return pipe.hincrby(key, field, value)


def _zadd(key: str, mapping: dict[Any, float], pipe: Pipeline) -> object:
    return pipe.zadd(key, mapping)
