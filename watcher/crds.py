"""Following CustomResourceDefinitions, to know when discovery is worth asking again.

A CRD's resource is served (and in discovery) once the CRD is Established; it goes when the
CRD is deleted, after the apiserver has deleted its objects. The follower lists and watches
CRDs (nothing of them goes on the bus from here: with ``all``, the CRDs themselves are one
more watched resource) and tells the supervisor of every change and of every removal, so a
new CRD's objects reach the bus within a second or two rather than at the next periodic
re-discovery.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Final

import aiohttp
import msgspec

from kubus.kube import ApiResource, GoneError, KubeApiError, KubeClient

__all__ = ["CrdFollower", "GroupResource"]

log = logging.getLogger(__name__)

GroupResource = tuple[str, str]

_PAGE_SIZE: Final = 500
_BACKOFF_MIN, _BACKOFF_MAX = 0.5, 30.0
# Answers that retrying will not change: no permission to list CRDs, or no apiextensions API.
_GIVE_UP: Final = frozenset({401, 403, 404})


class _Names(msgspec.Struct):
    plural: str = ""


class _Version(msgspec.Struct):
    name: str = ""
    served: bool = False


class _Spec(msgspec.Struct):
    group: str = ""
    names: _Names = msgspec.field(default_factory=_Names)
    versions: list[_Version] | None = None


class _Condition(msgspec.Struct):
    type: str = ""
    status: str = ""


class _Status(msgspec.Struct):
    conditions: list[_Condition] | None = None  # null until the apiserver has looked at it


class _Meta(msgspec.Struct):
    name: str = ""


class _Crd(msgspec.Struct):
    metadata: _Meta = msgspec.field(default_factory=_Meta)
    spec: _Spec = msgspec.field(default_factory=_Spec)
    status: _Status | None = None

    def served(self) -> GroupResource | None:
        """The CRD's group and resource, if the apiserver serves it now."""
        conditions = (self.status.conditions if self.status else None) or []
        established = any(c.type == "Established" and c.status == "True" for c in conditions)
        if established and any(v.served for v in self.spec.versions or []):
            return (self.spec.group, self.spec.names.plural)
        return None


_crd_decoder = msgspec.json.Decoder(_Crd)


class CrdFollower:
    def __init__(
        self,
        *,
        kube: KubeClient,
        api: ApiResource,
        changed: Callable[[], None],
        removed: Callable[[GroupResource], None],
    ) -> None:
        """``changed`` after any change; ``removed`` with the group and resource of a CRD that
        was deleted."""
        self._kube = kube
        self._api = api
        self._changed = changed
        self._removed = removed
        # CRD name -> the group and resource it serves, for every CRD that is Established.
        self.served: dict[str, GroupResource] = {}

    async def run(self) -> None:
        """Until cancelled; ends by itself, with one warning, if CRDs cannot be listed."""
        resource_version: str | None = None
        failures = 0
        while True:
            try:
                if resource_version is None:
                    resource_version = await self._list()
                resource_version = await self._watch(resource_version)
                failures = 0
            except GoneError:
                resource_version = None
            except KubeApiError as error:
                if error.status in _GIVE_UP:
                    log.warning(
                        "cannot follow CustomResourceDefinitions (%s): new and deleted CRDs "
                        "are found by the periodic re-discovery only",
                        error,
                    )
                    return
                failures = await self._back_off(failures, error)
            except (aiohttp.ClientError, TimeoutError, OSError) as error:
                failures = await self._back_off(failures, error)

    async def _back_off(self, failures: int, error: Exception) -> int:
        delay = min(_BACKOFF_MAX, _BACKOFF_MIN * 2 ** min(failures + 1, 8))
        delay *= random.uniform(0.8, 1.2)
        log.warning("CRD watch failed (%s); retrying in %.1fs", error, delay)
        await asyncio.sleep(delay)
        return failures + 1

    async def _list(self) -> str:
        served: dict[str, GroupResource] = {}
        version = ""
        continue_token: str | None = None
        while True:
            page = await self._kube.list_page(
                self._api, limit=_PAGE_SIZE, continue_token=continue_token
            )
            version = version or page.metadata.resource_version
            for item in page.items:
                crd = _crd_decoder.decode(item)
                if (group_resource := crd.served()) is not None:
                    served[crd.metadata.name] = group_resource
            continue_token = page.metadata.continue_
            if not continue_token:
                break
        # CRDs deleted while nothing watched: a list is all that tells of them.
        for name, group_resource in self.served.items():
            if name not in served:
                self._removed(group_resource)
        self.served = served
        self._changed()
        return version

    async def _watch(self, resource_version: str) -> str:
        async with self._kube.watch(
            self._api,
            resource_version=resource_version,
            timeout_seconds=random.randint(300, 600),
        ) as events:
            async for event in events:
                resource_version = event.object.metadata.resource_version
                if event.type == "BOOKMARK":
                    continue
                crd = _crd_decoder.decode(event.raw)
                name = crd.metadata.name
                if event.type == "DELETED":
                    gone = self.served.pop(name, None) or (crd.spec.group, crd.spec.names.plural)
                    self._removed(gone)
                elif (group_resource := crd.served()) is not None:
                    self.served[name] = group_resource
                else:
                    self.served.pop(name, None)
                self._changed()
        return resource_version
