"""The dev stack's external provisioner: ``python -m kubus.devstack.provisioner``.

It plays a CSI driver's external-provisioner sidecar for ``dev.kubus.io/hostpath`` (the
provisioner of the stack's default StorageClass ``standard``), as kwok plays the kubelet:

- a claim the persistentvolume binder handed over (``volume.kubernetes.io/storage-provisioner``
  names us, no ``spec.volumeName``; for WaitForFirstConsumer once the scheduler set
  ``volume.kubernetes.io/selected-node``) gets a volume ``pvc-<claim uid>`` pre-bound to it,
  which the binder (kube-controller-manager's or kubus's) then binds; events ``Provisioning``,
  ``ProvisioningSucceeded`` and ``ProvisioningFailed`` on the claim, as upstream's;
- a volume it made that is ``Released`` with policy ``Delete`` is deleted, and its finalizer
  ``external-provisioner.volume.kubernetes.io/finalizer`` taken off.

Claims, volumes and classes are listed and watched (resuming from the last resourceVersion,
relisting after ``410 Gone``); one queue of keys with per-key backoff feeds a few workers, so
a key is never synced twice at once. Nothing is created on disk (nothing mounts a volume here);
the decisions themselves are pure functions in :mod:`kubus.devstack.storage`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import socket
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import aiohttp
import msgspec

from kubus.cliutil import ArgumentParser, fail, flag_type, klog_level, positive_int
from kubus.devstack import storage
from kubus.devstack.storage import Ignored, ProvisionError
from kubus.kube import (
    AlreadyExistsError,
    ApiResource,
    ConflictError,
    GoneError,
    KubeApiError,
    KubeClient,
    NotFoundError,
    load_kube_config,
)
from kubus.kube.config import KubeConfigError
from kubus.logs import setup_logging
from kubus.service import run_service
from kubus.serving import BindAddress, ProbeServer, parse_bind_address

__all__ = ["Informer", "Provisioner", "WorkQueue", "main"]

log = logging.getLogger("kubus.devstack.provisioner")

PROG: Final = "kubus-dev-provisioner"
CLAIMS: Final = ApiResource(
    "", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True, frozenset()
)
VOLUMES: Final = ApiResource("", "v1", "persistentvolumes", "PersistentVolume", False, frozenset())
CLASSES: Final = ApiResource(
    "storage.k8s.io", "v1", "storageclasses", "StorageClass", False, frozenset()
)
EVENTS: Final = ApiResource("", "v1", "events", "Event", True, frozenset())
# external-provisioner's --retry-interval-start and --retry-interval-max defaults.
RETRY_START: Final = 1.0
RETRY_MAX: Final = 300.0
_PAGE: Final = 500
_TRANSIENT: Final = (KubeApiError, aiohttp.ClientError, OSError, TimeoutError)

Key = tuple[str, str]  # ("claim", "namespace/name") or ("volume", name)
OnChange = Callable[[str, dict[str, Any], bool], None]


class Informer:
    """A list+watch cache of one resource: ``items`` by key, ``on_change(key, obj, deleted)``
    for each change (after a relist, a delete for each object the new list lacks)."""

    def __init__(self, kube: KubeClient, resource: ApiResource, on_change: OnChange) -> None:
        self._kube = kube
        self._resource = resource
        self._on_change = on_change
        self.items: dict[str, dict[str, Any]] = {}
        self.synced = False

    def key(self, obj: dict[str, Any]) -> str:
        meta = obj.get("metadata", {})
        if self._resource.namespaced:
            return f"{meta.get('namespace', '')}/{meta.get('name', '')}"
        return str(meta.get("name", ""))

    async def run(self, resume_from: str = "") -> None:
        """List and watch until cancelled; with ``resume_from``, watch from that
        resourceVersion first (what ``items`` already holds), relisting only on 410 Gone."""
        version = resume_from
        failures = 0
        while True:
            try:
                if not version:
                    version = await self._relist()
                async with self._kube.watch(self._resource, resource_version=version) as events:
                    failures = 0
                    async for event in events:
                        if event.type == "BOOKMARK":
                            version = event.object.metadata.resource_version or version
                            continue
                        obj: dict[str, Any] = msgspec.json.decode(event.raw)
                        version = obj.get("metadata", {}).get("resourceVersion") or version
                        key = self.key(obj)
                        if event.type == "DELETED":
                            self.items.pop(key, None)
                            self._on_change(key, obj, True)
                        else:
                            self.items[key] = obj
                            self._on_change(key, obj, False)
            except GoneError:
                log.info("watch of %s expired (410 Gone); relisting", self._resource.name)
                version = ""
            except _TRANSIENT as error:
                failures += 1
                delay = min(RETRY_START * 2.0 ** (failures - 1), 30.0)
                log.warning(
                    "watch of %s failed (%s); retrying in %.0fs",
                    self._resource.name,
                    error or type(error).__name__,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _relist(self) -> str:
        listed: dict[str, dict[str, Any]] = {}
        token: str | None = None
        while True:
            page = await self._kube.list_page(self._resource, limit=_PAGE, continue_token=token)
            for raw in page.items:
                obj: dict[str, Any] = msgspec.json.decode(raw)
                listed[self.key(obj)] = obj
            token = page.metadata.continue_
            if not token:
                version = page.metadata.resource_version
                break
        gone = {key: obj for key, obj in self.items.items() if key not in listed}
        self.items = listed
        for key, obj in gone.items():
            self._on_change(key, obj, True)
        for key, obj in listed.items():
            self._on_change(key, obj, False)
        self.synced = True
        return version


class WorkQueue:
    """client-go's workqueue, in small: a key queued once however often it is added, never
    handed to two workers at once, retried with per-key exponential backoff."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._dirty: set[Key] = set()
        self._active: set[Key] = set()
        self._failures: dict[Key, int] = {}

    def add(self, key: Key) -> None:
        if key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._active:
            self._queue.put_nowait(key)

    async def get(self) -> Key:
        key = await self._queue.get()
        self._dirty.discard(key)
        self._active.add(key)
        return key

    def done(self, key: Key) -> None:
        self._active.discard(key)
        if key in self._dirty:
            self._queue.put_nowait(key)

    def retry(self, key: Key) -> float:
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay = min(RETRY_START * 2.0 ** (failures - 1), RETRY_MAX)
        asyncio.get_running_loop().call_later(delay, self.add, key)
        return delay

    def forget(self, key: Key) -> None:
        self._failures.pop(key, None)


class Provisioner:
    def __init__(
        self, kube: KubeClient, *, name: str = storage.PROVISIONER, workers: int = 4
    ) -> None:
        self._kube = kube
        self._name = name
        self._workers = workers
        self._host = socket.gethostname()
        self._queue = WorkQueue()
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue(10_000)
        # uids of claims this process made a volume for: a claim event arriving before the
        # volume's own never provisions twice.
        self._provisioned: set[str] = set()
        self.claims = Informer(kube, CLAIMS, self._claim_changed)
        self.volumes = Informer(kube, VOLUMES, self._volume_changed)
        self.classes = Informer(kube, CLASSES, self._class_changed)

    @property
    def synced(self) -> bool:
        return self.claims.synced and self.volumes.synced and self.classes.synced

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            for informer in (self.classes, self.volumes, self.claims):
                tasks.create_task(informer.run())
            tasks.create_task(self._send_events())
            for _ in range(self._workers):
                tasks.create_task(self._work())

    # -- what changes queue -----------------------------------------------------------------

    def _claim_changed(self, key: str, claim: dict[str, Any], deleted: bool) -> None:
        if deleted:
            self._provisioned.discard(claim.get("metadata", {}).get("uid", ""))
            return
        if storage.handed_over(claim, self._name):
            self._queue.add(("claim", key))

    def _volume_changed(self, key: str, volume: dict[str, Any], deleted: bool) -> None:
        if not deleted and storage.provisioned_by(volume, self._name):
            self._queue.add(("volume", key))

    def _class_changed(self, key: str, _cls: dict[str, Any], deleted: bool) -> None:
        # A claim may have waited for its class to appear (or to change).
        if deleted:
            return
        for claim_key, claim in self.claims.items.items():
            if storage.claim_class(claim) == key and storage.handed_over(claim, self._name):
                self._queue.add(("claim", claim_key))

    # -- workers ----------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            try:
                if key[0] == "claim":
                    await self._sync_claim(key[1])
                else:
                    await self._sync_volume(key[1])
            except (ProvisionError, *_TRANSIENT) as error:
                delay = self._queue.retry(key)
                log.warning("%s %s: %s; retrying in %.0fs", key[0], key[1], error, delay)
            except Exception:
                delay = self._queue.retry(key)
                log.exception("%s %s: unexpected error; retrying in %.0fs", key[0], key[1], delay)
            else:
                self._queue.forget(key)
            finally:
                self._queue.done(key)

    async def _sync_claim(self, key: str) -> None:
        claim = self.claims.items.get(key)
        if claim is None or not storage.handed_over(claim, self._name):
            return
        class_name = storage.claim_class(claim)
        cls = self.classes.items.get(class_name)
        if cls is None:
            # Retried: the class can be created (or fixed) independently of the claim.
            raise ProvisionError(f'StorageClass "{class_name}" not found')
        if not storage.should_provision(claim, cls, self._name):
            return
        name = storage.volume_name(claim)
        uid = claim["metadata"]["uid"]
        if name in self.volumes.items or uid in self._provisioned:
            return  # provisioned already; the binder binds it
        if cls.get("provisioner") != self._name:
            log.warning(
                "claim %s: its StorageClass %s names provisioner %r now, not %r; not provisioning",
                key,
                class_name,
                cls.get("provisioner"),
                self._name,
            )
            return
        self._event(
            claim,
            "Normal",
            "Provisioning",
            f'External provisioner is provisioning volume for claim "{key}"',
        )
        try:
            volume = storage.build_volume(claim, cls, self._name)
        except Ignored as ignored:
            self._event(
                claim,
                "Normal",
                "Provisioning",
                "Assuming an external populator will provision the volume",
            )
            log.info("claim %s: not provisioning: %s", key, ignored)
            return
        except ProvisionError as error:
            self._event(
                claim,
                "Warning",
                "ProvisioningFailed",
                str(error),  # as external-provisioner: the driver's error as it is
            )
            raise
        node = (claim["metadata"].get("annotations") or {}).get(storage.ANN_SELECTED_NODE)
        try:
            await self._kube.create(VOLUMES, None, volume)
        except AlreadyExistsError:
            log.info("claim %s: volume %s exists already; reusing it", key, name)
        except KubeApiError as error:
            self._event(
                claim,
                "Warning",
                "ProvisioningFailed",
                f"Error creating provisioned PV object for claim {key}: {error}",
            )
            raise
        else:
            log.info(
                "claim %s: provisioned volume %s (%s, class %s%s)",
                key,
                name,
                volume["spec"]["capacity"]["storage"],
                class_name,
                f", node {node}" if node else "",
            )
        self._provisioned.add(uid)
        self._event(
            claim, "Normal", "ProvisioningSucceeded", f"Successfully provisioned volume {name}"
        )

    async def _sync_volume(self, name: str) -> None:
        cached = self.volumes.items.get(name)
        if cached is None or not storage.provisioned_by(cached, self._name):
            return
        if storage.volume_finalizers(cached) is None and not storage.should_delete(cached):
            return  # the common case, decided without a request
        # Decided again on the present: the cache may be a step behind this process's own
        # writes, and pv-protection or the binder may change the volume meanwhile (a conflict:
        # read it again).
        for attempt in range(5):
            try:
                volume = await self._kube.get(VOLUMES, None, name)
            except NotFoundError:
                return
            try:
                await self._reconcile_volume(volume)
            except ConflictError:
                if attempt == 4:
                    raise
            else:
                return

    async def _reconcile_volume(self, volume: dict[str, Any]) -> None:
        if not storage.provisioned_by(volume, self._name):
            return
        name = volume["metadata"]["name"]
        wanted = storage.volume_finalizers(volume)
        if wanted is not None:
            volume = await self._set_finalizers(volume, wanted)
        if not storage.should_delete(volume):
            return
        uid = volume["metadata"].get("uid")
        if not volume["metadata"].get("deletionTimestamp"):
            # The backing volume: nothing on disk to remove (nothing was ever made there).
            try:
                await self._kube.delete(VOLUMES, None, name, uid=uid)
            except NotFoundError:
                return
            claim = volume.get("spec", {}).get("claimRef") or {}
            log.info(
                "volume %s: deleting it (released by claim %s/%s, reclaim policy Delete)",
                name,
                claim.get("namespace", ""),
                claim.get("name", ""),
            )
            try:
                volume = await self._kube.get(VOLUMES, None, name)
            except NotFoundError:
                return
        # Our finalizer held the object until the backing volume was gone: it is now.
        remaining = storage.without_finalizer(volume)
        if remaining is not None and volume["metadata"].get("uid") == uid:
            await self._set_finalizers(volume, remaining)

    async def _set_finalizers(
        self, volume: dict[str, Any], finalizers: Sequence[str]
    ) -> dict[str, Any]:
        """A merge patch carrying the resourceVersion: a precondition, so a concurrent change
        to the list (pv-protection's) is a conflict and a retry, never lost."""
        meta = volume["metadata"]
        name = meta["name"]
        updated = await self._kube.patch(
            VOLUMES,
            None,
            name,
            {
                "metadata": {
                    "finalizers": list(finalizers),
                    "resourceVersion": meta["resourceVersion"],
                }
            },
        )
        before = set(meta.get("finalizers") or [])
        action = "added" if storage.FINALIZER in finalizers else "removed"
        if (storage.FINALIZER in before) != (storage.FINALIZER in finalizers):
            log.info("volume %s: %s finalizer %s", name, action, storage.FINALIZER)
        return updated

    # -- events -----------------------------------------------------------------------------

    def _event(self, claim: dict[str, Any], kind: str, reason: str, message: str) -> None:
        meta = claim["metadata"]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta['name']}.{uuid.uuid4().hex[:16]}",
                "namespace": meta["namespace"],
            },
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "type": kind,
            "reason": reason,
            "message": message,
            "source": {"component": self._name},
            "reportingComponent": self._name,
            "reportingInstance": self._host,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self._events.put_nowait(body)
        except asyncio.QueueFull:
            log.warning("event queue full; dropped %s on claim %s", reason, meta["name"])

    async def _send_events(self) -> None:
        while True:
            body = await self._events.get()
            try:
                await self._kube.create(EVENTS, body["metadata"]["namespace"], body)
            except _TRANSIENT as error:
                log.warning(
                    "could not record event %s on claim %s: %s",
                    body["reason"],
                    body["involvedObject"]["name"],
                    error,
                )


def _bind_address(text: object) -> BindAddress | None:
    return parse_bind_address(str(text), flag="--health-probe-bind-address")


def _parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="The kubus dev stack's external provisioner: volumes for claims of the "
        f"StorageClasses of provisioner {storage.PROVISIONER}, deleted once released.",
    )
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        default=None,
        metavar="FILE",
        help="kubeconfig (default $KUBECONFIG, else in-cluster, else ~/.kube/config)",
    )
    parser.add_argument(
        "--provisioner",
        default=storage.PROVISIONER,
        metavar="NAME",
        help=f"the provisioner name it answers to (default {storage.PROVISIONER})",
    )
    parser.add_argument(
        "--health-probe-bind-address",
        type=flag_type(_bind_address),
        default=None,
        metavar="HOST:PORT",
        help="serve /healthz and /readyz (ready once claims, volumes and classes are listed); "
        "0 or unset: none",
    )
    parser.add_argument(
        "--workers",
        type=flag_type(positive_int),
        default=4,
        help="claims and volumes synced at once (default 4)",
    )
    parser.add_argument("-v", "--v", type=flag_type(klog_level), default=0, dest="verbosity")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    setup_logging("text", args.verbosity)
    path: Path | None = args.kubeconfig
    if path is None and (env := os.environ.get("KUBECONFIG")):
        path = Path(env)
    try:
        config = load_kube_config(path)
    except KubeConfigError as error:
        fail(PROG, f"--kubeconfig {error}" if error.path else str(error))
    health: BindAddress | None = args.health_probe_bind_address

    async def service(stop: asyncio.Event, serving: asyncio.Event) -> None:
        async with KubeClient(config) as kube:
            provisioner = Provisioner(kube, name=args.provisioner, workers=args.workers)
            probes = ProbeServer(health=health, metrics=None)
            probes.add_liveness("ping", lambda: None)
            probes.add_readiness(
                "informers",
                lambda: None if provisioner.synced else "claims, volumes, classes not listed yet",
            )
            try:
                await probes.start()
            except OSError as error:
                fail(PROG, f"--health-probe-bind-address: {error.strerror or error}")
            log.info(
                "provisioning for %s (server %s, %d workers)",
                args.provisioner,
                config.server,
                args.workers,
            )
            serving.set()
            running = asyncio.create_task(provisioner.run())
            stopping = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (running, stopping):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                await probes.stop()
            if running.done() and not running.cancelled():
                running.result()  # the provisioner ended by itself: its error, if any
        log.info("stopped")

    asyncio.run(run_service(service))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
