"""The reconcile contract, as controller-runtime's: a request names an object, never an event.

A controller reads the current state from the cache and converges. It returns a
:class:`Result` (``requeue_after`` for time-based work), raises to be retried with backoff (as
its :class:`RetryPolicy` says), or raises :class:`TerminalError` for what retrying cannot fix.

A controller declares, as class attributes, everything the runtime and the deployment need to
know about it without running it: its names, the resource its requests name, what it reads from
the bus (cached for it), what it writes to the apiserver (verbs per resource: the in-cluster
RBAC is generated from it), its scope, its retry policy, its feature gates and its flags.
:class:`ControllerBase` holds the defaults; any class with the same attributes meets the
:class:`Controller` protocol.

A controller class may also define ``async prepare(kube)`` (a classmethod or staticmethod):
run once per process before the runtime discovers the resources controllers read, for what
must exist by then (an operator installing its CRD). Its ``KubeApiError``, ``TimeoutError``
or ``ValueError`` stops the process with one line naming the controller.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol

from bus.subjects import ResourceType

if TYPE_CHECKING:
    # Only named in annotations: importing the contract (the command line reads the
    # controllers' flags) imports no cache, apiserver client or tracer.
    from opentelemetry.trace import Tracer

    from kubus.kube import ApiResource, KubeClient
    from reconcilers.cache import ObjectCache
    from reconcilers.events import EventRecorder

__all__ = [
    "EVERY_RESOURCE",
    "Context",
    "Controller",
    "ControllerBase",
    "Flag",
    "NotStarted",
    "Permission",
    "Request",
    "Result",
    "RetryPolicy",
    "Scope",
    "TerminalError",
]

Object = dict[str, Any]

# Declared in ``reads`` by controllers that need every resource the bus carries (the garbage
# collector, the namespace controller): the watcher must then run with ``--resources all``.
EVERY_RESOURCE: Final = ResourceType("*", "*", "*")


@dataclass(frozen=True)
class Request:
    """An object to reconcile. ``resource`` is set only by controllers whose requests name
    objects of several kinds (the garbage collector): it is part of the key then."""

    namespace: str | None
    name: str
    resource: ResourceType | None = None

    @property
    def key(self) -> str:
        key = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return key if self.resource is None else f"{self.resource}:{key}"

    @classmethod
    def of(cls, obj: Object, resource: ResourceType | None = None) -> Request:
        meta = obj.get("metadata", {})
        return cls(meta.get("namespace"), meta.get("name", ""), resource)


@dataclass(frozen=True)
class Result:
    requeue_after: float | None = None


class TerminalError(Exception):
    """Retrying will not help (bad input): logged, recorded, not requeued."""


class NotStarted(Exception):
    """Raised by a controller's constructor when its options mean kube-controller-manager
    would not start it (serviceaccount-token-controller without a private key): the manager
    logs the message and runs the other controllers."""


class Scope(enum.Enum):
    PARTITIONED = "partitioned"  # each process reconciles the keys of the partitions it owns
    GLOBAL = "global"  # one leader per pool, with the full cache of what it reads


@dataclass(frozen=True)
class RetryPolicy:
    """What happens to a key whose reconcile failed.

    ``max_retries``: upstream's ``maxRetries`` where kcm has one (the Deployment controller's
    15): after that many failed retries in a row the key is dropped until its next change.
    ``None`` retries for ever, with backoff. ``forget_terminating_namespace``: a failure caused
    by the namespace being terminated is not retried (kcm's ``NamespaceTerminatingCause``).
    """

    max_retries: int | None = None
    forget_terminating_namespace: bool = True


@dataclass(frozen=True)
class Permission:
    """Verbs a controller uses on one resource of the apiserver (an RBAC rule's worth)."""

    group: str
    resource: str  # with ``/subresource`` where it writes one, e.g. ``deployments/status``
    verbs: tuple[str, ...]

    @classmethod
    def on(cls, resource: ResourceType, *verbs: str, subresource: str = "") -> Permission:
        name = f"{resource.resource}/{subresource}" if subresource else resource.resource
        return cls(resource.group, name, tuple(verbs))


@dataclass(frozen=True)
class Flag:
    """A flag of one controller (beyond its ``--concurrent-*-syncs``), as kcm names it."""

    name: str  # without dashes, e.g. "namespace-sync-period"
    default: Any
    help: str
    parse: Callable[[str], Any] = str
    # The default as ``--help`` shows it, in the flag's own syntax (``5m0s``); unset: the
    # default's text (booleans as Go prints them), nothing for a None default.
    shown_default: str | None = None
    metavar: str = "VALUE"

    @property
    def default_text(self) -> str | None:
        if self.shown_default is not None:
            return self.shown_default
        if self.default is None:
            return None
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        return str(self.default)


@dataclass
class Context:
    """What a controller works with: the cache, the apiserver, events, a tracer, its options."""

    cache: ObjectCache
    kube: KubeClient
    apis: dict[ResourceType, ApiResource]
    events: EventRecorder
    tracer: Tracer | None
    feature_gates: dict[str, bool] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    # The kcm feature gates known to this process and their defaults (every controller's).
    gate_defaults: Mapping[str, bool] = field(default_factory=dict)

    def enabled(self, gate: str) -> bool:
        if gate in self.feature_gates:
            return self.feature_gates[gate]
        return self.gate_defaults[gate]


class Controller(Protocol):
    """One controller; an instance serves every key this process is responsible for."""

    name: ClassVar[str]  # kube-controller-manager's canonical name, e.g. deployment-controller
    aliases: ClassVar[tuple[str, ...]]
    primary: ClassVar[ResourceType]  # the resource its requests name
    reads: ClassVar[tuple[ResourceType, ...]]  # cached for it (primary included)
    permissions: ClassVar[tuple[Permission, ...]]  # apiserver verbs it uses (RBAC)
    concurrency_flag: ClassVar[str]  # e.g. concurrent-deployment-syncs
    default_concurrency: ClassVar[int]
    scope: ClassVar[Scope]
    retry: ClassVar[RetryPolicy]
    feature_gates: ClassVar[Mapping[str, bool]]  # kcm gates it consults -> their defaults
    flags: ClassVar[tuple[Flag, ...]]
    enabled_by_default: ClassVar[bool]

    def __init__(self, context: Context) -> None: ...

    def requests_for(
        self, resource: ResourceType, obj: Object | None, old: Object | None
    ) -> Iterable[Request]:
        """The requests a change of ``obj`` (None when deleted; ``old`` its previous state)
        makes: client-go's event handlers, minus the event."""

    async def reconcile(self, request: Request) -> Result: ...

    def forget(self, matches: Callable[[Request], bool]) -> None:
        """Drop per-key state (expectations) of the requests ``matches``: their partition
        moved away, and may come back stale."""


class ControllerBase:
    """The defaults of the declarations; a controller subclasses it and sets the rest."""

    aliases: ClassVar[tuple[str, ...]] = ()
    permissions: ClassVar[tuple[Permission, ...]] = ()
    default_concurrency: ClassVar[int] = 5
    scope: ClassVar[Scope] = Scope.PARTITIONED
    retry: ClassVar[RetryPolicy] = RetryPolicy()
    feature_gates: ClassVar[Mapping[str, bool]] = {}
    flags: ClassVar[tuple[Flag, ...]] = ()
    # Whether ``--controllers=*`` runs it. Built-in controllers follow kcm's own list; one from
    # outside kubus runs only when named unless it opts in.
    enabled_by_default: ClassVar[bool] = False

    def forget(self, matches: Callable[[Request], bool]) -> None:
        return None
