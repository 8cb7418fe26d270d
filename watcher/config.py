"""What a watcher watches and where it publishes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bus.connection import ServerUrl
from bus.errors import BusError
from bus.layout import BusLayout
from bus.subjects import ResourceType
from kubus.serving import BindAddress

__all__ = [
    "DEFAULT_RESOURCES",
    "MAX_STREAM_REPLICAS",
    "MIN_TOMBSTONE_TTL",
    "SECRETS",
    "WatcherConfig",
    "WatcherConfigError",
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
        "apps/v1/replicasets",
        "apps/v1/deployments",
        "apps/v1/statefulsets",
        "apps/v1/daemonsets",
        "batch/v1/jobs",
        "batch/v1/cronjobs",
        "discovery.k8s.io/v1/endpointslices",
    )
)
SECRETS: Final = ResourceType("", "v1", "secrets")
MAX_STREAM_REPLICAS: Final = 5  # JetStream's own limit
MIN_TOMBSTONE_TTL: Final = 1.0  # a NATS message TTL is whole seconds, at least one


class WatcherConfigError(ValueError):
    """A watcher setting that cannot work; the message names the flag."""


@dataclass(frozen=True)
class WatcherConfig:
    nats_url: str
    resources: tuple[ResourceType, ...]
    layout: BusLayout
    kubeconfig: Path | None = None
    health: BindAddress | None = None
    metrics: BindAddress | None = None
    tombstone_ttl: float = 24 * 3600.0
    stream_replicas: int = 1
    max_in_flight: int = 1024


def parse_resources(text: str, *, mirror_secrets: bool) -> tuple[ResourceType, ...]:
    """``--resources``: ``*`` is the default set, ``G/V/R`` adds, ``-G/V/R`` removes.

    Secrets are refused unless ``--mirror-secrets`` is set: they must not reach the bus by
    accident.
    """
    chosen: list[ResourceType] = []
    removed: set[ResourceType] = set()
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item == "*":
            chosen.extend(DEFAULT_RESOURCES)
        elif item.startswith("-"):
            removed.add(_parse(item[1:]))
        else:
            chosen.append(_parse(item))
    resources = tuple(dict.fromkeys(r for r in chosen if r not in removed))
    if SECRETS in resources and not mirror_secrets:
        raise WatcherConfigError(
            "--resources names v1/secrets, but Secrets are kept off the bus unless "
            "--mirror-secrets is set"
        )
    if not resources:
        raise WatcherConfigError(f"--resources {text!r} selects no resource")
    return resources


def parse_nats_url(text: str, *, source: str = "--nats-url") -> str:
    """``--nats-url`` (or where its value came from, ``source``), checked before anything
    connects: one NATS URL the watcher can use. The message never holds its credentials."""
    try:
        ServerUrl.parse(text)
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
