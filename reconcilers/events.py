"""Kubernetes Events from controllers, sent off the reconcile path.

As client-go's recorder: ``record`` never blocks a reconcile; a background sender posts
``core/v1`` Events (source component = the controller's name) and drops what it cannot send
after logging it. Repeats of the same event within the process are folded into one Event
whose ``count`` and ``lastTimestamp`` grow, as the upstream correlator does.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Final

from kubus.kube import ApiResource, KubeApiError, KubeClient

__all__ = ["EventRecorder"]

log = logging.getLogger(__name__)

_EVENTS: Final = ApiResource("", "v1", "events", "Event", True, frozenset())
_QUEUE_LIMIT: Final = 10_000
_CLOSE: Final[dict[str, Any]] = {}


@dataclass
class _Sent:
    name: str
    count: int


class EventRecorder:
    def __init__(self, kube: KubeClient, *, host: str) -> None:
        self._kube = kube
        self._host = host
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(_QUEUE_LIMIT)
        self._sent: dict[tuple[str, ...], _Sent] = {}

    def record(
        self, obj: dict[str, Any], event_type: str, reason: str, message: str, *, component: str
    ) -> None:
        meta = obj.get("metadata", {})
        involved = {
            "apiVersion": obj.get("apiVersion", ""),
            "kind": obj.get("kind", ""),
            "name": meta.get("name", ""),
            "namespace": meta.get("namespace") or "default",
            "uid": meta.get("uid", ""),
            "resourceVersion": meta.get("resourceVersion", ""),
        }
        try:
            self._queue.put_nowait(
                {
                    "involvedObject": involved,
                    "type": event_type,
                    "reason": reason,
                    "message": message,
                    "component": component,
                }
            )
        except asyncio.QueueFull:
            log.warning("event queue full; dropped %s %s: %s", reason, involved["name"], message)

    async def run(self) -> None:
        """Send queued events until :meth:`close` (or cancellation)."""
        while True:
            event = await self._queue.get()
            if event is _CLOSE:
                return
            with contextlib.suppress(KubeApiError, OSError, TimeoutError):
                await self._send(event)

    def close(self) -> None:
        """Let :meth:`run` send what is queued, then return."""
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(_CLOSE)

    async def _send(self, event: dict[str, Any]) -> None:
        involved = event["involvedObject"]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        key = (
            involved["uid"],
            event["type"],
            event["reason"],
            event["message"],
            event["component"],
        )
        namespace = involved["namespace"]
        sent = self._sent.get(key)
        if sent is not None:
            sent.count += 1
            try:
                await self._kube.patch(
                    _EVENTS, namespace, sent.name, {"count": sent.count, "lastTimestamp": now}
                )
                return
            except KubeApiError:
                self._sent.pop(key, None)
        name = f"{involved['name']}.{uuid.uuid4().hex[:16]}"
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": involved,
            "type": event["type"],
            "reason": event["reason"],
            "message": event["message"],
            "source": {"component": event["component"]},
            "reportingComponent": event["component"],
            "reportingInstance": self._host,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self._kube.create(_EVENTS, namespace, body)
        except KubeApiError as error:
            log.warning(
                "could not record event %s on %s: %s", event["reason"], involved["name"], error
            )
            return
        if len(self._sent) > 4096:
            self._sent.clear()
        self._sent[key] = _Sent(name, 1)
