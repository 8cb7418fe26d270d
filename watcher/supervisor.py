"""The resource watchers of one watcher process, kept in step with what the apiserver serves.

One :class:`ResourceWatcher` per resource the ``--resources`` selection resolves to, each in
a task of the supervisor's TaskGroup. Discovery is asked again every 30 s (as
kube-controller-manager's garbage collector does: aggregated APIs come and go without any
event to watch) and, through the :class:`CrdFollower`, within a moment of any CRD change.
Each pass reconciles the watchers with discovery:

- a resource newly served and selected gets a watcher (after learning what the bus holds of
  it);
- a resource discovery now prefers in another version moves to that version;
- a resource no longer served at all is asked to list again: the ``404`` it then gets ends its
  watcher (see :mod:`watcher.resource_watcher`), with tombstones for anything of it still live
  on the bus and one log line. Its watch is not cancelled first: the delete events of a
  deleted CRD's objects may still be on their way through it;
- a group version discovery cannot describe right now (an aggregated API that is down) keeps
  its watchers, as the garbage collector keeps its monitors.

At start-up, a selected resource the bus holds live objects of that is served in no version
(a CRD deleted while no watcher ran) gets a watcher too, which finds the ``404`` and leaves
the tombstones.

A watcher that fails unexpectedly (a bug) is logged with its traceback and started again after
a backoff; the other resources carry on.

Readiness: ready once every resource selected at start-up has finished its initial list (or
resumed its watch); one that stops being served meanwhile no longer counts. Resources found
later do not make the process unready while they sync: readiness says the bus caught up with
the cluster as the watcher found it, and stays true while new resources are added (their
progress is ``kubus_watcher_resources{state="syncing"}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import aiohttp
from nats.js.kv import KeyValue

from bus.layout import BusLayout
from bus.subjects import ResourceType
from kubus.kube import ApiResource, Discovery, KubeApiError, KubeClient, discover_all
from kubus.serving import Check
from watcher import metrics
from watcher.config import ResourceSelection, is_secret
from watcher.crds import CrdFollower, GroupResource
from watcher.publisher import BusPublisher
from watcher.resource_watcher import ResourceWatcher

__all__ = ["WatchSupervisor"]

log = logging.getLogger(__name__)

_CRDS: Final = ("apiextensions.k8s.io", "v1", "customresourcedefinitions")
# A burst of CRD changes (kubectl apply of a bundle) is discovered once.
_SETTLE: Final = 0.2
# Right after a CRD change, while an Established CRD is not in discovery yet.
_QUICK_RETRY: Final = 0.5
_QUICK_RETRIES: Final = 20
_RESTART_MIN, _RESTART_MAX = 1.0, 300.0


@dataclass
class _Watch:
    api: ApiResource
    watcher: ResourceWatcher
    task: asyncio.Task[None] | None = field(default=None)


class WatchSupervisor:
    def __init__(
        self,
        *,
        selection: ResourceSelection,
        kube: KubeClient,
        publisher: BusPublisher,
        checkpoints: KeyValue,
        layout: BusLayout,
        max_payload: int,
        mirror_secrets: bool,
        rediscover_every: float = 30.0,
    ) -> None:
        self._selection = selection
        self._kube = kube
        self._publisher = publisher
        self._checkpoints = checkpoints
        self._layout = layout
        self._max_payload = max_payload
        self._mirror_secrets = mirror_secrets
        self._every = rediscover_every
        self._watches: dict[ResourceType, _Watch] = {}
        self._group: asyncio.TaskGroup | None = None
        self._wake = asyncio.Event()
        self._quick_retries = 0
        self._crds: CrdFollower | None = None
        self._version_probe: ApiResource | None = None
        # For readiness: resources synced once, and resources whose watch ended for good.
        self._synced_once: set[ResourceType] = set()
        self._ended: set[ResourceType] = set()
        metrics.RESOURCES.labels("syncing").set_function(
            lambda: sum(not w.watcher.synced.is_set() for w in self._watches.values())
        )
        metrics.RESOURCES.labels("watching").set_function(
            lambda: sum(w.watcher.synced.is_set() for w in self._watches.values())
        )

    @property
    def watched(self) -> dict[ResourceType, ApiResource]:
        return {resource: entry.api for resource, entry in self._watches.items()}

    def synced_check(self, resource: ResourceType) -> Check:
        """Readiness of one resource selected at start-up (see the module's docstring)."""

        def check() -> str | None:
            if resource in self._synced_once or resource in self._ended:
                return None
            entry = self._watches.get(resource)
            if entry is None:
                return "not started"
            if entry.watcher.synced.is_set():
                self._synced_once.add(resource)
                return None
            return "initial list not finished"

        return check

    async def run(self, discovery: Discovery, initial: Mapping[ResourceType, ApiResource]) -> None:
        """Until cancelled. ``initial`` is what the selection resolved to in ``discovery``;
        the bus's state for it is loaded already."""
        self._note_probe(discovery)
        async with asyncio.TaskGroup() as group:
            self._group = group
            for resource, api in initial.items():
                self._start(resource, api, load=False)
            for resource in self._unserved_on_bus(discovery, initial):
                log.info("%s: on the bus, no longer served; checking", resource)
                self._start(resource, _unserved(resource), load=False)
            crds = discovery.find(*_CRDS)
            if crds is not None:
                self._crds = CrdFollower(
                    kube=self._kube, api=crds, changed=self._crds_changed, removed=self._removed
                )
                group.create_task(self._follow_crds(self._crds), name="follow CRDs")
            group.create_task(self._rediscover(), name="rediscover")

    def _unserved_on_bus(
        self, discovery: Discovery, initial: Mapping[ResourceType, ApiResource]
    ) -> list[ResourceType]:
        """Selected resources the bus holds live objects of, that no version of which is served
        now (a CRD deleted while no watcher ran): their watchers list, get ``404``, and leave
        tombstones. A resource served in another version keeps its old subjects."""
        served = {(api.group, api.name) for api in discovery.resources.values()}
        return sorted(
            resource
            for resource in self._publisher.live_resources()
            if resource not in initial
            and (resource.group, resource.resource) not in served
            and (resource.group, resource.version) not in discovery.failed
            and self._selection.would_watch(resource)
        )

    # --- discovery ------------------------------------------------------------------------

    async def _follow_crds(self, follower: CrdFollower) -> None:
        failures = 0
        while True:
            try:
                await follower.run()
                return  # cannot list CRDs: the periodic re-discovery has to do
            except Exception:
                failures += 1
                delay = min(_RESTART_MAX, _RESTART_MIN * 2 ** min(failures, 10))
                log.exception("following CRDs failed; starting again in %.0fs", delay)
                await asyncio.sleep(delay)

    def _crds_changed(self) -> None:
        self._quick_retries = _QUICK_RETRIES
        self._wake.set()

    def _removed(self, group_resource: GroupResource) -> None:
        """A CRD was deleted: its watchers list again now rather than at the next pass."""
        for resource, entry in self._watches.items():
            if (resource.group, resource.resource) == group_resource:
                entry.watcher.recheck()

    async def _rediscover(self) -> None:
        delay = self._every
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            if self._wake.is_set():
                await asyncio.sleep(_SETTLE)
            self._wake.clear()
            delay = self._every
            try:
                discovery = await discover_all(self._kube)
            except (KubeApiError, aiohttp.ClientError, TimeoutError, OSError) as error:
                log.warning("discovery failed (%s); asking again in %.0fs", error, delay)
                continue
            self._note_probe(discovery)
            await self._reconcile(discovery)
            if self._quick_retries > 0 and self._pending(discovery):
                self._quick_retries -= 1
                delay = _QUICK_RETRY

    def _pending(self, discovery: Discovery) -> bool:
        """An Established CRD that discovery does not list yet (it follows a moment later)."""
        if self._crds is None:
            return False
        listed = {(api.group, api.name) for api in discovery.resources.values()}
        return any(served not in listed for served in self._crds.served.values())

    async def _reconcile(self, discovery: Discovery) -> None:
        desired = self._selection.resolve(discovery).watch
        for resource, entry in list(self._watches.items()):
            api = desired.get(resource)
            if api is not None:
                if (api.namespaced, api.kind) != (entry.api.namespaced, entry.api.kind):
                    log.info("%s: now served as a different kind or scope; watching it anew", api)
                    await self._stop(resource)
                continue
            if (resource.group, resource.version) in discovery.failed:
                continue  # not confirmed either way: keep it, as the garbage collector does
            moved = next(
                (
                    other
                    for other in desired
                    if (other.group, other.resource) == (resource.group, resource.resource)
                ),
                None,
            )
            if moved is not None:
                log.info("%s: discovery now prefers %s; moving the watch there", resource, moved)
                await self._stop(resource)
            else:
                entry.watcher.recheck()
        for resource, api in desired.items():
            if resource not in self._watches:
                log.info("%s: found by discovery; watching it", resource)
                self._start(resource, api, load=True)

    def _note_probe(self, discovery: Discovery) -> None:
        self._version_probe = discovery.find(*_CRDS) or discovery.find("", "v1", "namespaces")

    async def _current_version(self) -> str:
        """The apiserver's resourceVersion now: a one-item list of a resource always served."""
        probe = self._version_probe
        if probe is None:
            raise KubeApiError(404, "NotFound", "no resource to read the resourceVersion from")
        page = await self._kube.list_page(probe, limit=1)
        return page.metadata.resource_version

    # --- watchers -------------------------------------------------------------------------

    def _start(self, resource: ResourceType, api: ApiResource, *, load: bool) -> None:
        assert self._group is not None, "started outside run()"
        entry = _Watch(api, self._new_watcher(resource, api))
        self._watches[resource] = entry
        self._ended.discard(resource)
        entry.task = self._group.create_task(
            self._supervise(resource, entry, load=load), name=f"watch {resource}"
        )

    async def _stop(self, resource: ResourceType) -> None:
        entry = self._watches.pop(resource, None)
        if entry is not None and entry.task is not None:
            entry.task.cancel()
            await asyncio.wait([entry.task])

    def _new_watcher(self, resource: ResourceType, api: ApiResource) -> ResourceWatcher:
        return ResourceWatcher(
            api=api,
            resource=resource,
            kube=self._kube,
            publisher=self._publisher,
            checkpoints=self._checkpoints,
            layout=self._layout,
            max_payload=self._max_payload,
            current_version=self._current_version,
            metadata_only=is_secret(resource) and not self._mirror_secrets,
        )

    async def _supervise(self, resource: ResourceType, entry: _Watch, *, load: bool) -> None:
        failures = 0
        try:
            while True:
                try:
                    if load:
                        await self._publisher.load([resource])
                        load = False
                    await entry.watcher.run()
                    return  # no longer served
                except Exception:
                    failures += 1
                    delay = min(_RESTART_MAX, _RESTART_MIN * 2 ** min(failures, 10))
                    metrics.WATCH_RESTARTS.labels(str(resource)).inc()
                    log.exception("%s: watcher failed; starting it again in %.0fs", resource, delay)
                    await asyncio.sleep(delay)
                    entry.watcher = self._new_watcher(resource, entry.api)
        finally:
            if self._watches.get(resource) is entry:
                del self._watches[resource]
            if resource not in self._watches:
                self._ended.add(resource)


def _unserved(resource: ResourceType) -> ApiResource:
    """What a watcher needs to find out that a resource is gone: its path."""
    return ApiResource(resource.group, resource.version, resource.resource, "", False, frozenset())
