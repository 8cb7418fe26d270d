"""A watch-based checker of a rollout's bounds, as the upstream e2e tests keep them."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client, watch
from urllib3.exceptions import ProtocolError


@dataclass
class RolloutBounds:
    max_pods: int = 0
    min_available: int | None = None
    mixed: bool = False  # pods of two templates alive at once (must never be for Recreate)
    events: int = 0
    _pods: dict[str, Any] = field(default_factory=dict)


class RolloutChecker:
    """Watches a Deployment's pods and records the extremes a rollout passes through."""

    def __init__(self, kube: Any, namespace: str, label_selector: str) -> None:
        self.bounds = RolloutBounds()
        self._core = client.CoreV1Api(kube)
        self._namespace = namespace
        self._selector = label_selector
        self._watch = watch.Watch()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RolloutChecker:
        self._thread.start()
        self._started.wait(timeout=10)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._watch.stop()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        pods = self._core.list_namespaced_pod(self._namespace, label_selector=self._selector)
        for pod in pods.items:
            self._apply("ADDED", pod)
        self._started.set()
        try:
            for event in self._watch.stream(
                self._core.list_namespaced_pod,
                self._namespace,
                label_selector=self._selector,
                resource_version=pods.metadata.resource_version,
                timeout_seconds=600,
            ):
                self._apply(event["type"], event["object"])
        except ProtocolError:
            pass  # stop() cut the stream

    def _apply(self, kind: str, pod: Any) -> None:
        bounds = self.bounds
        name = pod.metadata.name
        if kind == "DELETED" or pod.metadata.deletion_timestamp is not None:
            bounds._pods.pop(name, None)
        else:
            bounds._pods[name] = pod
        alive = list(bounds._pods.values())
        available = sum(
            1
            for p in alive
            if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        )
        bounds.events += 1
        bounds.max_pods = max(bounds.max_pods, len(alive))
        if self._started.is_set():
            bounds.min_available = (
                available if bounds.min_available is None else min(bounds.min_available, available)
            )
        hashes = {(p.metadata.labels or {}).get("pod-template-hash") for p in alive}
        bounds.mixed = bounds.mixed or len(hashes) > 1
