"""An A/B experiment on simulated visitors: does the report tell a weakened configuration from
the defaults?

DIGINETICA's training log is loaded; a serve process and a worker run on a private Redis. An
experiment splits sessions between the defaults and a deliberately weakened variant (one
query item, five neighbours). Test sessions are replayed as visitors through HTTP only, as
the SDK would: each prefix asks POST /iid_recommend with the visitor's session id, every
item of the answer is sent back as an impression, and the visitor clicks the recommended
item that is their true next item, when it is there (with the answer's recommendation_id).
The experiment's report then gives each variant's CTR and the p-value of the difference.

With ``--attack N``, an attacker holding only the publishable key tries to decide the
experiment for the weakened variant while the visitors come: it asks for one answer per
variant, then sends N forged events, impressions against the defaults' answer and clicks for
the weakened one's, for items those answers never listed, from other sessions and from its
own. The report must reach the same conclusion.

    python scripts/simulate_experiment.py --data ../shared/datasets/diginetica-srgnn \\
        [--visitors 4000] [--attack 20000] [--out docs/eval/experiment.md]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench import build_model, sessionrec_server, worker_process  # noqa: E402

from service.offline import clicklog  # noqa: E402
from service.offline.evaluate import align_times, static_cases  # noqa: E402
from service.offline.redisproc import RedisProcess  # noqa: E402
from service.settings import Settings  # noqa: E402

SECRET = "sk_simulation"
WEAKENED = {"query_items": 1, "neighbours": 5}
K = 20


def visitors(data: Path, wanted: int) -> list[list[tuple[list[str], list[float], str]]]:
    """Per test session (the first ``wanted``): its prefixes, their times, the next item."""
    train = clicklog.read(data / "train.tsv")
    test = align_times(train, clicklog.read(data / "test.tsv"))
    sessions: dict[str, list[tuple[list[str], list[float], str]]] = {}
    for case in static_cases(test):
        if case.session not in sessions and len(sessions) == wanted:
            break
        sessions.setdefault(case.session, []).append((case.prefix, case.times, case.target))
    return list(sessions.values())


class Replay:
    def __init__(self, api: str, http: aiohttp.ClientSession) -> None:
        self.api = api
        self.http = http
        self.events: list[dict[str, Any]] = []
        self.sent = {"answers": 0, "impressions": 0, "clicks": 0}

    async def visitor(self, n: int, steps: Sequence[tuple[list[str], list[float], str]]
                      ) -> None:
        session = f"visitor-{n}"
        for prefix, times, target in steps:
            body = {"user_interactions": {item: {"timestamp": int(t)}
                                          for item, t in zip(prefix, times, strict=True)},
                    "k": K, "recommend_seen": True, "session_id": session}
            async with self.http.post(self.api + "/iid_recommend", json=body) as resp:
                answer = await resp.json()
                assert resp.status == 200, answer
            rid = answer["recommendation_id"]
            shown = [r["id"] for r in answer["recommendations"]]
            self.sent["answers"] += 1
            self.events += [{"session_id": session, "item_id": item, "type": "impression",
                             "recommendation_id": rid} for item in shown]
            self.sent["impressions"] += len(shown)
            if target in shown:
                self.events.append({"session_id": session, "item_id": target,
                                    "type": "click", "recommendation_id": rid})
                self.sent["clicks"] += 1
            if len(self.events) >= 500:
                await self.flush()

    async def flush(self) -> None:
        while self.events:
            batch, self.events = self.events[:500], self.events[500:]
            async with self.http.post(self.api + "/events", json={"events": batch}) as resp:
                assert resp.status == 202, await resp.text()


async def attack(api: str, http: aiohttp.ClientSession, forged: int) -> dict[str, int]:
    """The forgery of issue 23: one answer's id per variant, then ``forged`` events crafted to
    make the weakened variant win. Returns what it sent."""
    ids: dict[str, tuple[str, dict[str, Any]]] = {}
    n = 0
    while len(ids) < 2:
        session = f"attacker-{n}"
        body = {"user_interactions": {}, "k": K, "session_id": session}
        async with http.post(api + "/iid_recommend", json=body) as resp:
            answer = await resp.json()
        ids.setdefault(answer["variant"], (session, answer))
        n += 1
    events = []
    for m in range(forged):
        variant, kind = ("defaults", "impression") if m % 2 else ("weakened", "click")
        session, answer = ids[variant]
        listed = [r["id"] for r in answer["recommendations"]]
        events.append({"session_id": session if m % 3 == 0 else f"bot-{m}",
                       "item_id": listed[m % len(listed)] if m % 5 == 0 else f"never-{m}",
                       "type": kind, "recommendation_id": answer["recommendation_id"]})
    for at in range(0, len(events), 500):
        async with http.post(api + "/events", json={"events": events[at:at + 500]}) as resp:
            assert resp.status == 202, await resp.text()
    return {"answers": len(ids), "events": len(events)}


async def simulate(api: str, steps: list[list[tuple[list[str], list[float], str]]],
                   concurrency: int, forged: int = 0
                   ) -> tuple[dict[str, Any], dict[str, int], float]:
    headers = {"X-API-Key": SECRET}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.put(api + "/admin/experiments/simulation", json={"variants": {
                "defaults": {"weight": 1, "params": {}},
                "weakened": {"weight": 1, "params": WEAKENED}}}) as resp:
            assert resp.status == 200, await resp.text()
        replay = Replay(api, http)
        started = time.monotonic()
        queue = list(enumerate(steps))

        async def worker() -> None:
            while queue:
                n, visit = queue.pop()
                await replay.visitor(n, visit)
        attacked = [attack(api, http, forged)] if forged else []
        await asyncio.gather(*(worker() for _ in range(concurrency)), *attacked)
        await replay.flush()
        seconds = time.monotonic() - started
        while True:  # every event applied: the report's counts are final
            async with http.get(api + "/stats") as resp:
                if (await resp.json())["pending"] == 0:
                    break
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.5)  # the serve process adds its answers each second
        async with http.get(api + "/admin/experiments/simulation") as resp:
            report: dict[str, Any] = await resp.json()
    return report, replay.sent, seconds


def markdown(report: dict[str, Any], sent: dict[str, int], visitors_: int, seconds: float,
             command: str, forged: int) -> str:
    rows = ["| variant | params | sessions | answers | impressions | clicks | clicked "
            "impressions | CTR | 95 % interval |", "|---|---|---|---|---|---|---|---|---|"]
    for name, v in report["variants"].items():
        low, high = v["ctr_interval"]
        rows.append(f"| {name} | `{json.dumps(v['params'])}` | {v['sessions']:,} | "
                    f"{v['answers']:,} | {v['impressions']:,} | {v['clicks']:,} | "
                    f"{v['clicked_impressions']:,} | {v['ctr']:.4f} | {low:.4f} – "
                    f"{high:.4f} |")
    comparison = report["comparisons"]["weakened"]
    return "\n".join([
        f"## Simulated A/B experiment ({datetime.date.today()})", "",
        f"Command: `{command}`", "",
        f"{visitors_:,} DIGINETICA test sessions replayed as visitors in {seconds:.0f} s "
        f"({sent['answers']:,} answers, {sent['impressions']:,} impressions and "
        f"{sent['clicks']:,} clicks sent); a visitor clicks the recommended item that is "
        "their true next item." + (
            f" Meanwhile an attacker sent {forged:,} forged events for the weakened variant."
            if forged else ""), "", *rows, "",
        f"weakened against defaults: CTR difference {comparison['ctr_difference']:+.4f}, "
        f"p-value {comparison['p_value']:.3g}.",
        "Counted beyond what the visitors sent (what the report owes to anyone else): "
        + ", ".join(f"{kind} {sum(v[kind] for v in report['variants'].values()) - sent[kind]:+,}"
                    for kind in ("answers", "impressions", "clicks")) + ".", ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True,
                        help="folder with the SR-GNN DIGINETICA train.tsv and test.tsv")
    parser.add_argument("--visitors", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--attack", type=int, default=0, metavar="N",
                        help="an attacker sends N forged events for the weakened variant "
                             "meanwhile")
    parser.add_argument("--out", type=Path, default=None, help="write the report here too")
    args = parser.parse_args()
    steps = visitors(args.data, args.visitors)
    with RedisProcess() as url:
        settings = Settings(redis_url=url, namespace="simulation")
        asyncio.run(build_model(settings, args.data))
        with sessionrec_server(settings, extra={"SESSIONREC_SECRET_KEYS": SECRET}) as api, \
                worker_process(settings):
            report, sent, seconds = asyncio.run(simulate(api, steps, args.concurrency,
                                                         args.attack))
    command = "python scripts/simulate_experiment.py " + " ".join(sys.argv[1:])
    text = markdown(report, sent, len(steps), seconds, command, args.attack)
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
