"""One resource, from the apiserver to the bus: list, diff, watch, and again after 410 Gone.

The loop, as client-go's reflector runs it, with the bus as the store:

1. on start, resume from the resourceVersion stored in the watcher bucket, if any; else
2. list (paginated), publish what is newer than the bus, and publish a tombstone for every
   object the bus holds that the list lacks (deletes missed while no watcher ran);
3. watch from there with bookmarks; on ``410 Gone`` go back to 2, on any other failure
   re-open the watch after a jittered backoff.

The resume point is stored only behind acknowledged publishes, so a restart never skips an
event that did not reach the bus.

A list answered ``404`` means the resource is no longer served (its CRD was deleted, its
aggregated API went away): that list is empty, so every object of the resource still live on
the bus gets a tombstone, and the watcher ends, with one log line. A deleted CRD's objects
are deleted by the apiserver before the CRD goes, and their watch events normally bring
those tombstones first; this catches any the watch did not deliver. A watch answered ``404``
goes straight to that list.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Final

import aiohttp
from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from bus.envelope import EventType, resource_version_number
from bus.layout import BusLayout
from bus.subjects import ResourceType
from kubus.kube import ApiResource, GoneError, KubeApiError, KubeClient
from watcher import metrics
from watcher.events import MetadataOnlyEventFactory, ObjectEventFactory
from watcher.publisher import BusPublisher, ObjectEvent

__all__ = ["ResourceWatcher"]

log = logging.getLogger(__name__)

_PAGE_SIZE: Final = 500
_BACKOFF_MIN, _BACKOFF_MAX = 0.5, 30.0
_CHECKPOINT_EVERY: Final = 2.0
_EVENT_TYPES: Final = {event_type.value: event_type for event_type in EventType}


class ResourceWatcher:
    def __init__(
        self,
        *,
        api: ApiResource,
        resource: ResourceType,
        kube: KubeClient,
        publisher: BusPublisher,
        checkpoints: KeyValue,
        layout: BusLayout,
        max_payload: int,
        current_version: Callable[[], Awaitable[str]],
        metadata_only: bool = False,
        watch_timeout: int = 300,
    ) -> None:
        """``current_version`` returns the apiserver's resourceVersion now: what the
        tombstones of a resource that is no longer served are stamped with."""
        self.api = api
        self.resource = resource
        self.metadata_only = metadata_only
        self.synced = asyncio.Event()
        self._current_version = current_version
        self._recheck = False
        self._watch_scope: asyncio.Timeout | None = None
        self._retired = False
        self._kube = kube
        self._publisher = publisher
        self._checkpoints = checkpoints
        self._layout = layout
        self._watch_timeout = watch_timeout
        self._label = str(resource)
        # One resume point per representation: a watcher that publishes the other one
        # (--mirror-secrets switched) lists, and so republishes every object in its own.
        full_key, metadata_key = f"rv.{resource.tokens}", f"rv.{resource.tokens}.metadata"
        self._checkpoint_key = metadata_key if metadata_only else full_key
        self._other_key = full_key if metadata_only else metadata_key
        factory = MetadataOnlyEventFactory if metadata_only else ObjectEventFactory
        self._object_event = factory(
            api=api,
            resource=resource,
            layout=layout,
            max_payload=max_payload,
            known=publisher.known,
        )
        # Resource versions submitted, in order, with the future of their publish.
        self._progress: collections.deque[tuple[str, asyncio.Future[None] | None]] = (
            collections.deque()
        )
        self._stored: str | None = None
        # Read at scrape time: a gauge's set() takes a lock, once per event.
        self._last_event_time = 0.0
        metrics.LAST_EVENT_TIMESTAMP.labels(self._label).set_function(lambda: self._last_event_time)

    async def run(self) -> None:
        """Until cancelled, or until the resource is no longer served; a final checkpoint is
        stored on the way out."""
        try:
            async with asyncio.TaskGroup() as tasks:
                checkpointing = tasks.create_task(self._checkpoint_loop())
                try:
                    await self._run()
                finally:
                    checkpointing.cancel()
        finally:
            if not self._retired:
                await asyncio.shield(self._store_checkpoint())
            with contextlib.suppress(KeyError):
                metrics.LAST_EVENT_TIMESTAMP.remove(self._label)

    def recheck(self) -> None:
        """Discovery no longer lists the resource: leave the watch and list again now (a
        ``404`` then retires the watcher; a list that works carries on as before)."""
        self._recheck = True
        if self._watch_scope is not None:
            self._watch_scope.reschedule(asyncio.get_running_loop().time())

    async def _run(self) -> None:
        resource_version = await self._resume_point()
        failures = 0
        while True:
            if self._recheck:
                resource_version = None
            gone: KubeApiError | None = None
            try:
                if resource_version is None:
                    resource_version = await self._relist()
                    self.synced.set()
                resource_version = await self._interruptible_watch(resource_version)
                failures = 0
            except GoneError as error:
                log.info("%s: watch expired (%s); relisting", self._label, error.message)
                resource_version = None
            except KubeApiError as error:
                # A removed API group answers a plain "404 page not found", not a Status.
                if error.status != 404:
                    failures += 1
                    await self._back_off(failures, error)
                elif resource_version is None:  # the list: the resource is gone
                    gone = error
                else:  # the watch: confirm with a list, and back off if the list works
                    failures += 1
                    if failures > 1:
                        await self._back_off(failures, error)
                    resource_version = None
            except (aiohttp.ClientError, TimeoutError, OSError) as error:
                failures += 1
                await self._back_off(failures, error)
            if gone is not None:
                try:
                    await self._retire(gone)
                    return
                except (KubeApiError, aiohttp.ClientError, TimeoutError, OSError) as error:
                    log.warning("%s: cannot retire it yet (%s); retrying", self._label, error)
                    await asyncio.sleep(_BACKOFF_MAX * random.uniform(0.1, 0.2))

    async def _back_off(self, failures: int, error: Exception) -> None:
        metrics.WATCH_RESTARTS.labels(self._label).inc()
        delay = min(_BACKOFF_MAX, _BACKOFF_MIN * 2 ** min(failures, 8))
        delay *= random.uniform(0.8, 1.2)
        log.warning("%s: watch failed (%s); retrying in %.1fs", self._label, error, delay)
        await asyncio.sleep(delay)

    async def _interruptible_watch(self, resource_version: str) -> str:
        """The watch, left early by :meth:`recheck` (which also makes the next step a list)."""
        if self._recheck:  # asked for while the list ran
            return resource_version
        scope = asyncio.timeout(None)
        self._watch_scope = scope
        try:
            async with scope:
                return await self._watch(resource_version)
        except TimeoutError:
            if not scope.expired():
                raise
            return resource_version
        finally:
            self._watch_scope = None

    async def _retire(self, error: KubeApiError) -> None:
        """The resource is no longer served: tombstones for what the bus still holds live."""
        live = self._publisher.live_subjects(self.resource)
        if live:
            version = await self._current_version()
            for subject, known in live.items():
                _partition, ref = self._layout.decode(subject)
                last = await self._publisher.last_payload(ref) or b"{}"
                if self.metadata_only:
                    last = self._object_event.metadata_payload(last)
                await self._submit(
                    ObjectEvent(
                        resource=self.resource,
                        ref=ref,
                        subject=subject,
                        event=EventType.DELETED,
                        resource_version=resource_version_number(version),
                        resource_version_text=version,
                        uid=known.uid,
                        payload=last,
                        metadata_only=self.metadata_only,
                    )
                )
            # On the bus before the watcher ends: nothing relists a resource that is not served.
            await asyncio.gather(*[done for _, done in self._progress if done is not None])
        self._retired = True
        with contextlib.suppress(NatsError, TimeoutError):
            await self._checkpoints.delete(self._checkpoint_key)
        said = error.message.strip() or error.reason
        log.info(
            "%s is no longer served (%s): its watch stopped; %d objects it left live on the "
            "bus got a tombstone",
            self._label,
            said if said.startswith(str(error.status)) else f"{error.status} {said}",
            len(live),
        )

    async def _resume_point(self) -> str | None:
        try:
            # The other representation's resume point would skip objects published in it.
            await self._checkpoints.get(self._other_key)
            await self._checkpoints.delete(self._other_key)
        except KeyNotFoundError:
            pass
        try:
            entry = await self._checkpoints.get(self._checkpoint_key)
        except KeyNotFoundError:
            return None
        value = entry.value.decode() if entry and entry.value else None
        if value:
            log.info("%s: resuming the watch from resourceVersion %s", self._label, value)
            self._stored = value
        return value

    async def _relist(self) -> str:
        self._recheck = False
        metrics.RELISTS.labels(self._label).inc()
        started = time.monotonic()
        listed: set[str] = set()
        list_version = ""
        continue_token: str | None = None
        while True:
            page = await self._kube.list_page(
                self.api,
                limit=_PAGE_SIZE,
                continue_token=continue_token,
                metadata_only=self.metadata_only,
            )
            list_version = list_version or page.metadata.resource_version
            for item in page.items:
                event = self._object_event(bytes(item), None)
                listed.add(event.subject)
                await self._submit(event)
            continue_token = page.metadata.continue_
            if not continue_token:
                break
        missing = [
            (subject, known)
            for subject, known in self._publisher.live_subjects(self.resource).items()
            if subject not in listed
        ]
        for subject, known in missing:
            _partition, ref = self._layout.decode(subject)
            last = await self._publisher.last_payload(ref) or b"{}"
            if self.metadata_only:  # the bus may hold it in full, from a mirroring watcher
                last = self._object_event.metadata_payload(last)
            await self._submit(
                ObjectEvent(
                    resource=self.resource,
                    ref=ref,
                    subject=subject,
                    event=EventType.DELETED,
                    resource_version=int(list_version),
                    resource_version_text=list_version,
                    uid=known.uid,
                    payload=last,
                    metadata_only=self.metadata_only,
                )
            )
        self._progress.append((list_version, None))
        log.info(
            "%s: listed %d objects at resourceVersion %s in %.2fs; %d deleted while unwatched",
            self._label,
            len(listed),
            list_version,
            time.monotonic() - started,
            len(missing),
        )
        return list_version

    async def _watch(self, resource_version: str) -> str:
        timeout = random.randint(self._watch_timeout, 2 * self._watch_timeout)
        async with self._kube.watch(
            self.api,
            resource_version=resource_version,
            timeout_seconds=timeout,
            metadata_only=self.metadata_only,
        ) as events:
            self.synced.set()
            async for watch_event in events:
                if watch_event.type == "BOOKMARK":
                    resource_version = watch_event.object.metadata.resource_version
                    self._progress.append((resource_version, None))
                    self._last_event_time = time.time()
                    continue
                event_type = _EVENT_TYPES.get(watch_event.type)
                if event_type is None:
                    log.warning(
                        "%s: ignoring watch event of type %r", self._label, watch_event.type
                    )
                    continue
                event = self._object_event(watch_event.raw, event_type, watch_event.object)
                await self._submit(event)
                resource_version = event.resource_version_text
        return resource_version

    async def _submit(self, event: ObjectEvent) -> None:
        done = await self._publisher.submit(event)
        self._progress.append((event.resource_version_text, done))
        self._last_event_time = time.time()

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(_CHECKPOINT_EVERY)
            await self._store_checkpoint()

    async def _store_checkpoint(self) -> None:
        """Store the newest resourceVersion behind which every publish is acknowledged."""
        reached = None
        while self._progress:
            resource_version, done = self._progress[0]
            if done is not None and not done.done():
                break
            self._progress.popleft()
            reached = resource_version
        if reached is None or reached == self._stored:
            return
        try:
            await self._checkpoints.put(self._checkpoint_key, reached.encode())
            self._stored = reached
        except (NatsError, TimeoutError) as error:  # the next checkpoint tries again
            log.warning("%s: could not store resume point %s: %s", self._label, reached, error)
