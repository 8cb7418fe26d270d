"""The event-sourced cache keeps what controllers read, and only that."""

from __future__ import annotations

import msgspec

from bus.envelope import Envelope, EventType
from bus.subjects import ObjectRef
from reconcilers.cache import ObjectCache
from reconcilers.kinds import PODS

MANAGED = [
    {
        "manager": "kwok",
        "operation": "Update",
        "apiVersion": "v1",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:status": {"f:phase": {}, "f:conditions": {}}},
        "subresource": "status",
    }
]


def test_a_cached_object_keeps_everything_but_its_managed_fields() -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-1",
            "namespace": "shop",
            "uid": "u-1",
            "resourceVersion": "7",
            "labels": {"app": "web"},
            "managedFields": MANAGED,
        },
        "spec": {"nodeName": "kwok-node-0"},
        "status": {"phase": "Running"},
    }
    cache = ObjectCache()
    ref = ObjectRef(PODS, "shop", "web-1")
    envelope = Envelope(
        subject="",
        sequence=1,
        event=EventType.ADDED,
        resource_version="7",
        uid="u-1",
        payload=msgspec.json.encode(pod),
    )
    cache.apply(0, ref, envelope)
    cached = cache.get(PODS, "shop", "web-1")
    del pod["metadata"]["managedFields"]  # type: ignore[attr-defined]
    assert cached == pod
