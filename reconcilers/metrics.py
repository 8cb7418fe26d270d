"""The reconcilers' Prometheus metrics (``kubus_reconciler_*`` and client-go's workqueue_*)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kubus.fastmetrics import FastCounter, FastGauge, FastHistogram

# Updated once or more per delivery or reconcile: the hot-path kind (see kubus.fastmetrics).
WORKQUEUE_DEPTH = FastGauge("workqueue_depth", "Keys waiting in a work queue.", ["name"])
WORKQUEUE_ADDS = FastCounter("workqueue_adds", "Keys added to a work queue.", ["name"])
WORKQUEUE_RETRIES = Counter("workqueue_retries", "Rate-limited re-adds.", ["name"])
WORKQUEUE_LATENCY = FastHistogram(
    "workqueue_queue_duration_seconds",
    "From a key becoming dirty to a worker taking it.",
    (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    ["name"],
)
RECONCILE_DURATION = FastHistogram(
    "kubus_reconciler_reconcile_duration_seconds",
    "Reconcile time per controller.",
    (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    ["controller"],
)
RECONCILE_ERRORS = Counter(
    "kubus_reconciler_reconcile_errors", "Reconciles that failed, per controller.", ["controller"]
)
PARTITIONS_OWNED = Gauge("kubus_reconciler_partitions_owned", "Partitions this process owns.")
CONSUMER_LAG = Gauge(
    "kubus_reconciler_consumer_lag",
    "Messages of an owned partition not yet delivered or acknowledged (pending + ack pending).",
    ["partition"],
)


class CachedObjects(Collector):
    """``kubus_reconciler_cached_objects{cache,resource}``, counted at scrape time (the caches
    keep counts per resource; a gauge set on every delivery would cost on the hot path)."""

    def __init__(self) -> None:
        self._sources: list[Callable[[], Iterable[tuple[str, str, int]]]] = []

    def add(self, source: Callable[[], Iterable[tuple[str, str, int]]]) -> None:
        self._sources.append(source)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "kubus_reconciler_cached_objects",
            "Objects in this process's caches, per cache (shared or a global controller's) "
            "and resource.",
            labels=["cache", "resource"],
        )
        for source in self._sources:
            for cache, resource, count in source():
                family.add_metric([cache, resource], count)
        yield family


CACHED_OBJECTS = CachedObjects()
REGISTRY.register(CACHED_OBJECTS)
MEMBER = Gauge(
    "kubus_reconciler_member_info", "This process's member id in its pool.", ["member", "pool"]
)
EVENT_LATENCY = FastHistogram(
    "kubus_reconciler_event_latency_seconds",
    "From JetStream storing an object's new state to the start of the reconcile it causes.",
    (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    ["controller"],
)
RECONCILE_DROPPED = Counter(
    "kubus_reconciler_reconcile_dropped",
    "Keys dropped out of the queue after the controller's maximum retries.",
    ["controller"],
)
DEAD_LETTERS = Counter(
    "kubus_reconciler_dead_letters",
    "Deliveries moved to the dead-letter stream (could not be decoded or applied).",
    ["partition"],
)
RUNNER_RESTARTS = Counter(
    "kubus_reconciler_runner_restarts",
    "Restarts of a failed partition runner, cache follower or leader loop.",
    ["runner"],
)
LEADER = Gauge(
    "kubus_reconciler_leader",
    "1 while this process leads a global controller of its pool, else 0.",
    ["controller"],
)
