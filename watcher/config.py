"""What a watcher watches and where it publishes."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from bus.connection import parse_servers
from bus.errors import BusError
from bus.layout import BusLayout
from bus.streams import MAX_REPLICAS
from bus.subjects import ResourceType
from kubus.kube import ApiResource, Discovery
from kubus.serving import BindAddress

__all__ = [
    "ALL",
    "DEFAULT_RESOURCES",
    "MAX_STREAM_REPLICAS",
    "MIN_TOMBSTONE_TTL",
    "NOT_IN_ALL",
    "SECRETS",
    "WATCH_VERBS",
    "Resolution",
    "ResourceSelection",
    "WatcherConfig",
    "WatcherConfigError",
    "is_secret",
    "parse_layout",
    "parse_nats_url",
    "parse_resources",
]

DEFAULT_RESOURCES: Final = tuple(
    ResourceType.parse(text)
    for text in (
        "v1/pods",
        "v1/services",
        "v1/endpoints",
        "v1/namespaces",
        "v1/nodes",
        "v1/serviceaccounts",
        "v1/configmaps",
        "v1/persistentvolumes",
        "v1/persistentvolumeclaims",
        "storage.k8s.io/v1/storageclasses",
        "v1/replicationcontrollers",
        "apps/v1/replicasets",
        "apps/v1/deployments",
        "apps/v1/statefulsets",
        "apps/v1/daemonsets",
        "apps/v1/controllerrevisions",
        "batch/v1/jobs",
        "batch/v1/cronjobs",
        "policy/v1/poddisruptionbudgets",
        "discovery.k8s.io/v1/endpointslices",
    )
)
SECRETS: Final = ResourceType("", "v1", "secrets")
MAX_STREAM_REPLICAS: Final = MAX_REPLICAS  # JetStream's own limit
MIN_TOMBSTONE_TTL: Final = 1.0  # a NATS message TTL is whole seconds, at least one


class WatcherConfigError(ValueError):
    """A watcher setting that cannot work; the message names the flag."""


ALL: Final = "all"
WATCH_VERBS: Final = frozenset({"list", "watch"})
# Group and resource that ``all`` leaves out unless named (see ResourceSelection).
NOT_IN_ALL: Final = frozenset({("", "events"), ("events.k8s.io", "events")})


@dataclass(frozen=True)
class WatcherConfig:
    nats_url: str  # one server or a comma-separated list
    resources: ResourceSelection
    layout: BusLayout
    kubeconfig: Path | None = None
    health: BindAddress | None = None
    metrics: BindAddress | None = None
    tombstone_ttl: float = 24 * 3600.0
    stream_replicas: int = 1
    # --nats-tls-ca: what TLS connections to NATS are verified with (None: the system store).
    nats_tls: ssl.SSLContext | None = None
    max_in_flight: int = 1024
    # Secrets in full; without it they travel as metadata only.
    mirror_secrets: bool = False
    # How often discovery is asked again (kube-controller-manager's GC: 30 s).
    rediscover_every: float = 30.0


@dataclass(frozen=True)
class Resolution:
    """A selection against what discovery found: what to watch, and what cannot be."""

    watch: dict[ResourceType, ApiResource]
    # Named in --resources, not served (at start-up an error; later, until it is served).
    unknown: tuple[ResourceType, ...] = ()
    # Named in --resources, served without list and watch.
    unwatchable: tuple[ResourceType, ...] = ()
    # Named in --resources, in a group version discovery could not describe: why.
    undiscovered: dict[ResourceType, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ResourceSelection:
    """What ``--resources`` asks for, before discovery says what is served.

    ``everything`` (the token ``all``) adds every resource discovery finds that supports list
    and watch, in the version client-go's ServerPreferredResources picks. A resource named
    explicitly (or by ``*``) is watched in the version named, instead of the preferred one.
    An exclusion removes the named group/version/resource, and from what ``all`` finds the
    resource of that group and name in whichever version discovery prefers.

    ``all`` leaves Events out (core and ``events.k8s.io``): they are the busiest resource of a
    cluster and no controller that reads everything wants them (kcm's garbage collector
    ignores them, its namespace controller deletes them through the apiserver). Naming one
    adds it.
    """

    listed: tuple[ResourceType, ...] = ()
    excluded: frozenset[ResourceType] = frozenset()
    everything: bool = False

    def resolve(self, discovery: Discovery) -> Resolution:
        watch: dict[ResourceType, ApiResource] = {}
        unknown: list[ResourceType] = []
        unwatchable: list[ResourceType] = []
        undiscovered: dict[ResourceType, str] = {}
        for resource in self.listed:
            api = discovery.find(resource.group, resource.version, resource.resource)
            if api is None:
                reason = discovery.failed.get((resource.group, resource.version))
                if reason is None:
                    unknown.append(resource)
                else:
                    undiscovered[resource] = reason
            elif not api.verbs >= WATCH_VERBS:
                unwatchable.append(resource)
            else:
                watch[resource] = api
        if self.everything:
            named = {(r.group, r.resource) for r in (*self.listed, *self.excluded)}
            for api in discovery.preferred:
                if (api.group, api.name) in NOT_IN_ALL or (api.group, api.name) in named:
                    continue
                if api.verbs >= WATCH_VERBS:
                    watch.setdefault(ResourceType(api.group, api.version, api.name), api)
        return Resolution(watch, tuple(unknown), tuple(unwatchable), undiscovered)

    def would_watch(self, resource: ResourceType) -> bool:
        """Whether the selection takes ``resource`` when discovery serves it (as preferred)."""
        if resource in self.listed:
            return True
        named = {(r.group, r.resource) for r in (*self.listed, *self.excluded)}
        group_resource = (resource.group, resource.resource)
        return self.everything and group_resource not in named and group_resource not in NOT_IN_ALL


def parse_resources(text: str) -> ResourceSelection:
    """``--resources``: ``*`` is the default set, ``all`` every resource discovery finds,
    ``G/V/R`` adds one, ``-G/V/R`` removes one (wherever it is in the list)."""
    chosen: list[ResourceType] = []
    removed: set[ResourceType] = set()
    everything = False
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item == "*":
            chosen.extend(DEFAULT_RESOURCES)
        elif item == ALL:
            everything = True
        elif item.startswith("-"):
            removed.add(_parse(item[1:]))
        else:
            chosen.append(_parse(item))
    listed = tuple(dict.fromkeys(r for r in chosen if r not in removed))
    if not listed and not everything:
        raise WatcherConfigError(f"--resources {text!r} selects no resource")
    return ResourceSelection(listed, frozenset(removed), everything)


def is_secret(resource: ResourceType) -> bool:
    return resource.group == SECRETS.group and resource.resource == SECRETS.resource


def parse_nats_url(text: str, *, source: str = "--nats-url") -> str:
    """``--nats-url`` (or where its value came from, ``source``), checked before anything
    connects: one NATS URL the watcher can use, or a comma-separated list of a cluster's. The
    message never holds their credentials."""
    try:
        parse_servers(text)
    except BusError as error:
        raise WatcherConfigError(f"{source}: {error}") from None
    return text


def parse_layout(prefix: str, partitions: int) -> BusLayout:
    """``--bus-prefix`` and ``--partitions``, as the bus will name and place things."""
    try:
        BusLayout(prefix=prefix)
    except BusError as error:
        raise WatcherConfigError(f"--bus-prefix: {error}") from None
    try:
        return BusLayout(prefix=prefix, partitions=partitions)
    except BusError as error:
        raise WatcherConfigError(f"--partitions: {error}") from None


def _parse(text: str) -> ResourceType:
    try:
        return ResourceType.parse(text)
    except ValueError as error:
        raise WatcherConfigError(f"--resources: {error}") from error
