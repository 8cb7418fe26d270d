"""Hot-path metrics expose what prometheus_client's own counters and histograms expose."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from kubus.fastmetrics import FastCounter, FastGauge, FastHistogram

BUCKETS = (0.001, 0.01, 0.1, 1.0)


def samples(registry: CollectorRegistry) -> set[str]:
    """Exposition lines, without prometheus_client's ``_created`` timestamps."""
    text = generate_latest(registry).decode()
    return {line for line in text.splitlines() if line and "_created" not in line}


def test_a_counter_exposes_the_same_samples_as_prometheus_clients() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast = FastCounter("events", "Events.", ["resource", "type"], registry=ours)
    slow = Counter("events", "Events.", ["resource", "type"], registry=theirs)
    for counter in (fast, slow):
        counter.labels("v1/pods", "ADDED").inc()
        counter.labels("v1/pods", "ADDED").inc(2)
        counter.labels("v1/pods", "DELETED").inc()
    assert samples(ours) == samples(theirs)
    assert 'events_total{resource="v1/pods",type="ADDED"} 3.0' in samples(ours)


def test_a_histogram_exposes_the_same_buckets_sum_and_count() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast = FastHistogram("latency_seconds", "Latency.", BUCKETS, registry=ours)
    slow = Histogram("latency_seconds", "Latency.", buckets=BUCKETS, registry=theirs)
    for value in (0.0005, 0.001, 0.002, 0.01, 0.5, 3.0, 3.0):
        fast.observe(value)
        slow.observe(value)
    assert samples(ours) == samples(theirs)
    assert 'latency_seconds_bucket{le="0.001"} 2.0' in samples(ours)


def test_wrong_label_values_are_refused_by_name() -> None:
    counter = FastCounter("things", "Things.", ["resource"], registry=None)
    with pytest.raises(ValueError, match="things takes labels"):
        counter.labels("a", "b")


def test_a_gauge_exposes_the_same_samples_as_prometheus_clients() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast = FastGauge("workqueue_depth", "Depth.", ["name"], registry=ours)
    slow = Gauge("workqueue_depth", "Depth.", ["name"], registry=theirs)
    for gauge in (fast, slow):
        gauge.labels("deployment").set(7)
        gauge.labels("deployment").dec(2)
        gauge.labels("replicaset").inc()
    assert samples(ours) == samples(theirs)
    assert 'workqueue_depth{name="deployment"} 5.0' in samples(ours)


def test_a_labelled_histogram_exposes_each_childs_buckets() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast = FastHistogram("duration_seconds", "Duration.", BUCKETS, ["controller"], registry=ours)
    slow = Histogram(
        "duration_seconds", "Duration.", ["controller"], buckets=BUCKETS, registry=theirs
    )
    for histogram in (fast, slow):
        histogram.labels("deployment").observe(0.002)
        histogram.labels("deployment").observe(2.0)
        histogram.labels("replicaset").observe(0.01)
    assert samples(ours) == samples(theirs)
    assert 'duration_seconds_count{controller="deployment"} 2.0' in samples(ours)
    with pytest.raises(ValueError, match="observe a child"):
        fast.observe(1.0)
