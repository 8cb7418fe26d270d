"""The controllers kubus knows, by kube-controller-manager's names, and ``--controllers``.

``--controllers`` reads as kube-controller-manager v1.36's: ``*`` enables every controller that
is on by default, ``name`` enables one, ``-name`` disables one, and for each controller the
first item that names it decides. Canonical names and the legacy aliases are both accepted. A
name nobody knows is an error in kube-controller-manager's words; a controller it knows but
kubus has not implemented is an error too (rather than silently running without it), except the
cloud-provider controllers, which kube-controller-manager itself accepts and skips.

Controllers from other distributions join through the ``kubus.controllers`` entry-point group
(:mod:`reconcilers.external`) and are chosen the same way; ``*`` turns on only those that set
``enabled_by_default = True``.

A built-in controller's module is imported when the controller is chosen, not before: what the
command line needs of it earlier (its ``--concurrent-*-syncs``, its flags and feature gates, for
``--help`` and parsing) is declared here too, in :data:`BUILTIN`, and a test holds each
declaration equal to its class. A process running two controllers imports those two.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint
from typing import Final, Protocol, TypeVar

from reconcilers import external
from reconcilers.controller import Context, Controller, Flag
from reconcilers.controllers.flags import (
    ENABLE_DYNAMIC_PROVISIONING,
    ENABLE_GARBAGE_COLLECTOR,
    NAMESPACE_SYNC_PERIOD,
    POD_GC_CHECK_PERIOD,
    POD_GC_QUARANTINE_TIME,
    PVCLAIMBINDER_SYNC_PERIOD,
    STALE_POD_DISRUPTION_TIMEOUT,
    TERMINATED_POD_GC_THRESHOLD,
)
from reconcilers.controllers.serviceaccount.options import PRIVATE_KEY_FILE, ROOT_CA_FILE

__all__ = [
    "BUILTIN",
    "CLOUD_PROVIDER",
    "DISABLED_BY_DEFAULT",
    "IMPLEMENTED",
    "KNOWN",
    "Builtin",
    "ControllerClass",
    "ControllerSelectionError",
    "Declared",
    "KcmController",
    "Registry",
    "available",
    "controller_class",
    "declared_controllers",
    "implemented_controllers",
    "select_controllers",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KcmController:
    """One controller of kube-controller-manager's ``NewControllerDescriptors``."""

    name: str
    aliases: tuple[str, ...] = ()
    disabled_by_default: bool = False
    # Registered, but kube-controller-manager has no in-tree cloud provider (KEP-2395): it
    # accepts the name and skips the controller.
    cloud_provider: bool = False


def _kcm(*controllers: KcmController) -> dict[str, KcmController]:
    return {controller.name: controller for controller in controllers}


# kube-controller-manager v1.36.3, cmd/kube-controller-manager/app (descriptors) and names/.
# Several are also gated by feature gates there; kubus implements none of those yet.
KNOWN: Final[Mapping[str, KcmController]] = _kcm(
    KcmController("bootstrap-signer-controller", ("bootstrapsigner",), disabled_by_default=True),
    KcmController("certificatesigningrequest-approving-controller", ("csrapproving",)),
    KcmController("certificatesigningrequest-cleaner-controller", ("csrcleaner",)),
    KcmController("certificatesigningrequest-signing-controller", ("csrsigning",)),
    KcmController(
        "cloud-node-lifecycle-controller", ("cloud-node-lifecycle",), cloud_provider=True
    ),
    KcmController("clusterrole-aggregation-controller", ("clusterrole-aggregation",)),
    KcmController("cronjob-controller", ("cronjob",)),
    KcmController("daemonset-controller", ("daemonset",)),
    KcmController("deployment-controller", ("deployment",)),
    KcmController("device-taint-eviction-controller"),
    KcmController("disruption-controller", ("disruption",)),
    KcmController("endpoints-controller", ("endpoint",)),
    KcmController("endpointslice-controller", ("endpointslice",)),
    KcmController("endpointslice-mirroring-controller", ("endpointslicemirroring",)),
    KcmController("ephemeral-volume-controller", ("ephemeral-volume",)),
    KcmController("garbage-collector-controller", ("garbagecollector",)),
    KcmController("horizontal-pod-autoscaler-controller", ("horizontalpodautoscaling",)),
    KcmController("job-controller", ("job",)),
    KcmController("kube-apiserver-serving-clustertrustbundle-publisher-controller"),
    KcmController(
        "legacy-serviceaccount-token-cleaner-controller", ("legacy-service-account-token-cleaner",)
    ),
    KcmController("namespace-controller", ("namespace",)),
    KcmController("node-ipam-controller", ("nodeipam",)),
    KcmController("node-lifecycle-controller", ("nodelifecycle",)),
    KcmController("node-route-controller", ("route",), cloud_provider=True),
    KcmController("persistentvolume-attach-detach-controller", ("attachdetach",)),
    KcmController("persistentvolume-binder-controller", ("persistentvolume-binder",)),
    KcmController("persistentvolume-expander-controller", ("persistentvolume-expander",)),
    KcmController("persistentvolume-protection-controller", ("pv-protection",)),
    KcmController("persistentvolumeclaim-protection-controller", ("pvc-protection",)),
    KcmController("pod-garbage-collector-controller", ("podgc",)),
    KcmController("podcertificaterequest-cleaner-controller"),
    KcmController("podgroup-protection-controller"),
    KcmController("replicaset-controller", ("replicaset",)),
    KcmController("replicationcontroller-controller", ("replicationcontroller",)),
    KcmController("resourceclaim-controller", ("resource-claim-controller",)),
    KcmController("resourcepoolstatusrequest-controller"),
    KcmController("resourcequota-controller", ("resourcequota",)),
    KcmController("root-ca-certificate-publisher-controller", ("root-ca-cert-publisher",)),
    KcmController("selinux-warning-controller", disabled_by_default=True),
    KcmController("service-cidr-controller"),
    KcmController("service-lb-controller", ("service",), cloud_provider=True),
    KcmController("serviceaccount-controller", ("serviceaccount",)),
    KcmController("serviceaccount-token-controller", ("serviceaccount-token",)),
    KcmController("statefulset-controller", ("statefulset",)),
    KcmController("storage-version-migrator-controller", ("svm",)),
    KcmController("storageversion-garbage-collector-controller", ("storage-version-gc",)),
    KcmController("taint-eviction-controller"),
    KcmController("token-cleaner-controller", ("tokencleaner",), disabled_by_default=True),
    KcmController("ttl-after-finished-controller", ("ttl-after-finished",)),
    KcmController("ttl-controller", ("ttl",)),
    KcmController("validatingadmissionpolicy-status-controller"),
    KcmController("volumeattributesclass-protection-controller"),
)
DISABLED_BY_DEFAULT: Final = frozenset(c.name for c in KNOWN.values() if c.disabled_by_default)
CLOUD_PROVIDER: Final = frozenset(c.name for c in KNOWN.values() if c.cloud_provider)


class ControllerClass(Protocol):
    """A controller class as the manager uses it: called with a :class:`Context`, it makes a
    :class:`Controller`. ``type[Controller]`` alone does not check the constructor."""

    def __call__(self, context: Context) -> Controller: ...


_C = TypeVar("_C", bound=ControllerClass)


def controller_class(cls: _C) -> _C:
    """Returns ``cls``; mypy checks it is a whole controller class, constructor included
    (usable as a class decorator by out-of-tree controllers too)."""
    return cls


@dataclass(frozen=True)
class Declared:
    """What the command line needs of a controller before it runs one: the flags it adds to
    ``kubus reconciler`` and the feature gates it consults (the Controller protocol's)."""

    name: str
    concurrency_flag: str
    default_concurrency: int
    feature_gates: Mapping[str, bool] = field(default_factory=dict)
    flags: tuple[Flag, ...] = ()

    @classmethod
    def of(cls, controller: type[Controller]) -> Declared:
        return cls(
            controller.name,
            controller.concurrency_flag,
            controller.default_concurrency,
            dict(controller.feature_gates),
            tuple(controller.flags),
        )


@dataclass(frozen=True)
class Builtin:
    """A built-in controller: its declaration, and the import of its class."""

    declared: Declared
    load: Callable[[], type[Controller]]


def _lazy(module: str, name: str) -> Callable[[], type[Controller]]:
    """A loader of ``module.name``: importing a controller's module imports the apiserver
    client, the cache and the controller's logic, so only the controllers a process runs."""

    def load() -> type[Controller]:
        loaded: type[Controller] = getattr(importlib.import_module(module), name)
        return loaded

    return load


_TERMINATING_REPLICAS: Final = {"DeploymentReplicaSetTerminatingReplicas": True}

BUILTIN: Final[tuple[Builtin, ...]] = (
    Builtin(
        Declared("cronjob-controller", "concurrent-cron-job-syncs", 5),
        _lazy("reconcilers.controllers.cronjob", "CronJobController"),
    ),
    Builtin(
        Declared(
            "daemonset-controller",
            "concurrent-daemonset-syncs",
            2,
            feature_gates={"TaintTolerationComparisonOperators": False},
        ),
        _lazy("reconcilers.controllers.daemonset", "DaemonSetController"),
    ),
    Builtin(
        Declared(
            "deployment-controller",
            "concurrent-deployment-syncs",
            5,
            feature_gates=_TERMINATING_REPLICAS,
        ),
        _lazy("reconcilers.controllers.deployment", "DeploymentController"),
    ),
    Builtin(
        Declared(
            "disruption-controller",
            "concurrent-disruption-syncs",
            1,
            flags=(STALE_POD_DISRUPTION_TIMEOUT,),
        ),
        _lazy("reconcilers.controllers.disruption", "DisruptionController"),
    ),
    Builtin(
        Declared(
            "garbage-collector-controller",
            "concurrent-gc-syncs",
            20,
            flags=(ENABLE_GARBAGE_COLLECTOR,),
        ),
        _lazy("reconcilers.controllers.garbagecollector", "GarbageCollectorController"),
    ),
    Builtin(
        Declared("job-controller", "concurrent-job-syncs", 5),
        _lazy("reconcilers.controllers.job", "JobController"),
    ),
    Builtin(
        Declared(
            "namespace-controller", "concurrent-namespace-syncs", 10, flags=(NAMESPACE_SYNC_PERIOD,)
        ),
        _lazy("reconcilers.controllers.namespace", "NamespaceController"),
    ),
    Builtin(
        Declared(
            "persistentvolume-binder-controller",
            "concurrent-persistentvolume-binder-syncs",
            2,
            flags=(PVCLAIMBINDER_SYNC_PERIOD, ENABLE_DYNAMIC_PROVISIONING),
        ),
        _lazy("reconcilers.controllers.persistentvolume", "PersistentVolumeBinderController"),
    ),
    Builtin(
        Declared("persistentvolume-protection-controller", "concurrent-pv-protection-syncs", 1),
        _lazy("reconcilers.controllers.pvprotection", "PVProtectionController"),
    ),
    Builtin(
        Declared(
            "persistentvolumeclaim-protection-controller", "concurrent-pvc-protection-syncs", 1
        ),
        _lazy("reconcilers.controllers.pvcprotection", "PVCProtectionController"),
    ),
    Builtin(
        Declared(
            "pod-garbage-collector-controller",
            "concurrent-pod-gc-syncs",
            1,
            flags=(TERMINATED_POD_GC_THRESHOLD, POD_GC_CHECK_PERIOD, POD_GC_QUARANTINE_TIME),
        ),
        _lazy("reconcilers.controllers.podgc", "PodGCController"),
    ),
    Builtin(
        Declared(
            "replicaset-controller",
            "concurrent-replicaset-syncs",
            5,
            feature_gates=_TERMINATING_REPLICAS,
        ),
        _lazy("reconcilers.controllers.replicaset", "ReplicaSetController"),
    ),
    Builtin(
        Declared("replicationcontroller-controller", "concurrent-rc-syncs", 5),
        _lazy("reconcilers.controllers.replicationcontroller", "ReplicationControllerController"),
    ),
    Builtin(
        Declared(
            "root-ca-certificate-publisher-controller",
            "concurrent-root-ca-cert-publisher-syncs",
            1,
            flags=(ROOT_CA_FILE,),
        ),
        _lazy("reconcilers.controllers.rootcacertpublisher", "RootCACertPublisher"),
    ),
    Builtin(
        Declared("serviceaccount-controller", "concurrent-serviceaccount-syncs", 1),
        _lazy(
            "reconcilers.controllers.serviceaccount.serviceaccounts", "ServiceAccountsController"
        ),
    ),
    Builtin(
        Declared(
            "serviceaccount-token-controller",
            "concurrent-serviceaccount-token-syncs",
            5,
            flags=(PRIVATE_KEY_FILE, ROOT_CA_FILE),
        ),
        _lazy("reconcilers.controllers.serviceaccount.tokens", "TokensController"),
    ),
    Builtin(
        Declared(
            "statefulset-controller",
            "concurrent-statefulset-syncs",
            5,
            feature_gates={
                "MaxUnavailableStatefulSet": False,
                "StatefulSetSemanticRevisionComparison": True,
                "StaleControllerConsistencyStatefulSet": True,
            },
        ),
        _lazy("reconcilers.controllers.statefulset", "StatefulSetController"),
    ),
    Builtin(
        Declared("ttl-after-finished-controller", "concurrent-ttl-after-finished-syncs", 5),
        _lazy("reconcilers.controllers.ttlafterfinished", "TTLAfterFinishedController"),
    ),
)


class _Classes(Mapping[str, type[Controller]]):
    """Controller classes by canonical name, in order; a built-in's is imported the first time
    it is looked up (``in`` and iterating the names import nothing)."""

    def __init__(self) -> None:
        self._items: dict[str, type[Controller] | Builtin] = {}

    def add(self, name: str, item: type[Controller] | Builtin) -> None:
        self._items[name] = item

    def __getitem__(self, name: str) -> type[Controller]:
        item = self._items[name]
        if isinstance(item, Builtin):
            item = self._items[name] = item.load()
        return item

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def _builtin_classes() -> _Classes:
    classes = _Classes()
    for builtin in BUILTIN:
        classes.add(builtin.declared.name, builtin)
    return classes


IMPLEMENTED: Final[Mapping[str, type[Controller]]] = _builtin_classes()


class ControllerSelectionError(ValueError):
    pass


@dataclass(frozen=True)
class Registry:
    """Every name ``--controllers`` accepts, and the controllers behind them."""

    controllers: Mapping[str, type[Controller]]  # implemented, by canonical name
    names: Mapping[str, str]  # every accepted name and alias -> canonical name
    on_by_default: frozenset[str]
    skipped: frozenset[str]  # accepted, never run (cloud-provider controllers)
    problems: tuple[str, ...]  # one line per entry point that could not join
    broken: Mapping[str, str]  # the names of those that --controllers resolves to them: line
    # What the command line needs of each implemented controller, none of them imported.
    declared: Mapping[str, Declared] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        builtin: Iterable[type[Controller] | Builtin] = BUILTIN,
        entry_points: Iterable[EntryPoint] = (),
    ) -> Registry:
        controllers = _Classes()
        declared: dict[str, Declared] = {}
        for item in builtin:
            declaration = item.declared if isinstance(item, Builtin) else Declared.of(item)
            controllers.add(declaration.name, item)
            declared[declaration.name] = declaration
        names = {alias: c.name for c in KNOWN.values() for alias in (c.name, *c.aliases)}
        on = {name for name in controllers if name not in DISABLED_BY_DEFAULT}
        flags = {d.concurrency_flag for d in declared.values()}
        loaded = external.load(entry_points, reserved=names, flags=flags)
        for name, controller in loaded.controllers.items():
            controllers.add(name, controller)
            declared[name] = Declared.of(controller)
            names.update({alias: name for alias in (name, *controller.aliases)})
            if external.enabled_by_default(controller):
                on.add(name)
        # Chosen by its own name, a broken entry point fails with its problem; a name that is
        # taken (a clash) keeps meaning what it meant.
        broken = {name: line for name, line in loaded.problems.items() if name not in names}
        names.update({name: name for name in broken})
        problems = tuple(loaded.problems.values())
        return cls(controllers, names, frozenset(on), CLOUD_PROVIDER, problems, broken, declared)


@functools.cache
def available() -> Registry:
    """The built-ins and whatever the installed distributions register (loaded once)."""
    return Registry.build(entry_points=external.installed())


def declared_controllers() -> Mapping[str, Declared]:
    """Every controller this process can run, external ones included, as the command line
    declares their flags: no built-in controller is imported for it."""
    return available().declared


def implemented_controllers() -> Mapping[str, type[Controller]]:
    """Every controller this process can run, external ones included; looking one up imports
    it."""
    return available().controllers


def select_controllers(
    items: Iterable[str], registry: Registry | None = None
) -> tuple[type[Controller], ...]:
    """The controllers ``--controllers`` enables, as kube-controller-manager decides it."""
    registry = available() if registry is None else registry
    chosen = _canonical(items, registry)
    star = "*" in chosen

    def decision(name: str) -> bool | None:
        for item in chosen:
            if item == name:
                return True
            if item == "-" + name:
                return False
        return None

    broken = [line for name, line in registry.broken.items() if decision(name)]
    if broken:
        raise ControllerSelectionError("--controllers: " + "; ".join(broken))
    for line in registry.problems:
        log.error("%s", line)
    missing = [
        name
        for name in KNOWN
        if decision(name) and name not in registry.controllers and name not in registry.skipped
    ]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise ControllerSelectionError(
            f"--controllers: {', '.join(missing)} {verb} not implemented by kubus yet "
            f"(implemented: {', '.join(sorted(registry.controllers))})"
        )
    for name in sorted(registry.skipped):
        if decision(name):
            log.info("--controllers: skipping %s: a cloud-provider controller (KEP-2395)", name)
    enabled = []
    for name in registry.controllers:
        explicit = decision(name)
        if explicit or (explicit is None and star and name in registry.on_by_default):
            enabled.append(name)
    if not enabled:
        raise ControllerSelectionError("--controllers selects no controller kubus implements")
    return tuple(registry.controllers[name] for name in enabled)


def _canonical(items: Iterable[str], registry: Registry) -> list[str]:
    """The items with aliases replaced by canonical names; every unknown name is reported at
    once, as kube-controller-manager's validation aggregates them."""
    chosen: list[str] = []
    unknown: list[str] = []
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        if item == "*":
            chosen.append(item)
            continue
        bare = item.removeprefix("-")
        name = registry.names.get(bare)
        if name is None:
            unknown.append(bare)
        else:
            chosen.append(name if bare == item else "-" + name)
    if unknown:
        messages = [f"{_quoted(name)} is not in the list of known controllers" for name in unknown]
        raise ControllerSelectionError("--controllers: " + _aggregate(messages))
    return chosen


def _quoted(text: str) -> str:
    """Go's ``%q`` for printable text."""
    return json.dumps(text, ensure_ascii=False)


def _aggregate(messages: list[str]) -> str:
    """apimachinery's aggregate error text: one message as is, several in brackets."""
    unique = list(dict.fromkeys(messages))
    return unique[0] if len(unique) == 1 else "[" + ", ".join(unique) + "]"
