"""A fake apiserver and cache for the Job controller's unit tests: the controller's writes
land in the world, and :meth:`World.settle` shows them to the cache and its event handlers,
as the watch and the bus would."""

from __future__ import annotations

import asyncio
import datetime
import itertools
from typing import Any

import msgspec

from bus.envelope import Envelope, EventType
from bus.subjects import ObjectRef, ResourceType
from kubus.kube import ApiResource, ConflictError, NotFoundError
from reconcilers.cache import ObjectCache
from reconcilers.controller import Context, Request, Result
from reconcilers.controllers.job import JobController
from reconcilers.kinds import JOBS, PODS

NS = "ns"
UTC = datetime.UTC
T0 = datetime.datetime(2026, 1, 1, 12, tzinfo=UTC)
APIS = {
    JOBS: ApiResource("batch", "v1", "jobs", "Job", True, frozenset()),
    PODS: ApiResource("", "v1", "pods", "Pod", True, frozenset()),
}
FINALIZER = "batch.kubernetes.io/job-tracking"


def stamp(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def copy(value: Any) -> Any:
    return msgspec.json.decode(msgspec.json.encode(value))


def job(name: str = "pi", **spec: Any) -> dict[str, Any]:
    labels = {"batch.kubernetes.io/job-name": name, "batch.kubernetes.io/controller-uid": "j1"}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": "j1",
            "resourceVersion": "1",
            "generation": 1,
        },
        "spec": {
            "parallelism": 1,
            "completions": 1,
            "backoffLimit": 6,
            "completionMode": "NonIndexed",
            "suspend": False,
            "podReplacementPolicy": "TerminatingOrFailed",
            "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "j1"}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]},
            },
            **spec,
        },
        "status": {},
    }


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def record(self, obj: Any, kind: str, reason: str, message: str, *, component: str) -> None:
        assert component == "job-controller"
        self.seen.append((kind, reason, message))

    @property
    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.seen]


class World:
    """The apiserver's objects and the controller's cache of them."""

    def __init__(self, *jobs: dict[str, Any], now: datetime.datetime = T0) -> None:
        self.now = now
        self.rv = itertools.count(10)
        self.uids = itertools.count(1)
        self.objects: dict[tuple[ResourceType, str], dict[str, Any]] = {}
        self.cached: dict[tuple[ResourceType, str], dict[str, Any]] = {}
        self.cache = ObjectCache()
        self.events = Events()
        self.statuses: list[dict[str, Any]] = []
        self.created: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.patched: list[tuple[str, Any]] = []
        self.fail_creates = 0
        for body in jobs:
            self.objects[(JOBS, body["metadata"]["name"])] = copy(body)
        context = Context(
            cache=self.cache,
            kube=self,  # type: ignore[arg-type]
            apis=APIS,
            events=self.events,  # type: ignore[arg-type]
            tracer=None,
        )
        self.controller = JobController(context, clock=lambda: self.now)
        self.queued: set[Request] = set()
        self.settle()

    # --- the apiserver --------------------------------------------------------------------

    def _bump(self, obj: dict[str, Any]) -> None:
        obj["metadata"]["resourceVersion"] = str(next(self.rv))

    async def get(self, resource: ApiResource, namespace: str | None, name: str) -> Any:
        kind = JOBS if resource.name == "jobs" else PODS
        if (kind, name) not in self.objects:
            raise NotFoundError(404, "NotFound", name)
        return copy(self.objects[(kind, name)])

    async def create(self, resource: ApiResource, namespace: str | None, body: Any) -> Any:
        assert resource.name == "pods"
        if self.fail_creates:
            self.fail_creates -= 1
            from kubus.kube import KubeApiError

            raise KubeApiError(403, "Forbidden", "pods is forbidden: quota")
        pod = copy(body)
        n = next(self.uids)
        meta = pod["metadata"]
        meta.update(
            name=f"{meta.pop('generateName')}{n:05d}",
            namespace=namespace,
            uid=f"p{n}",
            creationTimestamp=stamp(self.now),
        )
        pod["status"] = {"phase": "Pending"}
        self._bump(pod)
        self.objects[(PODS, meta["name"])] = pod
        self.created.append(pod)
        return copy(pod)

    async def delete(
        self, resource: ApiResource, namespace: str | None, name: str, **_: Any
    ) -> Any:
        pod = self.objects.get((PODS, name))
        if pod is None:
            raise NotFoundError(404, "NotFound", name)
        self.deleted.append(name)
        if pod["metadata"].get("finalizers"):
            pod["metadata"]["deletionTimestamp"] = stamp(self.now)
            self._bump(pod)
        else:
            del self.objects[(PODS, name)]
        return {}

    async def patch(
        self, resource: ApiResource, namespace: str | None, name: str, patch: Any, **_: Any
    ) -> Any:
        pod = self.objects.get((PODS, name))
        if pod is None:
            raise NotFoundError(404, "NotFound", name)
        self.patched.append((name, patch))
        meta = patch["metadata"]
        drop = meta.get("$deleteFromPrimitiveList/finalizers", [])
        finalizers = [f for f in pod["metadata"].get("finalizers") or [] if f not in drop]
        finalizers += [f for f in meta.get("finalizers", []) if f not in finalizers]
        pod["metadata"]["finalizers"] = finalizers
        if "ownerReferences" in meta:
            pod["metadata"]["ownerReferences"] = [
                r for r in meta["ownerReferences"] if "$patch" not in r
            ]
        self._bump(pod)
        if not finalizers and pod["metadata"].get("deletionTimestamp"):
            del self.objects[(PODS, name)]
        return copy(pod)

    async def replace(
        self,
        resource: ApiResource,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
    ) -> Any:
        assert subresource == "status"
        stored = self.objects[(JOBS, name)]
        if body["metadata"]["resourceVersion"] != stored["metadata"]["resourceVersion"]:
            raise ConflictError(409, "Conflict", "the object has been modified")
        stored["status"] = copy(body["status"])
        self._bump(stored)
        self.statuses.append(copy(body["status"]))
        return copy(stored)

    # --- the watch, the bus and the cache -------------------------------------------------

    def settle(self) -> None:
        """Every change since the last settle reaches the cache and the event handlers."""
        for key in list(self.cached):
            if key not in self.objects:
                old = self.cached.pop(key)
                self._apply(key[0], old, deleted=True)
                self.queued.update(self.controller.requests_for(key[0], None, old))
        for key, obj in sorted(self.objects.items(), key=lambda kv: kv[0][0] != JOBS):
            old = self.cached.get(key)
            if (
                old is not None
                and old["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]
            ):
                continue
            self.cached[key] = copy(obj)
            self._apply(key[0], obj, deleted=False)
            self.queued.update(self.controller.requests_for(key[0], copy(obj), old))

    def _apply(self, resource: ResourceType, obj: dict[str, Any], *, deleted: bool) -> None:
        meta = obj["metadata"]
        envelope = Envelope(
            subject="",
            sequence=1,
            event=EventType.DELETED if deleted else EventType.MODIFIED,
            resource_version=str(next(self.rv)) if deleted else meta["resourceVersion"],
            uid=meta.get("uid", ""),
            payload=msgspec.json.encode(obj),
        )
        self.cache.apply(0, ObjectRef(resource, meta.get("namespace"), meta["name"]), envelope)

    # --- what tests do ----------------------------------------------------------------------

    def sync(self, name: str = "pi") -> Result:
        result = asyncio.run(self.controller.reconcile(Request(NS, name)))
        self.settle()
        return result

    def run_queued(self) -> None:
        queued, self.queued = self.queued, set()
        for request in queued:
            asyncio.run(self.controller.reconcile(request))
        self.settle()

    def job(self, name: str = "pi") -> dict[str, Any]:
        return self.objects[(JOBS, name)]

    def status(self, name: str = "pi") -> dict[str, Any]:
        status: dict[str, Any] = self.job(name)["status"]
        return status

    def pods(self) -> list[dict[str, Any]]:
        return [obj for (kind, _), obj in sorted(self.objects.items()) if kind == PODS]

    def live_pods(self) -> list[dict[str, Any]]:
        return [p for p in self.pods() if not p["metadata"].get("deletionTimestamp")]

    def finish(self, pod: dict[str, Any], phase: str, exit_code: int = 0) -> None:
        """The kubelet's part: a pod ends ``phase``, its one container with ``exit_code``."""
        pod["status"] = {
            "phase": phase,
            "conditions": [
                {"type": "Ready", "status": "False", "lastTransitionTime": stamp(self.now)}
            ],
            "containerStatuses": [
                {
                    "name": "c",
                    "restartCount": 0,
                    "state": {"terminated": {"exitCode": exit_code, "finishedAt": stamp(self.now)}},
                }
            ],
        }
        self._bump(pod)

    def run(self, pod: dict[str, Any]) -> None:
        pod["spec"]["nodeName"] = "n1"
        pod["status"] = {
            "phase": "Running",
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": stamp(self.now)}
            ],
        }
        self._bump(pod)

    def condition(self, kind: str, name: str = "pi") -> dict[str, Any] | None:
        for condition in self.status(name).get("conditions") or []:
            if condition["type"] == kind:
                found: dict[str, Any] = condition
                return found
        return None

    def later(self, seconds: float) -> None:
        self.now += datetime.timedelta(seconds=seconds)
