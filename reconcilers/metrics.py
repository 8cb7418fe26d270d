"""The reconcilers' Prometheus metrics (``kubus_reconciler_*`` and client-go's workqueue_*)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

WORKQUEUE_DEPTH = Gauge("workqueue_depth", "Keys waiting in a work queue.", ["name"])
WORKQUEUE_ADDS = Counter("workqueue_adds", "Keys added to a work queue.", ["name"])
WORKQUEUE_RETRIES = Counter("workqueue_retries", "Rate-limited re-adds.", ["name"])
WORKQUEUE_LATENCY = Histogram(
    "workqueue_queue_duration_seconds",
    "From a key becoming dirty to a worker taking it.",
    ["name"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RECONCILE_DURATION = Histogram(
    "kubus_reconciler_reconcile_duration_seconds",
    "Reconcile time per controller.",
    ["controller"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
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
CACHED_OBJECTS = Gauge("kubus_reconciler_cached_objects", "Objects in this process's cache.")
MEMBER = Gauge(
    "kubus_reconciler_member_info", "This process's member id in its pool.", ["member", "pool"]
)
EVENT_LATENCY = Histogram(
    "kubus_reconciler_event_latency_seconds",
    "From JetStream storing an object's new state to the start of the reconcile it causes.",
    ["controller"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
LEADER = Gauge(
    "kubus_reconciler_leader",
    "1 while this process leads a global controller of its pool, else 0.",
    ["controller"],
)
