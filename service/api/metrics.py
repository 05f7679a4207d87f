"""Prometheus series of one app (own registry: several apps may live in one process).

The per-request series are plain counters read by a collector at scrape time: prometheus
client's labelled Counter and Histogram take a lock per call and walk the buckets in Python,
which cost more than the rest of the request's bookkeeping together.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import ClassVar

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from service.core.series import MinuteTally

BUCKETS = (.0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5)
"""Upper bounds (seconds) of the latency histogram."""


class RequestSeries(Collector):
    """``sessionrec_http_requests_total{route,status}`` and the latency histogram
    ``sessionrec_http_request_seconds{route}``."""

    def __init__(self, buckets: tuple[float, ...] = BUCKETS) -> None:
        self.bounds = list(buckets)
        self.answered: dict[tuple[str, int], int] = {}
        self.latency: dict[str, list[float]] = {}  # per bucket, then +Inf, then the sum

    def observe(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        self.answered[key] = self.answered.get(key, 0) + 1
        counts = self.latency.get(route)
        if counts is None:
            counts = self.latency[route] = [0.0] * (len(self.bounds) + 2)
        counts[bisect_left(self.bounds, seconds)] += 1  # le: a value on a bound counts in it
        counts[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("sessionrec_http_requests", "HTTP requests answered",
                                       labels=["route", "status"])
        for (route, status), n in sorted(self.answered.items()):
            requests.add_metric([route, str(status)], n)
        yield requests
        latency = HistogramMetricFamily("sessionrec_http_request_seconds",
                                        "Time to answer, by route", labels=["route"])
        for route, counts in sorted(self.latency.items()):
            cumulative: float = 0.0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip([*map(str, self.bounds), "+Inf"], counts[:-1],
                                    strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric([route], buckets, sum_value=counts[-1])
        yield latency


class CacheSeries(Collector):
    """``sessionrec_read_cache_*``: the serve process' read cache (``service.store.readcache``),
    read at scrape time."""

    COUNTS: ClassVar[dict[str, str]] = {"hits": "Blobs served from the read cache",
                                         "misses": "Blobs the read cache had to ask Redis for",
                                         "invalidations": "Keys Redis announced as changed",
                                         "resets": "Times the whole cache was dropped "
                                                   "(lost connection, flush)"}
    SIZES: ClassVar[dict[str, str]] = {"bytes": "Bytes the read cache holds",
                                       "entries": "Blobs the read cache holds"}

    def __init__(self, figures: Callable[[], dict[str, int]]) -> None:
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        figures = self.figures()
        for name, doc in self.COUNTS.items():
            yield CounterMetricFamily(f"sessionrec_read_cache_{name}", doc, value=figures[name])
        for name, doc in self.SIZES.items():
            yield GaugeMetricFamily(f"sessionrec_read_cache_{name}", doc, value=figures[name])


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = RequestSeries()
        self.minutes = MinuteTally()
        """Requests and their latency per minute, for the dashboard (added to Redis each
        second by ``follow_feedback``)."""
        self.registry.register(self.requests)
        self.events = Counter("sessionrec_events_accepted", "Events accepted by this process",
                              registry=self.registry)
        self.state = Gauge("sessionrec_state", "Figures of GET /stats", ["figure"],
                           registry=self.registry)
        labels = ["experiment", "variant"]
        self.impressions = Gauge("sessionrec_experiment_impressions",
                                 "Impressions of the running experiment's answers, by variant",
                                 labels, registry=self.registry)
        self.clicks = Gauge("sessionrec_experiment_attributed_clicks",
                            "Clicks attributed to the running experiment's answers, by variant",
                            labels, registry=self.registry)
        self.ctr = Gauge("sessionrec_experiment_ctr",
                         "Clicked impressions / impressions of the running experiment, by "
                         "variant", labels, registry=self.registry)
        by_placement = ["placement"]
        self.placement_answers = Gauge("sessionrec_placement_answers",
                                       "Answers given for each placement (every process)",
                                       by_placement, registry=self.registry)
        self.placement_impressions = Gauge("sessionrec_placement_impressions",
                                           "Impressions of each placement's answers",
                                           by_placement, registry=self.registry)
        self.placement_clicks = Gauge("sessionrec_placement_attributed_clicks",
                                      "Clicks attributed to each placement's answers",
                                      by_placement, registry=self.registry)
        self.placement_ctr = Gauge("sessionrec_placement_ctr",
                                   "Clicked impressions / impressions of each placement",
                                   by_placement, registry=self.registry)
        self.unrecorded = Gauge("sessionrec_answers_unrecorded",
                                "Answers of this process whose record the hour's share of "
                                "--feedback-mb refused: their feedback counts nowhere",
                                registry=self.registry)
