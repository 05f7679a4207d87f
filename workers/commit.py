"""Assembling a batch's commit: the calls of ``commit.lua`` (the partition's own slot: its
histories, arrivals, watermark, XACK and dead letters) and, on a cluster, one ``apply.lua``
call per other slot the batch's effects land in (item shards, the global keys). Free of I/O:
the consumer sends what this builds.

Ops (see ``service/store/lua/ops.lua``) go straight into the calls' arguments, thousands per
batch, and name their keys by position in the call's KEYS.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any, cast

import orjson

from service.core.layout import ITEM_SHARDS, index_limit, shard_of
from service.core.model import Effects, arrivals_kept, trending
from service.settings import Settings
from service.store.keyspace import GROUP, Keys

Group = int | str
"""Where an op lands outside the partition's own slot: an item shard number or ``GLOBAL``."""
GLOBAL = "global"


class Call:
    """One script call being assembled: its KEYS, and its ARGV, in which ops name their keys
    by position in KEYS (1-based)."""

    __slots__ = ("args", "index", "keys")

    def __init__(self, keys: list[str], args: list[Any]) -> None:
        self.keys = keys
        self.args = args
        self.index = {key: n + 1 for n, key in enumerate(keys)}

    def ref(self, key: str) -> int:
        ref = self.index.get(key)
        if ref is None:
            self.keys.append(key)
            ref = self.index[key] = len(self.keys)
        return ref


class NameSet:
    """A bounded set of item hashes, cleared when full or older than ``max_age`` seconds
    (forgetting only costs a re-send)."""

    def __init__(self, capacity: int = 1 << 20, max_age: float = 600.0) -> None:
        self.capacity = capacity
        self.max_age = max_age
        self._items: set[bytes] = set()
        self._since = time.monotonic()

    def __contains__(self, item: bytes) -> bool:
        return item in self._items

    def clear(self) -> None:
        self._items.clear()
        self._since = time.monotonic()

    def update(self, items: Iterable[bytes]) -> None:
        if len(self._items) > self.capacity or time.monotonic() - self._since > self.max_age:
            self.clear()
        self._items.update(items)


DeadEntry = tuple[str, str, dict[bytes, bytes]]
"""A stream entry that can never be applied: its id, the reason, its raw fields."""


class CommitAssembler:
    """Builds the script calls of one worker's batches."""

    def __init__(self, keys: Keys, settings: Settings) -> None:
        self.keys = keys
        self.settings = settings
        self.index_prefixes = [keys.index_prefix(n) for n in range(ITEM_SHARDS)]
        self.cart_prefixes = [keys.cart_index_prefix(n) for n in range(ITEM_SHARDS)]
        self.doc_freq_keys = [keys.doc_freq(n) for n in range(ITEM_SHARDS)]
        self.name_keys = [keys.names(n) for n in range(ITEM_SHARDS)]
        self.named = NameSet(max_age=min(600.0, settings.history_ttl / 4))
        """Items whose name this process committed: names never change (first writer wins),
        so their HSETNX is left out of later batches. Forgotten well within ``history_ttl``:
        a name swept with its expired item must be written again when the item comes back."""

    def commit_call(self, p: int, entry_ids: Sequence[str], dead: Sequence[DeadEntry],
                    applied: int, mark: str, new_mark: str, first_fresh: str, epoch: str
                    ) -> Call:
        """commit.lua's call for the batch, before its ops."""
        k, s = self.keys, self.settings
        args: list[Any] = [GROUP, mark, new_mark, applied, s.index_cap, index_limit(s.index_cap),
                           s.history_ttl * 1000, epoch, len(entry_ids)]
        args += entry_ids
        args.append(first_fresh)
        args += (len(dead), s.dead_letter_cap)
        for entry_id, reason, fields in dead:
            raw = {key.decode("utf-8", "replace"): value.decode("utf-8", "replace")
                   for key, value in fields.items()}
            args += [entry_id, reason, orjson.dumps(raw)]
        return Call([k.stream(p), k.watermark(p), k.counters(p), k.dead(p), k.inflight(p),
                     k.epoch(p)], args)

    def add_ops(self, p: int, fx: Effects, commit: Call, elsewhere: dict[Group, Call] | None,
                new_mark: str, first_fresh: str = "") -> None:
        """The batch's effects as ops, appended to the call of the slot they land in: the
        partition's own (histories, carts), an item shard's (neighbour and cart indexes,
        frequencies, names) or the
        global one. Without ``elsewhere`` (every key reachable from one script) every op goes
        into ``commit``; with it, ``elsewhere`` collects one apply call per other slot."""
        k, s = self.keys, self.settings
        index_prefix, df_key, names_key = self.index_prefixes, self.doc_freq_keys, self.name_keys

        def call_for(group: Group) -> Call:
            if elsewhere is None:
                return commit
            call = elsewhere.get(group)
            if call is None:
                marks = (k.global_marks() if group == GLOBAL
                         else k.item_marks(cast(int, group)))
                call = elsewhere[group] = Call([marks], [p, new_mark, s.index_cap,
                                                         index_limit(s.index_cap),
                                                         s.history_ttl * 1000, first_fresh])
            return call

        call = commit
        for item, old, new in fx.index:
            shard, hexed = shard_hex(item)
            if elsewhere is not None:
                call = call_for(shard)
            call.args += ("X", call.ref(index_prefix[shard] + hexed), old, new)
        # cart indexes: the neighbour index's op, cap and limit (order-free the same way)
        cart_prefix = self.cart_prefixes
        for item, old, new in fx.cart_index:
            shard, hexed = shard_hex(item)
            if elsewhere is not None:
                call = call_for(shard)
            call.args += ("X", call.ref(cart_prefix[shard] + hexed), old, new)
        for session, blob in fx.histories.items():
            commit.args += ("H", commit.ref(k.history(session)), blob)
        for session, blob in fx.carts.items():
            commit.args += ("H", commit.ref(k.cart(session)), blob)
        if fx.arrivals:  # the partition's own slot: committed with the watermark
            commit.args += ("A", commit.ref(k.arrivals(p)), arrivals_kept(s.partitions),
                            len(fx.arrivals))
            for session, arrived in fx.arrivals.items():
                commit.args += (arrived, session)
        counts: dict[int, list[Any]] = {}
        for item, n in fx.doc_freq.items():
            shard, hexed = shard_hex(item)
            fields = counts.get(shard)
            if fields is None:
                fields = counts[shard] = []
            fields += (hexed, n)
        for shard, fields in counts.items():
            call = commit if elsewhere is None else call_for(shard)
            call.args += ("D", call.ref(df_key[shard]), len(fields) // 2)
            call.args += fields
        named = self.named
        for item, name in fx.names.items():
            if item in named:
                continue  # first writer wins: this process wrote or saw it already
            shard, hexed = shard_hex(item)
            if elsewhere is not None:
                call = call_for(shard)
            call.args += ("N", call.ref(names_key[shard]), hexed, name)
        trend = trending(fx.trend, s.trend_half_life)
        if trend or fx.new_sessions:
            call = call_for(GLOBAL)
            if trend:
                call.args += ("T", call.ref(k.trend()), len(trend))
                for pair in trend.items():
                    call.args += pair
            if fx.new_sessions:
                call.args += ("D", call.ref(k.meta()), 1, "sessions", fx.new_sessions)


@lru_cache(maxsize=1 << 16)
def shard_hex(item: bytes) -> tuple[int, str]:
    """An item hash's shard and hex form (cached: popular items recur in every batch)."""
    return shard_of(item), item.hex()
