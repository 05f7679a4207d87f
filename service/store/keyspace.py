"""The Redis key layout: the only module that spells a key.

Why it looks like this
----------------------
* Ids are opaque. Item and session ids are hashed (BLAKE2b, 8 bytes, one personalisation per
  kind) and keys carry the hash in hex, so any Unicode id — braces, colons, spaces, NUL, 10 KB —
  has a fixed-size key that can neither collide with nor reach another key. The original item
  id is kept as a hash field value (``names``) and as the trending member.
* Every key starts with ``<ns>:{<tag>}`` and the tag is ours, never an id: Redis Cluster hashes
  the first ``{...}``, so an id containing braces cannot move a key to another slot.
* Two families of tags. ``{pN}``: partition N of the event stream, and with it every key of the
  sessions hashed to that partition (their live interactions and learned histories), so the
  ingest script, the worker's read of a batch's histories and its commit (effects, watermark and
  XACK) each stay in one slot. ``{iN}``: item shard N of ITEM_SHARDS, holding the per-item
  neighbour and cart indexes, names and document frequencies. ``{g}``: the few global keys.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service.core.layout import ITEM_SHARDS, partition_of, shard_of

HISTORY = ":h:"
"""Marks a learned session history key (``history`` and the vectorised ``histories``)."""
CART = ":ch:"
"""Marks a session's cart key (``cart`` and ``carts``)."""

GROUP = "workers"
"""The consumer group every worker reads each partition stream through."""


@dataclass(frozen=True)
class Keys:
    """Builds every key of one namespace. Instances are cheap; build them once per process."""

    ns: str
    partitions: int

    # --- partition keys -------------------------------------------------------------------
    def _p(self, p: int) -> str:
        return f"{self.ns}:{{p{p}}}"

    def stream(self, p: int) -> str:
        return self._p(p) + ":events"

    def dead(self, p: int) -> str:
        return self._p(p) + ":dead"

    def watermark(self, p: int) -> str:
        """Id of the last stream entry whose effects are committed (the 'already applied' mark)."""
        return self._p(p) + ":applied"

    def inflight(self, p: int) -> str:
        """Redis Cluster only: the last id of the batch whose effects are being applied slot by
        slot; until the watermark reaches it, batches end at or before it (see the worker)."""
        return self._p(p) + ":inflight"

    def journal(self, p: int) -> str:
        """Redis Cluster only: hash token -> event batch spanning several partitions, written
        before the per-partition appends and deleted after them; workers replay leftovers."""
        return self._p(p) + ":journal"

    def batch_tokens(self, p: int) -> str:
        """Zset token -> time of the journalled batches already appended to this partition."""
        return self._p(p) + ":tokens"

    def attempts(self, p: int) -> str:
        """Hash entry id -> times a worker started applying it alone (a redelivered entry):
        what ``max_deliveries`` counts. Cleared when the entry is applied or dead-lettered."""
        return self._p(p) + ":attempts"

    def epoch(self, p: int) -> str:
        """Bumped by the admin operations that rewrite the partition's learned histories: a
        worker batch that read them before commits only if it has not moved."""
        return self._p(p) + ":epoch"

    def idempotency(self, p: int, digest: str) -> str:
        """An ``Idempotency-Key``'s first answer (expires after a day), in the partition of the
        batch's first event, so the ingest script checks and records it in one step."""
        return f"{self._p(p)}:idem:{digest}"

    def lease(self, p: int) -> str:
        return self._p(p) + ":lease"

    def counters(self, p: int) -> str:
        return self._p(p) + ":counters"

    def answer(self, p: int, nonce: bytes) -> str:
        """What an answer given to a session of partition ``p`` listed, for counting its
        feedback (``core/feedback.py``: ``answer_record``): beside the session's events, so
        the worker that commits them counts them against it in the same script."""
        return f"{self._p(p)}:ans:{nonce.hex()}"

    def answer_budget(self, p: int, hour: int) -> str:
        """Bytes of answer records the partition took in one hour (``lua/answer.lua``)."""
        return f"{self._p(p)}:ans-budget:{hour}"

    def answers_flooded(self, p: int, hour: int) -> str:
        """Set when the partition's answers of that hour overflowed its budget: the worker
        counts none of them (``core/feedback.py``: ``tally``)."""
        return f"{self._p(p)}:ans-flooded:{hour}"

    def client_answers(self, p: int, hour: int, client: str) -> str:
        """Answers recorded for one client address (hashed) in the partition in one hour."""
        digest = hashlib.blake2b(client.encode("utf-8", "surrogatepass"),
                                 digest_size=8).hexdigest()
        return f"{self._p(p)}:ans-client:{hour}:{digest}"

    def live_registry(self, p: int) -> str:
        """Zset session hash -> last activity (ms): counts live sessions without SCAN."""
        return self._p(p) + ":live"

    def live_items(self, session: bytes) -> str:
        return f"{self._p(partition_of(session, self.partitions))}:lv:{session.hex()}"

    def live_ratings(self, session: bytes) -> str:
        return f"{self._p(partition_of(session, self.partitions))}:lr:{session.hex()}"

    def history(self, session: bytes) -> str:
        return f"{self._p(partition_of(session, self.partitions))}{HISTORY}{session.hex()}"

    def cart(self, session: bytes) -> str:
        """A session's cart: its last distinct add_to_cart/purchase items
        (``core/model.py``), beside its history (the worker reads both at its fence)."""
        return f"{self._p(partition_of(session, self.partitions))}{CART}{session.hex()}"

    def carts(self, sessions: npt.NDArray[np.uint64]) -> list[str]:
        """``cart`` for many session hashes (as little-endian u64) at once."""
        return _by_hash(sessions, [self._p(p) + CART for p in range(self.partitions)])

    def arrivals(self, p: int) -> str:
        """Zset session hash (8 bytes) -> when its first event reached the server (ms): the
        partition's newest ``arrivals_kept`` sessions, what self-tuning orders by."""
        return self._p(p) + ":arrivals"

    def histories(self, sessions: npt.NDArray[np.uint64]) -> list[str]:
        """``history`` for many session hashes (as little-endian u64) at once, vectorised: a
        request reads a couple of hundred neighbours' histories."""
        return _by_hash(sessions, self.history_prefixes())

    def history_prefixes(self) -> list[str]:
        """Per partition, what precedes a session's hex hash in its history key."""
        return [self._p(p) + HISTORY for p in range(self.partitions)]

    def partition_keys(self) -> list[tuple[int, str]]:
        return [(p, self.stream(p)) for p in range(self.partitions)]

    # --- item keys ------------------------------------------------------------------------
    def _i(self, shard: int) -> str:
        return f"{self.ns}:{{i{shard}}}"

    def index(self, item: bytes) -> str:
        return self.index_prefix(shard_of(item)) + item.hex()

    def index_prefix(self, shard: int) -> str:
        """The indexes of shard ``shard`` are this plus the item hash in hex."""
        return f"{self._i(shard)}:x:"

    def index_prefixes(self) -> list[str]:
        """``index_prefix`` of every shard, by shard."""
        return [self.index_prefix(shard) for shard in range(ITEM_SHARDS)]

    def indexes(self, items: npt.NDArray[np.uint64]) -> list[str]:
        """``index`` for many item hashes (as little-endian u64) at once."""
        return _by_hash(items, self.index_prefixes())

    def cart_index_prefix(self, shard: int) -> str:
        """An item's cart index (the sessions that carted it most recently, entries as the
        neighbour index's) is this plus the item hash in hex."""
        return f"{self._i(shard)}:cx:"

    def cart_index(self, item: bytes) -> str:
        return self.cart_index_prefix(shard_of(item)) + item.hex()

    def cart_indexes(self, items: npt.NDArray[np.uint64]) -> list[str]:
        """``cart_index`` for many item hashes (as little-endian u64) at once."""
        return _by_hash(items, [self.cart_index_prefix(n) for n in range(ITEM_SHARDS)])

    def names(self, shard: int) -> str:
        return self._i(shard) + ":names"

    def catalog(self, shard: int) -> str:
        """Hash item hash (hex) -> the item's catalogue record: the items the catalogue lists,
        which are all that ``catalog_only`` mode learns."""
        return self._i(shard) + ":catalog"

    def catalog_seen(self, shard: int) -> str:
        """Hash item hash (hex) -> when its catalogue record first appeared (Unix seconds, the
        writing serve process' clock): set by the first write, kept when a record replaces
        the item's earlier one, removed with the record. The same slot as ``catalog``."""
        return self._i(shard) + ":catalog:seen"

    def doc_freq(self, shard: int) -> str:
        return self._i(shard) + ":df"

    def item_marks(self, shard: int) -> str:
        """Redis Cluster only: hash partition -> id of the last entry whose effects on this
        shard's slot are applied (the per-slot 'already applied' mark)."""
        return self._i(shard) + ":applied"

    # --- global keys ----------------------------------------------------------------------
    def trend(self) -> str:
        return f"{self.ns}:{{g}}:trend"

    def workers(self) -> str:
        """Zset worker id -> last heartbeat (ms): how many workers share the partitions."""
        return f"{self.ns}:{{g}}:workers"

    def hidden(self) -> str:
        """Set of item hashes (hex) never to recommend."""
        return f"{self.ns}:{{g}}:hidden"

    def unavailable(self) -> str:
        """Set of item hashes (hex) whose catalogue record says ``"available": false``: not
        recommended while it does (the same slot as ``hidden``: both read in one command)."""
        return f"{self.ns}:{{g}}:unavailable"

    def catalog_version(self) -> str:
        """Counter of catalogue changes (``lua/catalog.lua``)."""
        return f"{self.ns}:{{g}}:catalog:version"

    def catalog_changes(self) -> str:
        """Stream of catalogue changes, each the hashes of the items a write changed and the
        version it made: what a serve process' copy of the catalogue follows."""
        return f"{self.ns}:{{g}}:catalog:changes"

    def model(self) -> str:
        """Hash: the shared scoring parameters, their version and pins
        (``core/modelparams.py``, written by ``lua/model.lua``)."""
        return f"{self.ns}:{{g}}:model"

    def tune_started(self) -> str:
        """JSON: the last tuning run to start (its id, trigger, start, sessions learned); the
        model record keeps the last one to finish."""
        return f"{self.ns}:{{g}}:tune:started"

    def tune_lease(self) -> str:
        """The tuning lease: the running run's id while one runs (one at a time)."""
        return f"{self.ns}:{{g}}:tune:lease"

    def sequence(self) -> str:
        """Hash: the sequence model (``core/sequence.py``): ``version`` (a counter serve
        processes poll), ``model`` (its stored form), ``sums`` (its trainer's optimiser
        state), ``facts`` (JSON: what its run says of it, public) and ``arrived_until`` (the
        newest arrival its run read, ms), written as one step; ``started`` (when a worker
        last started a run)."""
        return f"{self.ns}:{{g}}:sequence"

    def sequence_lease(self) -> str:
        """The sequence model's lease: the id of the run training it (one at a time)."""
        return f"{self.ns}:{{g}}:sequence:lease"

    def feedback_key(self) -> str:
        """The key recommendation ids are signed with (``core/feedback.py``): written once by
        whichever process needs it first, read by every serve process and worker."""
        return f"{self.ns}:{{g}}:feedback:key"

    def experiment(self) -> str:
        """JSON: the running experiment (absent: none runs)."""
        return f"{self.ns}:{{g}}:experiment"

    def experiments(self) -> str:
        """Hash name -> JSON: every experiment started, running or ended, for its report."""
        return f"{self.ns}:{{g}}:experiments"

    def experiment_serial(self) -> str:
        """Counter: each experiment started takes the next serial (what ids carry)."""
        return f"{self.ns}:{{g}}:experiment:serial"

    def experiment_ends(self) -> str:
        """Hash serial -> ``0`` while the experiment runs, its end (Unix ms) after: whether an
        attributed event arrived while its experiment ran (``lua/experiment.lua`` writes it
        with the start and the end)."""
        return f"{self.ns}:{{g}}:experiment:ends"

    def experiment_answers(self) -> str:
        """Hash ``x:<serial>:<variant>:answers`` -> answers given (serve processes add to it
        every second)."""
        return f"{self.ns}:{{g}}:experiment:answers"

    def experiment_sessions(self, serial: int, variant: int) -> str:
        """HyperLogLog of the sessions a variant answered (distinct sessions in bounded
        memory, whatever session ids clients invent)."""
        return f"{self.ns}:{{g}}:experiment:{serial}:{variant}:sessions"

    def placements(self) -> str:
        """Hash name -> JSON: the placements (``core/placements.py``, ``lua/placement.lua``)."""
        return f"{self.ns}:{{g}}:placements"

    def placement_serials(self) -> str:
        """Hash name -> the serial a placement was created with (what its counts are kept
        under: a placement deleted and created again counts afresh)."""
        return f"{self.ns}:{{g}}:placements:serials"

    def placement_serial(self) -> str:
        """Counter: each placement created takes the next serial."""
        return f"{self.ns}:{{g}}:placements:serial"

    def placements_version(self) -> str:
        """Counter: each change of a placement takes the next (what serve processes poll)."""
        return f"{self.ns}:{{g}}:placements:version"

    def placement_answers(self) -> str:
        """Hash ``pl:<code>:answers`` -> answers given for the placement (serve processes add
        to it every second)."""
        return f"{self.ns}:{{g}}:placement:answers"

    def minute(self, minute: int) -> str:
        """Hash: one minute's counts and histograms for the dashboard
        (``core/series.py``); expires after a day."""
        return f"{self.ns}:{{g}}:minute:{minute}"

    def rate_bucket(self, client: str) -> str:
        """A client's token bucket; the client identity is hashed into its own tag."""
        digest = hashlib.blake2b(client.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
        return f"{self.ns}:{{r{digest}}}:bucket"

    def meta(self) -> str:
        return f"{self.ns}:{{g}}:meta"

    def global_marks(self) -> str:
        """``item_marks`` for the global slot (trending, session count)."""
        return f"{self.ns}:{{g}}:applied"

    def consumer(self, p: int) -> str:
        """Consumer name for partition p: whoever holds the lease reads as this consumer, so it
        inherits the previous holder's pending entries without a claim."""
        return f"partition-{p}"


def _by_hash(hashes: npt.NDArray[np.uint64], prefixes: list[str]) -> list[str]:
    """Keys named ``prefixes[h % len(prefixes)] + hex(h)``: the shape of history and index
    keys (the kernel's ``mget`` packs the same keys without building these strings)."""
    hexes = np.ascontiguousarray(hashes, dtype="<u8").tobytes().hex()
    parts = (hashes % np.uint64(len(prefixes))).tolist()
    return [prefixes[p] + hexes[16 * n:16 * n + 16] for n, p in enumerate(parts)]
