"""The learned state and its update rule, free of I/O.

State (all of it derived from the event stream, and independent of how sessions interleave):

* per session, its **history**: the last ``history_cap`` events as packed 16-byte entries
  ``item hash (8) | time key (8)``;
* per item, its **neighbour index**: the ``index_cap`` sessions that touched it most recently,
  as sorted 16-byte entries ``time key (8, big-endian) | session hash (8)``; a session's entry
  carries the time of its latest event on the item. Keeping the top ``index_cap`` by
  ``(time, session)`` gives the same set whatever order sessions arrive in, which is what lets
  several workers and crashes end in exactly the state of one clean pass. The worker appends
  in place and trims lazily: a stored index may hold up to ``index_limit(index_cap)`` entries,
  and what counts (what readers and state comparisons use) is its newest ``index_cap``;
* per item, its **document frequency** (sessions that contain it) and its original id;
* **trending**: per item ``log2(sum of weight * 2^(t / half_life))`` over its events, an
  order-free way to keep exponentially decayed popularity without ever overflowing;
* per session, its **cart**: the last ``CART_CAP`` distinct items it added to cart or
  purchased, each with the time it first did while kept (the history's 16-byte entries);
  per item, its **cart index**: the ``index_cap`` sessions that carted it most recently (by
  that first time), entries and trim rule as the neighbour index's (so order-free and
  exactly-once the same way; an entry is never replaced, only added). A session carting an
  item again (the purchase after the add_to_cart) moves it to the cart's end and changes no
  index: no op; the bought-together answer (``service/core/carts.py``) counts each session
  once per item, so repeating events in one session weighs nothing more;
* per partition, its sessions' **arrivals**: when the server accepted each session's first
  event (its stream entry's id, in ms), kept for the newest ``arrivals_kept`` sessions. Event
  timestamps are the client's (capped at arrival plus the allowed skew, freely backdated);
  arrivals are what self-tuning orders sessions by (``service/offline/livetune.py``). A
  session's arrival is set when it starts a history (no kept history before its event), so it
  is a pure function of the stream, and the newest ``arrivals_kept`` by (arrival, session) is
  the same set whatever the batches (an arrival only ever moves later, as an index entry).

The rule reads a session's history, which only the worker holding the session's partition
writes, and events of a partition are applied in stream order, so every effect is a pure
function of the events. ``apply_events`` is used by the worker, and by the bulk loader.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from service.core.layout import (
    history_blob,
    index_entry,
    item_hash,
    session_hash,
    split_entries,
    time_key,
)

LEARNED_TYPES = ("view", "click", "add_to_cart", "purchase")
CART_TYPES = frozenset(("add_to_cart", "purchase"))
"""The events that also reach the session's cart and the item's cart index."""
CART_CAP = 20
"""Most distinct items a session's cart keeps (the newest): what one session, honest or
crafted, can add to the bought-together evidence at most."""
IMPRESSION = "impression"
EVENT_TYPES = (*LEARNED_TYPES, IMPRESSION)
"""An impression says an item was shown in an answer's list: not interest, so it never
reaches the model (the live session, the histories, the indexes, trending); it is counted
for its answer's variant (``service/core/feedback.py``)."""
TYPE_RATING = {"view": 1.0, "click": 3.0, "add_to_cart": 4.0, "purchase": 5.0,
               IMPRESSION: 0.0}
"""Rating implied by an event type when the event carries none (the SDK's defaults too)."""

def no_later_than(ev: Event, ceiling: float) -> Event:
    """``ev`` with its time capped at ``ceiling`` (its arrival plus the allowed clock skew): a
    producer writing to the stream directly is not validated by the API, and an event dated
    in the future would outrank every real one in trending and in the neighbour indexes until
    the clock caught up. Capped at the arrival time of its own entry, it stays a pure
    function of the stream."""
    return ev if ev[2] <= ceiling else ev._replace(timestamp=ceiling)


class Event(NamedTuple):
    """A named tuple: the worker decodes one per stream entry, and a frozen dataclass'
    constructor costs several times more."""

    session_id: str
    item_id: str
    timestamp: float
    type: str = "view"
    rating: float | None = None
    recommendation_id: str | None = None  # the answer it acts on: attributed to its variant

    @property
    def effective_rating(self) -> float:
        return TYPE_RATING[self.type] if self.rating is None else self.rating


IndexChange = tuple[bytes, bytes, bytes]
"""``(item, old entry to remove or b"", new entry)``: a plain tuple, one is built per event
(a named tuple's constructor costs far more)."""


ARRIVALS_KEPT = 500_000
"""Sessions whose arrival is kept, newest first, over all partitions: a tuning run's holdout
reaches back a day of arrival windows at most (``service/core/modelparams.py``), and this
bounds the arrivals' memory (a sorted-set entry each, about a hundred bytes)."""


def arrivals_kept(partitions: int) -> int:
    """The arrivals one partition keeps (its share of ``ARRIVALS_KEPT``)."""
    return -(-ARRIVALS_KEPT // partitions)


def arrival_of(entry_id: str) -> int:
    """When the server accepted a stream entry: its id's milliseconds (Redis' clock)."""
    return int(entry_id.partition("-")[0])


@dataclass
class Effects:
    """Everything one batch of events changes, ready to be committed in one step."""

    histories: dict[bytes, bytes] = field(default_factory=dict)
    index: list[IndexChange] = field(default_factory=list)
    doc_freq: dict[bytes, int] = field(default_factory=dict)
    names: dict[bytes, str] = field(default_factory=dict)
    trend: list[tuple[str, float, float]] = field(default_factory=list)
    applied: int = 0
    arrivals: dict[bytes, int] = field(default_factory=dict)
    """Sessions without a kept history before this batch, and when each arrived (ms)."""
    carts: dict[bytes, bytes] = field(default_factory=dict)
    """The new cart of each session with cart events in the batch."""
    cart_index: list[IndexChange] = field(default_factory=list)
    """Cart index changes, as ``index``'s."""

    @property
    def new_sessions(self) -> int:
        """Sessions that start a history in this batch (idf's N counts them)."""
        return len(self.arrivals)


def apply_events(histories: dict[bytes, bytes], events: Iterable[Event], history_cap: int,
                 arrived: Callable[[int], int] | None = None,
                 carts: dict[bytes, bytes] | None = None) -> Effects:
    """Fold events (in stream order) into effects, given the sessions' current histories.

    ``histories`` maps session hash to its stored blob (missing means new session); it is not
    modified. Per session, the item's index entry moves to the latest time the session touched
    it; an item new to the session's kept history counts once toward its document frequency.
    ``arrived(n)``: when ``events[n]`` reached the server, in ms (the worker: its stream
    entry's id); without it, the event's own time (a loaded log's clock is its operator's).
    ``carts``: the stored carts of the sessions with cart events (missing: none yet); the
    worker reads them with the histories, at the same fence.
    (The loop is the worker's and the loader's hottest: locals bound once, plain tuples.)
    """
    fx = Effects()
    index, doc_freq, names, trend, arrivals = fx.index, fx.doc_freq, fx.names, fx.trend, \
        fx.arrivals
    # per session: its kept history, and per item the latest time in it (so an event costs a
    # dict lookup, not a scan of the history)
    current: dict[bytes, tuple[list[tuple[bytes, int]], dict[bytes, int]]] = {}
    # per session with cart events: its cart, item -> latest time, oldest first
    in_cart: dict[bytes, dict[bytes, int]] = {}
    stored_carts = carts or {}
    cart_index = fx.cart_index
    applied = 0
    for n, ev in enumerate(events):
        if ev[3] == IMPRESSION:
            continue
        session_id, item_id, ts = ev[0], ev[1], ev[2]
        s = session_hash(session_id)
        tkey = time_key(ts)
        state = current.get(s)
        if state is None:
            kept = split_entries(histories.get(s, b""))
            state = current[s] = (kept, _latest(kept))
            if not kept:
                arrivals[s] = arrived(n) if arrived is not None else tkey // 1000
        hist, latest = state
        i = item_hash(item_id)
        previous = latest.get(i)
        if previous is None:
            doc_freq[i] = doc_freq.get(i, 0) + 1
            index.append((i, b"", index_entry(tkey, s)))
            latest[i] = tkey
        elif tkey > previous:
            index.append((i, index_entry(previous, s), index_entry(tkey, s)))
            latest[i] = tkey
        hist.append((i, tkey))
        if len(hist) > history_cap:
            del hist[: len(hist) - history_cap]
            latest.clear()
            latest.update(_latest(hist))
        if i not in names:
            names[i] = item_id
        trend.append((item_id, ts, 1.0))  # an interaction of any type counts once
        applied += 1
        if ev[3] in CART_TYPES:
            cart = in_cart.get(s)
            if cart is None:
                cart = in_cart[s] = dict(split_entries(stored_carts.get(s, b"")))
            _add_to_cart(cart, i, tkey, s, cart_index)
    fx.applied = applied
    for s, (hist, _) in current.items():
        fx.histories[s] = history_blob(hist)
    for s, cart in in_cart.items():
        fx.carts[s] = history_blob(cart.items())
    return fx


def _add_to_cart(cart: dict[bytes, int], item: bytes, tkey: int, session: bytes,
                 cart_index: list[IndexChange]) -> None:
    """One cart event: the item moves to the cart's end (the cart keeps its newest
    ``CART_CAP`` distinct items) with the time it was first carted while kept; only an item new
    to the cart adds the session's entry to its cart index (a purchase after its add_to_cart
    costs the commit nothing)."""
    previous = cart.pop(item, None)
    if previous is None:
        cart_index.append((item, b"", index_entry(tkey, session)))
    else:
        tkey = previous
    cart[item] = tkey
    if len(cart) > CART_CAP:
        del cart[next(iter(cart))]


def _latest(history: list[tuple[bytes, int]]) -> dict[bytes, int]:
    latest: dict[bytes, int] = {}
    for item, t in history:
        if t > latest.get(item, -1):
            latest[item] = t
    return latest


def trending(trend: Iterable[tuple[str, float, float]], half_life: float) -> dict[str, float]:
    """Per item ``log2(sum of weight * 2^(ts / half_life))``, computed stably in log space:
    how a batch's (worker) or a whole log's (loader) events reach the trending zset, one value
    per item, merged with the stored one by the same log-sum."""
    by_item: dict[str, list[float]] = {}
    for member, ts, weight in trend:
        if weight > 0:
            by_item.setdefault(member, []).append(ts / half_life + math.log2(weight))
    out = {}
    for member, logs in by_item.items():
        top = max(logs)
        out[member] = top if len(logs) == 1 else top + math.log2(
            math.fsum(2.0 ** (x - top) for x in logs))
    return out


def sessions_of(events: Sequence[Event]) -> list[bytes]:
    """Distinct session hashes of a batch, in first-seen order (whose histories to read)."""
    return list(dict.fromkeys(session_hash(ev.session_id) for ev in events))


def carting_sessions(events: Sequence[Event]) -> list[bytes]:
    """Distinct session hashes of a batch's cart events, first-seen order (whose carts to
    read)."""
    return list(dict.fromkeys(session_hash(ev.session_id) for ev in events
                              if ev.type in CART_TYPES))
