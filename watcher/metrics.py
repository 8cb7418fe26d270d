"""The watcher's Prometheus metrics (``kubus_watcher_*``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from kubus.fastmetrics import FastCounter, FastHistogram

__all__ = [
    "EVENTS_PUBLISHED",
    "EVENTS_RECEIVED",
    "LAST_EVENT_TIMESTAMP",
    "OVERSIZED_OBJECTS",
    "PUBLISH_CONFLICTS",
    "PUBLISH_LATENCY",
    "RELISTS",
    "RESOURCES",
    "STALE_EVENTS",
    "WATCH_RESTARTS",
]

# Updated once or more per event: the hot-path kind (see kubus.fastmetrics).
EVENTS_RECEIVED = FastCounter(
    "kubus_watcher_events_received",
    "Watch events and listed objects received from the apiserver.",
    ["resource", "type"],
)
EVENTS_PUBLISHED = FastCounter(
    "kubus_watcher_events_published",
    "Object states acknowledged by JetStream, by resource and event type.",
    ["resource", "type"],
)
STALE_EVENTS = Counter(
    "kubus_watcher_stale_events",
    "Events not published because the bus already held that or a newer resourceVersion.",
    ["resource"],
)
PUBLISH_CONFLICTS = Counter(
    "kubus_watcher_publish_conflicts",
    "Compare-and-set publishes refused because another writer got there first.",
    ["resource"],
)
OVERSIZED_OBJECTS = Counter(
    "kubus_watcher_oversized_objects",
    "Objects larger than the NATS max payload, published as references.",
    ["resource"],
)
RELISTS = Counter(
    "kubus_watcher_relists", "Full lists (initial, or after 410 Gone), by resource.", ["resource"]
)
WATCH_RESTARTS = Counter(
    "kubus_watcher_watch_restarts",
    "Watches that ended with an error and were restarted, by resource.",
    ["resource"],
)
PUBLISH_LATENCY = FastHistogram(
    "kubus_watcher_publish_latency_seconds",
    "From receiving an event to its JetStream acknowledgement.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
LAST_EVENT_TIMESTAMP = Gauge(
    "kubus_watcher_last_resource_version_timestamp_seconds",
    "When the watcher last saw a new resourceVersion (event or bookmark); age = now - value.",
    ["resource"],
)
RESOURCES = Gauge(
    "kubus_watcher_resources",
    "Resources watched: 'syncing' until the initial list is published, then 'watching'.",
    ["state"],
)
