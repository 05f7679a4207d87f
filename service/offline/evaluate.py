"""``sessionrec eval``: next-item accuracy of the served model and of baselines, one harness.

The served model is scored through the real serving path: its state is built by the bulk
loader (proven equal to streaming through the workers) in a real Redis, and every prediction
is a POST /iid_recommend in the seed's format to the real app (``--no-http`` calls the same
``Recommender.recommend`` directly, for fast tuning). Baselines run in-process on the same split.

Protocols
* static: learn the training log; for every test session (i1..in) and t = 1..n-1, predict
  i(t+1) from (i1..it) with ``recommend_seen`` true (the SR-GNN / GCE-GNN protocol).
* streaming: test events arrive in time order; before each is learned, predict it from its
  session's earlier events (served model: GET /sessions/{id}/recommendations over the live
  session, while a worker applies the stream in the background, as in production).
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import numpy as np
import numpy.typing as npt
from aiohttp import web

from service.answers.recommender import Asker, Recommender
from service.api.app import create_app
from service.core.model import Event
from service.core.modelparams import MODEL_POLL
from service.failures import Refused
from service.offline.baselines import BASELINES, Baseline
from service.offline.clicklog import ClickLog
from service.offline.loader import load
from service.offline.progress import bar, counted
from service.offline.redisproc import free_port
from service.settings import Settings
from service.store import sequence
from service.store.state import Store
from workers.consumer import Worker

CUTOFFS = tuple(range(1, 21))


@dataclass(frozen=True, slots=True)
class Case:
    session: str
    prefix: list[str]
    times: list[float]
    target: str


def static_cases(test: ClickLog, limit: int | None = None) -> Iterator[Case]:
    bounds = test.session_bounds()
    items, times, sessions = test.items.tolist(), test.times.tolist(), test.sessions.tolist()
    produced = 0
    for start, end in itertools.pairwise(bounds.tolist()):
        for t in range(start + 1, end):
            yield Case(sessions[start], items[start:t], times[start:t], items[t])
            produced += 1
            if limit is not None and produced >= limit:
                return


@dataclass
class Result:
    name: str
    ranks: list[int] = field(default_factory=list)  # 1-based; 0 = not in the top k
    latencies: list[float] = field(default_factory=list)
    recommended: Counter[str] = field(default_factory=Counter)

    def add(self, predicted: Sequence[str], target: str, seconds: float) -> None:
        try:
            self.ranks.append(predicted.index(target) + 1)
        except ValueError:
            self.ranks.append(0)
        self.latencies.append(seconds)
        self.recommended.update(predicted)

    def metrics(self, popularity: Counter[str], n_items: int, k: int = 20) -> dict[str, float]:
        r = np.asarray(self.ranks)
        hit = (r > 0) & (r <= k)
        top = max(popularity.values()) if popularity else 1
        total = sum(self.recommended.values()) or 1
        pop_bias = sum(popularity.get(i, 0) / top * c for i, c in self.recommended.items())
        lat = np.asarray(self.latencies) * 1000
        return {
            f"HR@{k}": float(hit.mean()),
            f"MRR@{k}": float(np.where(hit, 1.0 / np.maximum(r, 1), 0.0).mean()),
            f"NDCG@{k}": float(np.where(hit, 1.0 / np.log2(np.maximum(r, 1) + 1.0), 0.0).mean()),
            "coverage": len(self.recommended) / max(n_items, 1),
            "popularity": pop_bias / total,
            "p50 ms": float(np.percentile(lat, 50)),
            "p99 ms": float(np.percentile(lat, 99)),
        }

    def curve(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        r = np.asarray(self.ranks)
        hr = np.array([((r > 0) & (r <= k)).mean() for k in CUTOFFS])
        mrr = np.array([np.where((r > 0) & (r <= k), 1.0 / np.maximum(r, 1), 0).mean()
                        for k in CUTOFFS])
        return hr, mrr


class Model(Protocol):
    name: str

    async def learn_train(self, train: ClickLog) -> None: ...

    async def predict(self, case: Case, k: int) -> list[str]: ...

    async def observe(self, event: Event) -> None: ...

    async def predict_live(self, case: Case, k: int) -> list[str]: ...

    async def close(self) -> None: ...


class BaselineModel:
    def __init__(self, baseline: Baseline) -> None:
        self.baseline = baseline
        self.name = baseline.name

    async def learn_train(self, train: ClickLog) -> None:
        for s, i in zip(train.sessions.tolist(), train.items.tolist(), strict=True):
            self.baseline.learn(s, i)

    async def predict(self, case: Case, k: int) -> list[str]:
        return self.baseline.predict(case.prefix, k)

    async def observe(self, event: Event) -> None:
        self.baseline.learn(event.session_id, event.item_id)

    async def predict_live(self, case: Case, k: int) -> list[str]:
        return self.baseline.predict(case.prefix, k)

    async def close(self) -> None:
        return None


class ServedModel:
    """sessionrec itself, in a real Redis, asked through the real app (or its Store)."""

    name = "sessionrec"

    def __init__(self, settings: Settings, http: bool = True) -> None:
        self.settings = settings
        self.http = http
        self.store = Store(settings)
        self.recommender = Recommender(self.store, settings)
        self.runner: web.AppRunner | None = None
        self.session: aiohttp.ClientSession | None = None
        self.base = ""
        self.worker: Worker | None = None
        self.worker_task: asyncio.Task[None] | None = None

    async def learn_train(self, train: ClickLog) -> None:
        await self.store.prepare()
        await load(self.store, train.events())
        if self.http:
            port = free_port()
            self.runner = web.AppRunner(create_app(self.settings, self.store),
                                        access_log=None)
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", port).start()
            self.base = f"http://127.0.0.1:{port}"
            self.session = aiohttp.ClientSession()

    async def predict(self, case: Case, k: int) -> list[str]:
        interactions = {item: {"timestamp": ts} for item, ts in
                        zip(case.prefix, case.times, strict=True)}
        if self.session is not None:
            body = {"user_interactions": interactions, "k": k, "recommend_seen": True}
            async with self.session.post(self.base + "/iid_recommend", json=body) as resp:
                answer = await resp.json()
                assert resp.status == 200, answer
            return [r["id"] for r in answer["recommendations"]]
        got = await self.recommender.recommend(
            [(i, v["timestamp"], 1.0) for i, v in interactions.items()], k, True)
        return [r["id"] for r in got.rows()]

    async def observe(self, event: Event) -> None:
        if self.worker is None:
            self.worker = Worker(self.settings, worker_id="eval")
            self.worker_task = asyncio.create_task(self.worker.run())
        await self.store.ingestion.ingest([event])

    async def predict_live(self, case: Case, k: int) -> list[str]:
        if self.session is not None:
            url = f"{self.base}/sessions/{_quote(case.session)}/recommendations?k={k}" \
                  "&recommend_seen=true"
            async with self.session.get(url) as resp:
                answer = await resp.json()
                assert resp.status == 200, answer
            return [r["id"] for r in answer["recommendations"]]
        live = await self.store.ingestion.live_session(case.session)
        got = await self.recommender.recommend(
            [(x.item_id, x.timestamp, x.rating) for x in live], k, True, Asker(case.session))
        return [r["id"] for r in got.rows()]

    async def close(self) -> None:
        if self.worker is not None and self.worker_task is not None:
            self.worker.stop()
            await self.worker_task
            await self.worker.redis.aclose()
        if self.session is not None:
            await self.session.close()
        if self.runner is not None:
            await self.runner.cleanup()
        await self.store.close()


class SelfTunedModel(ServedModel):
    """sessionrec as a new user runs it: the training log loaded (``sessionrec load``, the
    way to bring a shop's history in), the sequence model's first run (what a worker starts
    once sessions arrived) waited for, one tuning run started with POST /admin/tune and
    followed with GET /model to its end, then every prediction with POST /iid_recommend.
    (A log sent with POST /events arrives within minutes, one client's burst: a run would
    hold it out as such and promote nothing. Loaded, its sessions arrived when its clock
    says, as they did in the shop.)"""

    name = "sessionrec (self-tuned)"
    SECRET = "sk_eval_self_tune"

    def __init__(self, settings: Settings) -> None:
        # the run this protocol starts is the only one: no automatic run on half the log
        super().__init__(settings.replace(secret_keys=self.SECRET, auto_tune=False), True)
        self.run: dict[str, Any] | None = None

    async def learn_train(self, train: ClickLog) -> None:
        await self.store.prepare()
        await load(self.store, train.events())
        port = free_port()
        self.runner = web.AppRunner(create_app(self.settings, self.store), access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.base = f"http://127.0.0.1:{port}"
        self.session = aiohttp.ClientSession(headers={"X-API-Key": self.SECRET})
        await self._first_sequence_run()
        run_id = (await self._post("/admin/tune", None, 202))["run"]
        while True:
            model = await self._get("/model")
            last = model["tuning"]["last_run"]
            if last is not None and last["id"] == run_id and last["finished_at"] is not None:
                break
            await asyncio.sleep(1.0)
        self.run = last
        best = last["best"]
        print(f"tuning run {run_id}: {last['finished_at'] - last['started_at']:.0f} s, "
              f"{last['predictions']} holdout predictions, {last['candidates']} candidates; "
              + (f"promoted {best['params']}" if last["promoted"] else
                 f"nothing promoted ({last['held_back']})")
              + f"; judging half HR@20/MRR@20 {last['current']} -> {best}"
              + f"; cross-fitted on the search half: {last.get('cross_fitted') or 'none'}",
              file=sys.stderr)
        # the serving process follows the record within a second
        await asyncio.sleep(2 * MODEL_POLL)

    async def _first_sequence_run(self) -> None:
        """Start the sequence model's run as a worker would, and wait for it to end (its
        lease released); say what it stored."""
        store = self.store
        run_id = await sequence.start_if_due(store.redis, store.scripts, store.keys,
                                             self.settings)
        if run_id is None:
            return
        started = time.monotonic()
        while await store.redis.exists(store.keys.sequence_lease()):
            await asyncio.sleep(1.0)
        facts = (await self._get("/model"))["sequence"]
        print(f"sequence run {run_id}: {time.monotonic() - started:.0f} s, "
              + (f"{facts['predictions']} predictions, {facts['items']} items"
                 if facts and facts.get("id") == run_id else "nothing stored"),
              file=sys.stderr)

    async def _post(self, path: str, body: Any, status: int) -> Any:
        assert self.session is not None
        async with self.session.post(self.base + path, json=body) as resp:
            answer = await resp.json()
            assert resp.status == status, answer
            return answer

    async def _get(self, path: str) -> Any:
        assert self.session is not None
        async with self.session.get(self.base + path) as resp:
            answer = await resp.json()
            assert resp.status == 200, answer
            return answer


def _quote(value: str) -> str:
    from urllib.parse import quote
    return quote(value, safe="")


async def run_static(model: Model, train: ClickLog, test: ClickLog, k: int = 20,
                     limit: int | None = None, progress: bool | None = None) -> Result:
    await model.learn_train(train)
    cases = list(static_cases(test, limit))
    result = Result(model.name)
    for case in counted(cases, model.name, len(cases), "predictions", show=progress):
        started = time.perf_counter()
        predicted = await model.predict(case, k)
        result.add(predicted, case.target, time.perf_counter() - started)
    return result


async def run_streaming(model: Model, train: ClickLog, test: ClickLog, k: int = 20,
                        limit: int | None = None, progress: bool | None = None) -> Result:
    await model.learn_train(train)
    order = np.argsort(test.times, kind="stable")
    sessions, items = test.sessions[order].tolist(), test.items[order].tolist()
    times = test.times[order].tolist()
    seen: dict[str, list[tuple[str, float]]] = {}
    result = Result(model.name)
    shown = bar(model.name, len(order), "events", show=progress)
    predictions = 0
    for s, i, t in zip(sessions, items, times, strict=True):
        before = seen.setdefault(s, [])
        if before and (limit is None or predictions < limit):
            case = Case(s, [x for x, _ in before], [y for _, y in before], i)
            started = time.perf_counter()
            predicted = await model.predict_live(case, k)
            result.add(predicted, i, time.perf_counter() - started)
            predictions += 1
        await model.observe(Event(s, i, t))
        before.append((i, t))
        shown.update()
        if limit is not None and predictions >= limit:
            break
    shown.close()
    return result


def align_times(train: ClickLog, test: ClickLog) -> ClickLog:
    """Synthesised times (logs without timestamps) restart at every file: move the test log
    after the training log so that it is the future, as it is in the data."""
    gap = train.times.max() - test.times.min()
    if gap < 0:
        return test
    return ClickLog(test.sessions, test.items, test.times + gap + 3600.0)


def train_popularity(train: ClickLog) -> Counter[str]:
    return Counter(train.items.tolist())


def make_models(names: Sequence[str], settings: Settings, http: bool,
                self_tune: bool = False) -> list[Model]:
    models: list[Model] = []
    for name in names:
        if name == "sessionrec":
            models.append(SelfTunedModel(settings) if self_tune else ServedModel(settings, http))
        elif name in BASELINES:
            models.append(BaselineModel(BASELINES[name]()))
        else:
            raise Refused(f"--models: unknown model {name!r}; choose from sessionrec, "
                             f"{', '.join(BASELINES)}")
    return models


async def evaluate(settings: Settings, train: ClickLog, test: ClickLog, models: Sequence[str],
                   protocol: str, *, http: bool = True, limit: int | None = None,
                   k: int = 20, progress: bool | None = None,
                   self_tune: bool = False) -> dict[str, Result]:
    runner = run_static if protocol == "static" else run_streaming
    out = {}
    for n, model in enumerate(make_models(models, settings, http, self_tune)):
        if isinstance(model, ServedModel):
            own = settings.replace(namespace=f"{settings.namespace}-{protocol}{n}")
            model = SelfTunedModel(own) if self_tune else ServedModel(own, http)
        try:
            out[model.name] = await runner(model, train, test, k, limit, progress)
        finally:
            await model.close()
    return out


def summarise(results: dict[str, Result], train: ClickLog, k: int = 20
              ) -> dict[str, dict[str, float]]:
    popularity = train_popularity(train)
    n_items = len(popularity)
    return {name: r.metrics(popularity, n_items, k) for name, r in results.items()}

