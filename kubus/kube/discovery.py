"""Discovery of every resource the apiserver serves, and the version to use for each.

Two requests in the aggregated format (``/api`` and ``/apis`` as APIGroupDiscoveryList, the
apiserver's default since Kubernetes 1.30); against a server that answers in the legacy format,
one more request per group version, made concurrently. Subresources (``pods/status``) are
left out; so are group versions the server reports as stale (an aggregated API that does not
answer), which are returned as ``failed`` instead, so that a caller can keep what it had for
them rather than take them for gone.

The version chosen per group and resource is client-go's ``ServerPreferredResources``: the
group's preferred version when it serves the resource, else the first version (in the
server's order of preference) that does. kube-controller-manager's garbage collector and
namespace controller pick their resources this way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

import aiohttp
import msgspec

from kubus.kube.client import ApiResource, KubeClient
from kubus.kube.errors import KubeApiError

__all__ = [
    "ApiGroup",
    "Discovery",
    "GroupVersion",
    "discover_all",
    "parse_aggregated",
    "select_preferred",
]

GroupVersion = tuple[str, str]

_AGGREGATED: Final = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
# Offered first; a server without the aggregated format answers with the legacy one.
_ACCEPT: Final = _AGGREGATED + ",application/json"


@dataclass(frozen=True)
class ApiGroup:
    """One API group as discovery lists it: versions in order of preference."""

    name: str
    preferred: str
    versions: tuple[tuple[str, tuple[ApiResource, ...]], ...]


@dataclass(frozen=True)
class Discovery:
    """What the apiserver serves, at one moment."""

    # Every served group/version/resource, subresources left out.
    resources: Mapping[tuple[str, str, str], ApiResource]
    # One version per group and resource, as ServerPreferredResources picks it.
    preferred: tuple[ApiResource, ...]
    # Group versions the server could not describe (e.g. an aggregated API that is down): why.
    failed: Mapping[GroupVersion, str] = field(default_factory=dict)

    def find(self, group: str, version: str, resource: str) -> ApiResource | None:
        return self.resources.get((group, version, resource))


# --- the aggregated format (apidiscovery.k8s.io/v2) ----------------------------------------


class _Kind(msgspec.Struct):
    kind: str = ""


class _V2Resource(msgspec.Struct, rename="camel"):
    resource: str
    response_kind: _Kind = msgspec.field(default_factory=_Kind)
    scope: str = ""
    verbs: list[str] = msgspec.field(default_factory=list)


class _V2Version(msgspec.Struct):
    version: str
    resources: list[_V2Resource] = msgspec.field(default_factory=list)
    freshness: str = ""


class _Name(msgspec.Struct):
    name: str = ""


class _V2Group(msgspec.Struct):
    metadata: _Name = msgspec.field(default_factory=_Name)
    versions: list[_V2Version] = msgspec.field(default_factory=list)


class _V2List(msgspec.Struct):
    items: list[_V2Group] = msgspec.field(default_factory=list)


_v2_decoder = msgspec.json.Decoder(_V2List)


def parse_aggregated(body: bytes, failed: dict[GroupVersion, str]) -> list[ApiGroup]:
    """The groups of one APIGroupDiscoveryList; stale group versions go into ``failed``."""
    groups = []
    for item in _v2_decoder.decode(body).items:
        name = item.metadata.name
        versions = []
        for version in item.versions:
            if version.freshness == "Stale":
                failed[name, version.version] = "discovery reports it stale"
                continue
            resources = tuple(
                ApiResource(
                    name,
                    version.version,
                    entry.resource,
                    entry.response_kind.kind,
                    entry.scope == "Namespaced",
                    frozenset(entry.verbs),
                )
                for entry in version.resources
            )
            versions.append((version.version, resources))
        if versions:
            # The aggregated format lists versions in order of preference, the preferred first.
            groups.append(ApiGroup(name, versions[0][0], tuple(versions)))
    return groups


# --- the legacy format (APIVersions, APIGroupList, APIResourceList) --------------------------


class _APIVersions(msgspec.Struct):
    versions: list[str] = msgspec.field(default_factory=list)


class _GroupVersionEntry(msgspec.Struct):
    version: str = ""


class _LegacyGroup(msgspec.Struct, rename="camel"):
    name: str = ""
    versions: list[_GroupVersionEntry] = msgspec.field(default_factory=list)
    preferred_version: _GroupVersionEntry = msgspec.field(default_factory=_GroupVersionEntry)


class _APIGroupList(msgspec.Struct):
    groups: list[_LegacyGroup] = msgspec.field(default_factory=list)


class _LegacyResource(msgspec.Struct):
    name: str
    kind: str = ""
    namespaced: bool = False
    verbs: list[str] = msgspec.field(default_factory=list)


class _APIResourceList(msgspec.Struct):
    resources: list[_LegacyResource] = msgspec.field(default_factory=list)


async def _legacy_groups(
    kube: KubeClient, core: bytes, apis: bytes, failed: dict[GroupVersion, str]
) -> list[ApiGroup]:
    listed: list[tuple[str, str, list[str]]] = []
    core_versions = msgspec.json.decode(core, type=_APIVersions).versions
    if core_versions:
        listed.append(("", core_versions[0], core_versions))
    for entry in msgspec.json.decode(apis, type=_APIGroupList).groups:
        versions = [v.version for v in entry.versions]
        if versions:
            listed.append((entry.name, entry.preferred_version.version or versions[0], versions))

    fetched: dict[GroupVersion, tuple[ApiResource, ...]] = {}

    async def fetch(group: str, version: str) -> None:
        path = f"/apis/{group}/{version}" if group else f"/api/{version}"
        try:
            body, _type = await kube.get_document(path, accept="application/json")
        except (KubeApiError, aiohttp.ClientError, TimeoutError) as error:
            failed[group, version] = str(error) or type(error).__name__
            return
        fetched[group, version] = tuple(
            ApiResource(group, version, r.name, r.kind, r.namespaced, frozenset(r.verbs))
            for r in msgspec.json.decode(body, type=_APIResourceList).resources
            if "/" not in r.name  # a subresource
        )

    async with asyncio.TaskGroup() as requests:
        for name, _preferred, versions in listed:
            for version in versions:
                requests.create_task(fetch(name, version))
    return [
        ApiGroup(
            name,
            preferred,
            tuple((v, fetched[name, v]) for v in versions if (name, v) in fetched),
        )
        for name, preferred, versions in listed
    ]


# --- both -----------------------------------------------------------------------------------


def select_preferred(groups: Iterable[ApiGroup]) -> tuple[ApiResource, ...]:
    """Per group and resource one version: the group's preferred one if it serves the
    resource, else the first in the group's order that does."""
    chosen: dict[tuple[str, str], ApiResource] = {}
    for group in groups:
        for version, resources in group.versions:
            for resource in resources:
                key = (group.name, resource.name)
                if key in chosen and version != group.preferred:
                    continue
                chosen[key] = resource
    return tuple(chosen.values())


async def discover_all(kube: KubeClient, *, aggregated: bool = True) -> Discovery:
    """Every resource the apiserver serves; raises :class:`KubeApiError` only when discovery
    itself fails (``/api`` or ``/apis``), a failing group version goes into ``failed``.
    ``aggregated=False`` asks for the legacy format only (as against an older server)."""
    failed: dict[GroupVersion, str] = {}
    accept = _ACCEPT if aggregated else "application/json"
    core, core_type = await kube.get_document("/api", accept=accept)
    apis, apis_type = await kube.get_document("/apis", accept=accept)
    if _is_aggregated(core_type) and _is_aggregated(apis_type):
        groups = parse_aggregated(core, failed) + parse_aggregated(apis, failed)
    else:
        if _is_aggregated(core_type) or _is_aggregated(apis_type):  # one of each: legacy both
            core, _type = await kube.get_document("/api", accept="application/json")
            apis, _type = await kube.get_document("/apis", accept="application/json")
        groups = await _legacy_groups(kube, core, apis, failed)
    return Discovery(
        resources={
            (resource.group, resource.version, resource.name): resource
            for group in groups
            for _version, resources in group.versions
            for resource in resources
        },
        preferred=select_preferred(groups),
        failed=failed,
    )


def _is_aggregated(content_type: str) -> bool:
    base, _, parameters = content_type.partition(";")
    if base.strip() != "application/json":
        return False
    found = dict(
        (key.strip(), value.strip())
        for key, _, value in (part.partition("=") for part in parameters.split(";"))
    )
    return (
        found.get("g") == "apidiscovery.k8s.io"
        and found.get("v") == "v2"
        and found.get("as") == "APIGroupDiscoveryList"
    )
