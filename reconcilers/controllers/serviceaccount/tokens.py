"""The tokens controller, as kube-controller-manager's ``serviceaccount-token-controller``.

A Secret of type ``kubernetes.io/service-account-token`` names its ServiceAccount in the
annotation ``kubernetes.io/service-account.name`` (and optionally its uid in
``kubernetes.io/service-account.uid``). This controller

- fills in what such a Secret lacks: ``token`` (a legacy JWT signed with
  ``--service-account-private-key-file``), ``ca.crt`` (``--root-ca-file``, kept equal to it)
  and ``namespace``, and sets both annotations to the ServiceAccount's name and uid;
- deletes the Secret (uid precondition) when its ServiceAccount is gone, or is another one of
  the same name (another uid).

Secrets travel on the bus as metadata only, so the cache knows a Secret's annotations but
neither its type nor its data: every sync reads the Secret from the apiserver. As upstream, a
live copy newer than the cached one is left for the event that will follow it.

Requests name Secrets only: a ServiceAccount change makes requests for the Secrets annotated
with its name, whose sync then finds the account gone (or replaced) and deletes them. Without
a private key kube-controller-manager does not start this controller; neither does kubus
(:class:`NotStarted`).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterable
from typing import Any, ClassVar, Final

from bus.subjects import ResourceType
from kubus.kube import ConflictError, NotFoundError
from reconcilers.controller import (
    Context,
    ControllerBase,
    Flag,
    NotStarted,
    Permission,
    Request,
    Result,
    RetryPolicy,
    Scope,
)
from reconcilers.controllers.serviceaccount.legacytoken import SigningKey, legacy_claims
from reconcilers.controllers.serviceaccount.options import PRIVATE_KEY_FILE, ROOT_CA_FILE, root_ca
from reconcilers.kinds import SECRETS, SERVICEACCOUNTS, Object, clone

__all__ = ["TokensController"]

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_TOKEN: Final = "kubernetes.io/service-account-token"
NAME_ANNOTATION: Final = "kubernetes.io/service-account.name"
UID_ANNOTATION: Final = "kubernetes.io/service-account.uid"
TOKEN_KEY: Final = "token"
CA_KEY: Final = "ca.crt"
NAMESPACE_KEY: Final = "namespace"


class TokensController(ControllerBase):
    name: ClassVar[str] = "serviceaccount-token-controller"
    aliases: ClassVar[tuple[str, ...]] = ("serviceaccount-token",)
    primary: ClassVar[ResourceType] = SECRETS
    reads: ClassVar[tuple[ResourceType, ...]] = (SECRETS, SERVICEACCOUNTS)
    concurrency_flag: ClassVar[str] = "concurrent-serviceaccount-token-syncs"
    default_concurrency: ClassVar[int] = 5
    scope: ClassVar[Scope] = Scope.PARTITIONED
    retry: ClassVar[RetryPolicy] = RetryPolicy(max_retries=10)  # kcm's TokensController
    permissions: ClassVar[tuple[Permission, ...]] = (
        Permission.on(SECRETS, "get", "update", "delete"),
        Permission.on(SERVICEACCOUNTS, "get"),
    )
    flags: ClassVar[tuple[Flag, ...]] = (PRIVATE_KEY_FILE, ROOT_CA_FILE)
    enabled_by_default: ClassVar[bool] = True

    def __init__(self, context: Context) -> None:
        key = context.options.get(PRIVATE_KEY_FILE.name)
        if not isinstance(key, SigningKey):
            raise NotStarted(
                f"no --{PRIVATE_KEY_FILE.name}: legacy service-account tokens cannot be signed"
            )
        self._ctx = context
        self._key = key
        self._root_ca = root_ca(context.options, context.kube)

    # --- event handlers -----------------------------------------------------------------

    def requests_for(
        self, resource: ResourceType, obj: Object | None, old: Object | None
    ) -> Iterable[Request]:
        target = obj or old
        if target is None:
            return []
        meta = target["metadata"]
        if resource == SECRETS:
            # A deleted Secret needs nothing (the legacy `secrets` reference is not removed).
            has_account = NAME_ANNOTATION in (meta.get("annotations") or {})
            return [Request.of(target)] if obj is not None and has_account else []
        return [Request.of(secret) for secret in self._tokens_of(meta["namespace"], meta["name"])]

    def _tokens_of(self, namespace: str, account: str) -> list[Object]:
        return [
            secret
            for secret in self._ctx.cache.in_namespace(SECRETS, namespace)
            if (secret["metadata"].get("annotations") or {}).get(NAME_ANNOTATION) == account
        ]

    # --- sync ---------------------------------------------------------------------------

    async def reconcile(self, request: Request) -> Result:
        assert request.namespace is not None
        cached = self._ctx.cache.get(SECRETS, request.namespace, request.name)
        if cached is None:
            return Result()
        annotations = cached["metadata"].get("annotations") or {}
        account = annotations.get(NAME_ANNOTATION)
        if not account:
            return Result()
        secrets = self._ctx.apis[SECRETS]
        try:
            live = await self._ctx.kube.get(secrets, request.namespace, request.name)
        except NotFoundError:
            return Result()
        if live.get("type") != SERVICE_ACCOUNT_TOKEN:
            return Result()
        uid = annotations.get(UID_ANNOTATION)
        sa = await self._service_account(request.namespace, account, uid)
        if sa is None:
            await self._delete(request, cached["metadata"].get("uid"))
            return Result()
        await self._populate(sa, cached, live)
        return Result()

    async def _service_account(self, namespace: str, name: str, uid: str | None) -> Object | None:
        """The account from the cache, else the apiserver; None if gone or another uid."""
        sa = self._ctx.cache.get(SERVICEACCOUNTS, namespace, name)
        if sa is not None and (not uid or sa["metadata"].get("uid") == uid):
            return sa
        try:
            sa = await self._ctx.kube.get(self._ctx.apis[SERVICEACCOUNTS], namespace, name)
        except NotFoundError:
            return None
        return sa if not uid or sa["metadata"].get("uid") == uid else None

    async def _delete(self, request: Request, uid: str | None) -> None:
        assert request.namespace is not None
        try:
            await self._ctx.kube.delete(
                self._ctx.apis[SECRETS], request.namespace, request.name, uid=uid
            )
        except (NotFoundError, ConflictError):
            return  # gone already, or another Secret of that name (the uid precondition)
        log.info("%s: deleted token Secret %s: its ServiceAccount is gone", self.name, request.key)

    async def _populate(self, sa: Object, cached: Object, live: Object) -> None:
        if live["metadata"].get("resourceVersion") != cached["metadata"].get("resourceVersion"):
            # Our view is behind: the event of the newer version brings the Secret back.
            log.debug("%s: %s is not up to date, skipping", self.name, Request.of(live).key)
            return
        data: dict[str, str] = dict(live.get("data") or {})
        needs_ca = bool(self._root_ca) and _decoded(data.get(CA_KEY)) != self._root_ca
        needs_namespace = not _decoded(data.get(NAMESPACE_KEY))
        needs_token = not _decoded(data.get(TOKEN_KEY))
        if not (needs_ca or needs_namespace or needs_token):
            return
        secret = clone(live)
        meta = secret["metadata"]
        if needs_ca:
            data[CA_KEY] = _encoded(self._root_ca)
        if needs_namespace:
            data[NAMESPACE_KEY] = _encoded(meta["namespace"].encode())
        if needs_token:
            data[TOKEN_KEY] = _encoded(self._key.sign(legacy_claims(sa, secret)).encode())
        secret["data"] = data
        annotations: dict[str, Any] = meta.setdefault("annotations", {})
        annotations[NAME_ANNOTATION] = sa["metadata"]["name"]
        annotations[UID_ANNOTATION] = sa["metadata"].get("uid", "")
        try:
            await self._ctx.kube.replace(
                self._ctx.apis[SECRETS], meta["namespace"], meta["name"], secret
            )
        except (ConflictError, NotFoundError):
            return  # changed meanwhile (its event follows), or gone
        log.info("%s: populated token Secret %s", self.name, Request.of(secret).key)


def _decoded(value: str | None) -> bytes:
    return base64.b64decode(value) if value else b""


def _encoded(value: bytes) -> str:
    return base64.b64encode(value).decode()
