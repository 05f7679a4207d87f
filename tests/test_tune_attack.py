"""Crafted sessions sent with the publishable key decide no promotion (issue 23, point 4).

On a shop's click log that the default parameters fit, an attacker sends, through POST
/events, pairs of sessions dated a day back (Q then P, P then D) and as many new sessions
(P then Q): on those, the best parameters are no sequence weight and no repeat weight, the
worst for the shop's own traffic. A run on the attacked state must promote what a run on
the same log without the attack promotes (here nothing), and leave the accuracy on the shop's
next sessions as it was. Before arrivals, the crafted sessions were the newest by their
timestamps, so the whole attack was held out and a run promoted what it asked for.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service.answers.recommender import Recommender
from service.api.app import create_app
from service.core.model import Event
from service.core.scoring import Params
from service.offline.livetune import tune_live
from service.settings import Settings
from service.store.state import Store
from tests.conftest import Client
from tests.helpers import arrive, drain

HOUR = 3600.0
T0 = 472_222 * HOUR  # November 2023, the start of an hour
AISLES, PER_AISLE = 100, 30
PUBLIC = "pk_test_attack"


def shop_log(rng: np.random.Generator, sessions: int, start: float, span: float
             ) -> list[Event]:
    """Visitors walking a shop's aisles: a session enters an aisle at one of its first items
    and clicks on: the next item or the one after, the same one again, back to one it saw,
    now and then into another aisle. Short sessions whose next click follows the last one or
    repeats one seen: the traffic the defaults were chosen for (a run on it promotes nothing:
    no candidate beats them by more than chance)."""
    events = []
    popular = 1.0 / np.arange(1, AISLES + 1)
    popular /= popular.sum()
    for n, t in enumerate(np.sort(rng.uniform(start, start + span, sessions)).tolist()):
        aisle = int(rng.choice(AISLES, p=popular))
        at = int(rng.integers(0, 5))
        seen: list[tuple[int, int]] = []
        for k in range(2 + int(rng.geometric(1 / 3))):
            events.append(Event(f"v{n}", f"p{aisle * PER_AISLE + at}", t + 30 * k))
            seen.append((aisle, at))
            step = rng.random()
            if step < 0.3:
                at = min(at + 1, PER_AISLE - 1)
            elif step < 0.4:
                at = min(at + 2, PER_AISLE - 1)
            elif step < 0.65:
                pass  # the same item again
            elif step < 0.85 and len(seen) > 1:
                aisle, at = seen[int(rng.integers(0, len(seen) - 1))]
            elif step < 0.95:
                at = max(at - 1, 0)
            else:
                aisle, at = int(rng.integers(0, AISLES)), int(rng.integers(0, PER_AISLE))
    return events


def crafted(rng: np.random.Generator, triples: int, now: float) -> list[dict[str, Any]]:
    """The attack of the issue, for ``triples`` distinct items Q, P, D of the shop: Q then P
    and P then D dated a day back, then P then Q now."""
    chosen = rng.choice(AISLES * PER_AISLE, size=(triples, 3), replace=False).tolist()
    pairs, new = [], []
    for n, (q, p, d) in enumerate(chosen):
        for sid, first, second in ((f"qp{n}", q, p), (f"pd{n}", p, d)):
            pairs += [{"session_id": sid, "item_id": f"p{first}", "timestamp": now - 86_400 + n},
                      {"session_id": sid, "item_id": f"p{second}",
                       "timestamp": now - 86_400 + n + 1}]
        new += [{"session_id": f"new{n}", "item_id": f"p{p}", "timestamp": now},
                {"session_id": f"new{n}", "item_id": f"p{q}", "timestamp": now + 1}]
    return pairs + new


async def accuracy(store: Store, settings: Settings, test: list[Event]) -> tuple[float, float]:
    """HR@20 and MRR@20 of the parameters in force on every prefix of the test sessions
    (seen items may come back: ``sessionrec eval``'s static protocol)."""
    recommender = Recommender(store, settings)
    recommender.use(await store.model.record())
    sessions: dict[str, list[Event]] = {}
    for ev in test:
        sessions.setdefault(ev.session_id, []).append(ev)
    ranks = []
    for events in sessions.values():
        for cut in range(1, len(events)):
            got = await recommender.recommend(
                [(ev.item_id, ev.timestamp, 1.0) for ev in events[:cut]], 20, True)
            ids = [r["id"] for r in got.rows()]
            target = events[cut].item_id
            ranks.append(ids.index(target) + 1 if target in ids else 0)
    r = np.asarray(ranks)
    return float((r > 0).mean()), float(np.where(r > 0, 1.0 / np.maximum(r, 1), 0.0).mean())


async def test_crafted_sessions_change_neither_the_parameters_nor_the_accuracy(
        aiohttp_client: Any, settings: Settings) -> None:
    rng = np.random.default_rng(23)
    log = shop_log(rng, 900, T0, 48 * HOUR)  # two days of a small shop's traffic
    cut = T0 + 42 * HOUR  # its last six hours' sessions: what the model is judged on
    starts: dict[str, float] = {}
    for ev in log:
        starts.setdefault(ev.session_id, ev.timestamp)
    train = [ev for ev in log if starts[ev.session_id] < cut]
    test = [ev for ev in log if starts[ev.session_id] >= cut]
    clean = settings.replace(namespace=settings.namespace + "-clean")
    attacked = settings.replace(publishable_keys=PUBLIC)
    for each in (clean, attacked):
        await arrive(each, train)
    public: Client = await aiohttp_client(create_app(attacked), headers={"X-API-Key": PUBLIC})
    events = crafted(rng, 400, T0 + 1000 * HOUR)
    for at in range(0, len(events), 1000):
        assert (await public.post("/events", json={"events": events[at:at + 1000]})).status \
            == 202
    await drain(attacked)

    runs, before, after, params = {}, {}, {}, {}
    for each in (clean, attacked):
        store = Store(each)
        try:
            before[each.namespace] = await accuracy(store, each, test)
            runs[each.namespace] = await tune_live(store, Params.from_settings(each),
                                                   trigger="auto", rounds=1, seed=5)
            after[each.namespace] = await accuracy(store, each, test)
            params[each.namespace] = (await store.model.record()).params(
                Params.from_settings(each))
        finally:
            await store.close()
    honest, hostile = runs[clean.namespace], runs[attacked.namespace]
    assert honest["promoted"] is False  # the defaults fit this traffic
    assert hostile["promoted"] is False, hostile
    assert params[attacked.namespace] == params[clean.namespace] == Params.from_settings(clean)
    assert after[attacked.namespace] == before[attacked.namespace]
    # and the crafted sessions, as neighbours, barely move the shop's accuracy
    assert np.allclose(after[attacked.namespace], after[clean.namespace], atol=0.01)
