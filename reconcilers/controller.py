"""The reconcile contract, as controller-runtime's: a request names an object, never an event.

A controller reads the current state from the cache and converges. It returns a
:class:`Result` (``requeue_after`` for time-based work), raises to be retried with backoff, or
raises :class:`TerminalError` for what retrying cannot fix.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from opentelemetry.trace import Tracer

from bus.subjects import ResourceType
from kubus.kube import ApiResource, KubeClient
from reconcilers.cache import ObjectCache
from reconcilers.events import EventRecorder

__all__ = [
    "FEATURE_GATES",
    "Context",
    "Controller",
    "Request",
    "Result",
    "Scope",
    "TerminalError",
]

# The kube-controller-manager feature gates kubus's controllers consult, with their defaults.
FEATURE_GATES: dict[str, bool] = {"DeploymentReplicaSetTerminatingReplicas": True}

Object = dict[str, Any]


@dataclass(frozen=True, order=True)
class Request:
    namespace: str | None
    name: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @classmethod
    def of(cls, obj: Object) -> Request:
        meta = obj.get("metadata", {})
        return cls(meta.get("namespace"), meta.get("name", ""))


@dataclass(frozen=True)
class Result:
    requeue_after: float | None = None


class TerminalError(Exception):
    """Retrying will not help (bad input): logged, recorded, not requeued."""


class Scope(enum.Enum):
    PARTITIONED = "partitioned"  # each process reconciles the keys of the partitions it owns
    GLOBAL = "global"  # one leader per pool, full cache (e.g. node lifecycle)


@dataclass
class Context:
    """What a controller works with: the cache, the apiserver, events, a tracer."""

    cache: ObjectCache
    kube: KubeClient
    apis: dict[ResourceType, ApiResource]
    events: EventRecorder
    tracer: Tracer | None
    feature_gates: dict[str, bool] = field(default_factory=dict)

    def enabled(self, gate: str) -> bool:
        return self.feature_gates.get(gate, FEATURE_GATES[gate])


class Controller(Protocol):
    """One controller; an instance serves every key of the partitions this process owns."""

    name: ClassVar[str]  # kube-controller-manager's canonical name, e.g. deployment-controller
    aliases: ClassVar[tuple[str, ...]]
    primary: ClassVar[ResourceType]  # the resource its requests name
    reads: ClassVar[tuple[ResourceType, ...]]  # cached for it (primary included)
    concurrency_flag: ClassVar[str]  # e.g. concurrent-deployment-syncs
    default_concurrency: ClassVar[int]
    scope: ClassVar[Scope]

    def requests_for(
        self, resource: ResourceType, obj: Object | None, old: Object | None
    ) -> Iterable[Request]:
        """The requests a change of ``obj`` (None when deleted; ``old`` its previous state)
        makes: client-go's event handlers, minus the event."""

    async def reconcile(self, request: Request) -> Result: ...
