"""One resource, from the apiserver to the bus: list, diff, watch, and again after 410 Gone.

The loop, as client-go's reflector runs it, with the bus as the store:

1. on start, resume from the resourceVersion stored in the watcher bucket, if any; else
2. list (paginated), publish what is newer than the bus, and publish a tombstone for every
   object the bus holds that the list lacks (deletes missed while no watcher ran);
3. watch from there with bookmarks; on ``410 Gone`` go back to 2, on any other failure
   re-open the watch after a jittered backoff.

The resume point is stored only behind acknowledged publishes, so a restart never skips an
event that did not reach the bus.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from typing import Final

import aiohttp
from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from bus.envelope import EventType
from bus.layout import BusLayout
from bus.subjects import ResourceType
from kubus.kube import ApiResource, GoneError, KubeApiError, KubeClient
from watcher import metrics
from watcher.events import ObjectEventFactory
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
        watch_timeout: int = 300,
    ) -> None:
        self.api = api
        self.resource = resource
        self.synced = asyncio.Event()
        self._kube = kube
        self._publisher = publisher
        self._checkpoints = checkpoints
        self._layout = layout
        self._watch_timeout = watch_timeout
        self._label = str(resource)
        self._checkpoint_key = f"rv.{resource.tokens}"
        self._object_event = ObjectEventFactory(
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
        """Forever, until cancelled; a final checkpoint is stored on the way out."""
        checkpointing = asyncio.create_task(self._checkpoint_loop())
        try:
            await self._run()
        finally:
            checkpointing.cancel()
            await asyncio.gather(checkpointing, return_exceptions=True)
            await asyncio.shield(self._store_checkpoint())

    async def _run(self) -> None:
        resource_version = await self._resume_point()
        failures = 0
        while True:
            try:
                if resource_version is None:
                    resource_version = await self._relist()
                    self.synced.set()
                resource_version = await self._watch(resource_version)
                failures = 0
            except GoneError as error:
                log.info("%s: watch expired (%s); relisting", self._label, error.message)
                resource_version = None
            except (KubeApiError, aiohttp.ClientError, TimeoutError, OSError) as error:
                failures += 1
                metrics.WATCH_RESTARTS.labels(self._label).inc()
                delay = min(_BACKOFF_MAX, _BACKOFF_MIN * 2 ** min(failures, 8))
                delay *= random.uniform(0.8, 1.2)
                log.warning("%s: watch failed (%s); retrying in %.1fs", self._label, error, delay)
                await asyncio.sleep(delay)

    async def _resume_point(self) -> str | None:
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
        metrics.RELISTS.labels(self._label).inc()
        started = time.monotonic()
        listed: set[str] = set()
        list_version = ""
        continue_token: str | None = None
        while True:
            page = await self._kube.list_page(
                self.api, limit=_PAGE_SIZE, continue_token=continue_token
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
            self.api, resource_version=resource_version, timeout_seconds=timeout
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
