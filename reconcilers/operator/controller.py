"""An operator as a controller of the runtime: a reconcile function over a typed resource.

``operator(MySQLCluster, reconcile, name="mysql-operator", owns=(SERVICES, PODS))`` makes a
controller class like the built-in ones (:class:`reconcilers.controller.Controller`): register
it under the ``kubus.controllers`` entry points and run it with ``kubus reconciler
--controllers mysql-operator``; it is partitioned, scaled out and traced as they are.

For each request the object is read from the cache and decoded to its type. Then:

- an object that does not decode (its stored form does not match the types) is a Warning
  event ``InvalidObject`` on it and one log line, and waits for its next change;
- with a ``finalizer``: a live object without it gets it first; an object being deleted has
  ``cleanup`` run and then the finalizer removed (nothing else runs for it);
- otherwise ``reconcile(obj, ctx)`` runs; it returns None (done), seconds or a
  :class:`~reconcilers.controller.Result` (requeue after), or raises (retried with backoff;
  :class:`~reconcilers.controller.TerminalError` is not retried).

Requests: a change of the primary object names it; a change of an object of a kind in
``owns`` names its controller owner, when that is of the primary's kind; a change of an
object of a watched kind names what its mapping function returns.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

from bus.subjects import ResourceType
from reconcilers.controller import (
    Context,
    ControllerBase,
    Flag,
    Permission,
    Request,
    Result,
    RetryPolicy,
    Scope,
)
from reconcilers.kinds import EVENTS
from reconcilers.operator.context import OperatorContext
from reconcilers.operator.crd import CRDS, install
from reconcilers.operator.resource import CustomResource, InvalidResource

if TYPE_CHECKING:
    from kubus.kube import KubeClient

__all__ = ["Reconcile", "Watch", "operator"]

log = logging.getLogger(__name__)

R = TypeVar("R", bound=CustomResource)
Object = dict[str, Any]
Outcome = Result | float | int | None
Reconcile = Callable[[Any, OperatorContext[Any]], Awaitable[Outcome]]

_NAME: Final = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
# What an operator does to the kinds it owns: server-side apply (patch) and clean-up.
_OWNED_VERBS: Final = ("create", "patch", "update", "delete")


@dataclass(frozen=True)
class Watch:
    """Objects of ``resource`` that concern primary objects: ``map`` names those (by
    namespace and name) from the watched object's current or last state."""

    resource: ResourceType
    map: Callable[[Object], Iterable[tuple[str | None, str]]]


def operator(
    resource: type[R],
    reconcile: Callable[[R, OperatorContext[R]], Awaitable[Outcome]],
    *,
    name: str,
    owns: tuple[ResourceType, ...] = (),
    watches: tuple[Watch, ...] = (),
    finalizer: str | None = None,
    cleanup: Callable[[R, OperatorContext[R]], Awaitable[None]] | None = None,
    permissions: tuple[Permission, ...] = (),
    concurrency: int = 5,
    enabled_by_default: bool = False,
    flags: tuple[Flag, ...] = (),
    install_crd: bool = False,
) -> type[ControllerBase]:
    """The controller class running ``reconcile`` for ``resource``; ``name`` is the name
    ``--controllers`` selects it by. ``install_crd``: each process applies the resource's CRD
    at start (server-side, as field manager ``name``: created, or upgraded to this version's
    schema) and waits for it to be served."""
    problems = []
    if not _NAME.fullmatch(name):
        problems.append(f"name {name!r} is not lowercase words joined by dashes")
    if cleanup is not None and finalizer is None:
        problems.append("a cleanup needs a finalizer to run before the object goes")
    if finalizer is not None and "/" not in finalizer:
        problems.append(f"finalizer {finalizer!r} is not domain-qualified (example.com/cleanup)")
    if concurrency < 1:
        problems.append(f"concurrency {concurrency} is not at least 1")
    if problems:
        raise ValueError(f"operator {name}: {'; '.join(problems)}")
    primary = resource.primary_resource()
    watched = {watch.resource: watch for watch in watches}
    owned = frozenset(owns)
    reads = tuple(dict.fromkeys((primary, *owns, *watched)))
    api_version, kind = resource.api_version(), resource.kind

    def requests_for(
        _self: Any, changed: ResourceType, obj: Object | None, old: Object | None
    ) -> list[Request]:
        current = obj if obj is not None else old
        if current is None:
            return []
        if changed == primary:
            return [Request.of(current)]
        requests = []
        if changed in owned:
            for state in (obj, old):  # a change of owner moves the request to both
                owner = _controller_of(state, api_version, kind)
                if owner is not None:
                    requests.append(owner)
        watch = watched.get(changed)
        if watch is not None:
            requests += [Request(namespace, key) for namespace, key in watch.map(current)]
        return list(dict.fromkeys(requests))

    async def reconcile_request(self: Any, request: Request) -> Result:
        raw = self._context.cache.get(primary, request.namespace, request.name)
        if raw is None:
            return Result()  # gone: what it owned is the garbage collector's
        try:
            typed = resource.decode(raw)
        except InvalidResource as error:
            log.warning("%s: %s", name, error)
            self._context.events.record(raw, "Warning", "InvalidObject", str(error), component=name)
            return Result()
        context = OperatorContext(self._context, typed, raw, manager=name)
        finalizers = typed.metadata.finalizers
        if typed.metadata.deletion_timestamp is not None:
            if finalizer is not None and finalizer in finalizers:
                if cleanup is not None:
                    await cleanup(typed, context)
                await _set_finalizers(context, raw, [f for f in finalizers if f != finalizer])
            return Result()
        if finalizer is not None and finalizer not in finalizers:
            await _set_finalizers(context, raw, [*finalizers, finalizer])
        return _result(await reconcile(typed, context))

    def init(self: Any, context: Context) -> None:
        self._context = context

    async def prepare(kube: KubeClient) -> None:
        await install(kube, resource, field_manager=name)

    attributes: dict[str, Any] = {
        "__doc__": reconcile.__doc__ or f"The {name} operator of {kind}.",
        "__module__": reconcile.__module__,
        "name": name,
        "aliases": (),
        "primary": primary,
        "reads": reads,
        "permissions": (
            Permission.on(primary, "get", "list", "watch", "patch", "update"),
            Permission.on(primary, "patch", "update", subresource="status"),
            *(Permission.on(r, "get", "list", "watch", *_OWNED_VERBS) for r in owns),
            *(Permission.on(w, "get", "list", "watch") for w in watched),
            Permission.on(EVENTS, "create", "patch"),
            *((Permission.on(CRDS, "get", "create", "patch"),) if install_crd else ()),
            *permissions,
        ),
        "concurrency_flag": f"concurrent-{name.removesuffix('-controller')}-syncs",
        "default_concurrency": concurrency,
        "scope": Scope.PARTITIONED,
        "retry": RetryPolicy(),
        "feature_gates": {},
        "flags": flags,
        "enabled_by_default": enabled_by_default,
        "__init__": init,
        "requests_for": requests_for,
        "reconcile": reconcile_request,
        "resource_type": resource,
    }
    if install_crd:
        attributes["prepare"] = staticmethod(prepare)
    class_name = "".join(part.capitalize() for part in name.split("-"))
    return type(class_name, (ControllerBase,), attributes)


def _controller_of(state: Object | None, api_version: str, kind: str) -> Request | None:
    """The request of ``state``'s controller owner, when that is of the operator's kind."""
    if state is None:
        return None
    metadata = state.get("metadata", {})
    for reference in metadata.get("ownerReferences") or ():
        if reference.get("controller"):
            if reference.get("kind") != kind or reference.get("apiVersion") != api_version:
                return None
            return Request(metadata.get("namespace"), reference.get("name", ""))
    return None


async def _set_finalizers(
    context: OperatorContext[Any], raw: Object, finalizers: list[str]
) -> None:
    """A merge patch of the finalizers, on the resourceVersion read (a conflict is retried)."""
    metadata = raw["metadata"]
    patch = {
        "metadata": {
            "finalizers": finalizers or None,
            "resourceVersion": metadata["resourceVersion"],
        }
    }
    api = await context.api(type(context.obj).primary_resource())
    await context.kube.patch(api, metadata.get("namespace"), metadata["name"], patch)


def _result(outcome: Outcome) -> Result:
    if outcome is None:
        return Result()
    if isinstance(outcome, Result):
        return outcome
    if isinstance(outcome, bool) or not isinstance(outcome, int | float):
        raise TypeError(
            f"a reconcile returns None, seconds or a Result, not {type(outcome).__name__}"
        )
    return Result(requeue_after=float(outcome))
