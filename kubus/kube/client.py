"""Discovery, paginated lists and watches against the apiserver, without blocking the loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import msgspec
from opentelemetry.trace import SpanKind, Tracer

from kubus.kube.config import KubeConfig
from kubus.kube.errors import KubeApiError, UnknownResourceError, error_for
from kubus.telemetry import APISERVER_PROPAGATOR, HeaderSetter

__all__ = [
    "METADATA_ACCEPT",
    "METADATA_LIST_ACCEPT",
    "ApiResource",
    "KubeClient",
    "ListPage",
    "WatchEvent",
    "decode_watch_event",
]

log = logging.getLogger(__name__)

_USER_AGENT: Final = "kubus"
# The apiserver's metadata-only representation (what client-go's metadata client asks for):
# the object's metadata and nothing else, so e.g. a Secret's data never leaves the apiserver.
# No plain application/json fallback: a server that cannot send metadata only must refuse (406).
METADATA_LIST_ACCEPT: Final = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
METADATA_ACCEPT: Final = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


@dataclass(frozen=True)
class ApiResource:
    """What discovery says of one group/version/resource."""

    group: str
    version: str
    name: str
    kind: str
    namespaced: bool
    verbs: frozenset[str]

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def path(self) -> str:
        """The cluster-wide collection path."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        return f"{base}/{self.name}"


class _ListMeta(msgspec.Struct, rename="camel"):
    resource_version: str = ""
    continue_: str | None = msgspec.field(default=None, name="continue")


class ListPage(msgspec.Struct):
    """One page of a list: item JSON left undecoded, and where the next page starts."""

    items: list[msgspec.Raw] = msgspec.field(default_factory=list)
    metadata: _ListMeta = msgspec.field(default_factory=_ListMeta)


class _ListPageOnTheWire(msgspec.Struct):
    # A metadata-only list (PartialObjectMetadataList) of nothing says ``"items": null``.
    items: list[msgspec.Raw] | None = None
    metadata: _ListMeta = msgspec.field(default_factory=_ListMeta)


def decode_list_page(body: bytes) -> ListPage:
    wire = _page_decoder.decode(body)
    return ListPage(items=wire.items or [], metadata=wire.metadata)


class IdentityMeta(msgspec.Struct, rename="camel"):
    name: str = ""
    namespace: str | None = None
    uid: str = ""
    resource_version: str = ""


class ObjectIdentity(msgspec.Struct):
    """Which object, at which version: all a watch consumer needs to route an event."""

    metadata: IdentityMeta = msgspec.field(default_factory=IdentityMeta)
    api_version: str = msgspec.field(default="", name="apiVersion")
    kind: str = ""


class WatchEvent(msgspec.Struct):
    """One watch event: its type, the object's identity, and the object's JSON as sent."""

    type: str
    object: ObjectIdentity
    raw: bytes = b""


class _RawWatchEvent(msgspec.Struct):
    type: str
    object: msgspec.Raw


class _StatusCause(msgspec.Struct):
    reason: str = ""


class _StatusDetails(msgspec.Struct):
    causes: list[_StatusCause] = []


class _Status(msgspec.Struct):
    code: int = 0
    reason: str = ""
    message: str = ""
    details: _StatusDetails | None = None

    @property
    def causes(self) -> tuple[str, ...]:
        return tuple(cause.reason for cause in self.details.causes) if self.details else ()


class _DiscoveredResource(msgspec.Struct):
    name: str
    kind: str
    namespaced: bool
    verbs: list[str] = msgspec.field(default_factory=list)


class _ResourceList(msgspec.Struct):
    resources: list[_DiscoveredResource] = msgspec.field(default_factory=list)


_setter = HeaderSetter()
_encoder = msgspec.json.Encoder()
_page_decoder = msgspec.json.Decoder(_ListPageOnTheWire)
_event_decoder = msgspec.json.Decoder(WatchEvent)
_raw_event_decoder = msgspec.json.Decoder(_RawWatchEvent)
_identity_decoder = msgspec.json.Decoder(ObjectIdentity)
_LINE_HEADS: Final = {
    kind: b'{"type":"' + kind.encode() + b'","object":'
    for kind in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK")
}
_status_decoder = msgspec.json.Decoder(_Status)
_resources_decoder = msgspec.json.Decoder(_ResourceList)


class KubeClient:
    """Use as ``async with KubeClient(config) as kube: ...``; one connection pool per client."""

    def __init__(
        self,
        config: KubeConfig,
        *,
        timeout: float = 30.0,
        qps: float | None = None,
        burst: int = 1,
        tracer: Tracer | None = None,
    ) -> None:
        """``qps``/``burst`` limit writes as client-go's --kube-api-qps/--kube-api-burst do;
        with a ``tracer`` every write is a client span whose context goes to the apiserver."""
        self._config = config
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._limiter = TokenBucket(qps, burst) if qps else None
        self._tracer = tracer
        self._owns_session = True

    def with_rate_limit(self, qps: float | None, burst: int) -> KubeClient:
        """A client on this one's connections with a write rate limit of its own.

        kube-controller-manager builds a client per controller, each with its own
        --kube-api-qps/--kube-api-burst bucket; kubus's controllers get one of these each.
        """
        view = KubeClient(
            self._config, timeout=self._timeout, qps=qps, burst=burst, tracer=self._tracer
        )
        view._session = self._require_session()
        view._owns_session = False
        return view

    def certificate_authority(self) -> bytes:
        """The PEM CA bundle this client trusts, as its kubeconfig gives it (empty if none):
        what kube-controller-manager publishes when no ``--root-ca-file`` is given."""
        path = getattr(self._config.official, "ssl_ca_cert", None)
        if not path:
            return b""
        try:
            with open(path, "rb") as file:
                return file.read()
        except OSError:
            return b""

    async def __aenter__(self) -> KubeClient:
        self._session = aiohttp.ClientSession(
            base_url=self._config.server,
            connector=aiohttp.TCPConnector(ssl=self._config.ssl_context, limit=0),
            headers={"User-Agent": _USER_AGENT, "Accept": "application/json"},
        )
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
            self._session = None

    async def discover(self, group: str, version: str, resource: str) -> ApiResource:
        path = f"/apis/{group}/{version}" if group else f"/api/{version}"
        what = f"{group}/{version}/{resource}" if group else f"{version}/{resource}"
        try:
            body = await self._get(path, {})
        except KubeApiError as error:
            if error.status == 404:
                raise UnknownResourceError(
                    404, "NotFound", f"the apiserver serves no API group version for {what}"
                ) from error
            raise
        for entry in _resources_decoder.decode(body).resources:
            if entry.name == resource:
                return ApiResource(
                    group,
                    version,
                    entry.name,
                    entry.kind,
                    entry.namespaced,
                    frozenset(entry.verbs),
                )
        raise UnknownResourceError(
            404,
            "NotFound",
            f"the apiserver serves no resource {what} ('kubectl api-resources' "
            "lists what it serves)",
        )

    async def get_document(self, path: str, *, accept: str) -> tuple[bytes, str]:
        """A GET with content negotiation: the body and the Content-Type the server chose
        (discovery answers in the aggregated or the legacy format, as it can)."""
        session = self._require_session()
        async with session.get(
            path,
            headers={"Accept": accept, **self._auth_headers()},
            timeout=aiohttp.ClientTimeout(total=self._timeout * 4, sock_connect=self._timeout),
        ) as response:
            body = await response.read()
            if response.status != 200:
                raise _error_from(response.status, body)
            return body, response.headers.get("Content-Type", "")

    async def list_page(
        self,
        resource: ApiResource,
        *,
        limit: int,
        continue_token: str | None = None,
        metadata_only: bool = False,
        namespace: str | None = None,
        field_selector: str | None = None,
    ) -> ListPage:
        """One page, cluster-wide or of one ``namespace``; with ``metadata_only`` the items
        are PartialObjectMetadata."""
        params: dict[str, str] = {"limit": str(limit)}
        if continue_token:
            params["continue"] = continue_token
        if field_selector is not None:
            params["fieldSelector"] = field_selector
        accept = METADATA_LIST_ACCEPT if metadata_only else None
        path = _collection(resource, namespace) if namespace else resource.path
        return decode_list_page(await self._get(path, params, accept=accept))

    @contextlib.asynccontextmanager
    async def watch(
        self,
        resource: ApiResource,
        *,
        resource_version: str,
        timeout_seconds: int = 300,
        metadata_only: bool = False,
    ) -> AsyncIterator[AsyncIterator[WatchEvent]]:
        """Open a watch after ``resource_version``; entering means the apiserver accepted it.

        The events (bookmarks included) run until the server ends the watch. An ERROR event
        is raised as :class:`KubeApiError` (:class:`GoneError` for 410). With
        ``metadata_only`` each event's object is a PartialObjectMetadata.
        """
        params = {
            "watch": "1",
            "allowWatchBookmarks": "true",
            "resourceVersion": resource_version,
            "timeoutSeconds": str(timeout_seconds),
        }
        session = self._require_session()
        headers = self._auth_headers()
        if metadata_only:
            headers["Accept"] = METADATA_ACCEPT
        async with session.get(
            resource.path,
            params=params,
            headers=headers,
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self._timeout, sock_read=timeout_seconds + 30
            ),
        ) as response:
            if response.status != 200:
                raise _error_from(response.status, await response.read())
            yield _events(response)

    async def get(self, resource: ApiResource, namespace: str | None, name: str) -> dict[str, Any]:
        """A live read (not the cache): for the few checks that must see the present."""
        body = await self._get(_item(resource, namespace, name, None), {})
        result: dict[str, Any] = msgspec.json.decode(body)
        return result

    async def get_metadata(
        self, resource: ApiResource, namespace: str | None, name: str
    ) -> dict[str, Any]:
        """A live read of an object's metadata only (PartialObjectMetadata): what the garbage
        collector reads, and a Secret's data never leaves the apiserver."""
        path = _item(resource, namespace, name, None)
        result: dict[str, Any] = msgspec.json.decode(
            await self._get(path, {}, accept=METADATA_ACCEPT)
        )
        return result

    # --- writes ---------------------------------------------------------------------------

    async def create(
        self, resource: ApiResource, namespace: str | None, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        return await self._write("POST", _collection(resource, namespace), body)

    async def replace(
        self,
        resource: ApiResource,
        namespace: str | None,
        name: str,
        body: Mapping[str, Any],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """PUT: optimistic concurrency through ``metadata.resourceVersion`` in ``body``."""
        path = _item(resource, namespace, name, subresource)
        return await self._write("PUT", path, body)

    async def patch(
        self,
        resource: ApiResource,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any] | list[Any],
        *,
        patch_type: str = "merge",
        subresource: str | None = None,
    ) -> dict[str, Any]:
        content_type = {
            "merge": "application/merge-patch+json",
            "strategic": "application/strategic-merge-patch+json",
            "json": "application/json-patch+json",
        }[patch_type]
        path = _item(resource, namespace, name, subresource)
        return await self._write("PATCH", path, patch, content_type=content_type)

    async def apply(
        self,
        resource: ApiResource,
        namespace: str | None,
        name: str,
        body: Mapping[str, Any],
        *,
        field_manager: str,
        force: bool = True,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """Server-side apply of ``body`` (the fields this manager owns) under ``field_manager``;
        ``force`` takes over fields another manager set, as a controller must."""
        path = _item(resource, namespace, name, subresource)
        query = urllib.parse.urlencode(
            {"fieldManager": field_manager, **({"force": "true"} if force else {})}
        )
        return await self._write(
            "PATCH", f"{path}?{query}", body, content_type="application/apply-patch+yaml"
        )

    async def delete(
        self,
        resource: ApiResource,
        namespace: str | None,
        name: str,
        *,
        uid: str | None = None,
        resource_version: str | None = None,
        propagation: str | None = None,
        grace_period_seconds: int | None = None,
    ) -> dict[str, Any]:
        """DELETE one object; ``grace_period_seconds=0`` force-deletes a pod (no kubelet wait)."""
        options: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        preconditions = {
            key: value
            for key, value in (("uid", uid), ("resourceVersion", resource_version))
            if value
        }
        if preconditions:
            options["preconditions"] = preconditions
        if propagation:
            options["propagationPolicy"] = propagation
        return await self._write("DELETE", _item(resource, namespace, name, None), options)

    async def delete_collection(
        self, resource: ApiResource, namespace: str, *, propagation: str | None = None
    ) -> None:
        """DELETE on a namespace's collection (the ``deletecollection`` verb). The answer, a
        list of what was deleted, comes as metadata only: a fraction of the objects' size."""
        options: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if propagation:
            options["propagationPolicy"] = propagation
        await self._write(
            "DELETE", _collection(resource, namespace), options, accept=METADATA_LIST_ACCEPT
        )

    async def _write(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | list[Any],
        *,
        content_type: str = "application/json",
        accept: str | None = None,
    ) -> dict[str, Any]:
        if self._limiter is not None:
            await self._limiter.acquire()
        session = self._require_session()
        headers = {"Content-Type": content_type, **self._auth_headers()}
        if accept is not None:
            headers["Accept"] = accept
        span_name = f"{method} {path}"
        if self._tracer is None:
            return await self._send(session, method, path, body, headers)
        with self._tracer.start_as_current_span(
            span_name,
            kind=SpanKind.CLIENT,
            attributes={"http.request.method": method, "url.path": path},
        ) as span:
            # The write's own span is the parent the apiserver's spans hang under.
            APISERVER_PROPAGATOR.inject(headers, setter=_setter)
            try:
                return await self._send(session, method, path, body, headers)
            except KubeApiError as error:
                span.set_attribute("http.response.status_code", error.status)
                raise

    async def _send(
        self,
        session: aiohttp.ClientSession,
        method: str,
        path: str,
        body: Mapping[str, Any] | list[Any],
        headers: dict[str, str],
    ) -> dict[str, Any]:
        async with session.request(
            method,
            path,
            data=_encoder.encode(body),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=self._timeout * 2, sock_connect=self._timeout),
        ) as response:
            payload = await response.read()
            if response.status >= 300:
                raise _error_from(response.status, payload)
            result: dict[str, Any] = msgspec.json.decode(payload) if payload else {}
            return result

    async def _get(
        self, path: str, params: Mapping[str, str], *, accept: str | None = None
    ) -> bytes:
        session = self._require_session()
        headers = self._auth_headers()
        if accept is not None:
            headers["Accept"] = accept
        async with session.get(
            path,
            params=params,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=self._timeout * 4, sock_connect=self._timeout),
        ) as response:
            body = await response.read()
            if response.status != 200:
                raise _error_from(response.status, body)
            return body

    def _auth_headers(self) -> dict[str, str]:
        authorization = self._config.authorization()
        return {"Authorization": authorization} if authorization else {}

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("KubeClient used outside 'async with'")
        return self._session


async def _events(response: aiohttp.ClientResponse) -> AsyncIterator[WatchEvent]:
    # Lines are split here, not by aiohttp's readline, which caps a line at 128 KiB: an object
    # can be 1.5 MiB.
    buffer = bytearray()
    async for chunk in response.content.iter_any():
        buffer += chunk
        start = 0
        while (end := buffer.find(b"\n", start)) != -1:
            line = bytes(buffer[start:end])
            start = end + 1
            if line.strip():
                yield decode_watch_event(line)
        del buffer[:start]


def _collection(resource: ApiResource, namespace: str | None) -> str:
    base = (
        f"/apis/{resource.group}/{resource.version}"
        if resource.group
        else f"/api/{resource.version}"
    )
    if resource.namespaced:
        return f"{base}/namespaces/{namespace}/{resource.name}"
    return f"{base}/{resource.name}"


def _item(resource: ApiResource, namespace: str | None, name: str, subresource: str | None) -> str:
    path = f"{_collection(resource, namespace)}/{name}"
    return f"{path}/{subresource}" if subresource else path


class TokenBucket:
    """client-go's token bucket: ``qps`` tokens a second, at most ``burst`` saved up."""

    def __init__(self, qps: float, burst: int) -> None:
        self._qps = qps
        self._burst = max(1, burst)
        self._tokens = float(self._burst)
        self._last = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            now = time.monotonic()
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._qps)
            self._last = now
            self._tokens -= 1
            if self._tokens < 0:
                await asyncio.sleep(-self._tokens / self._qps)


def decode_watch_event(line: bytes) -> WatchEvent:
    """One line of a watch stream; an ERROR event raises :class:`KubeApiError`.

    One decoding pass (the hot path of the watcher): the identity is decoded, and the object's
    bytes are cut out of the line, which the apiserver writes as
    ``{"type":"<TYPE>","object":<OBJECT>}``; a line in any other shape is decoded a second time
    to find them.
    """
    event = _event_decoder.decode(line)
    head = _LINE_HEADS.get(event.type) or b'{"type":"' + event.type.encode() + b'","object":'
    end = line.rfind(b"}")
    if line.startswith(head) and line[len(head) : len(head) + 1] == b"{" and end > len(head):
        event.raw = line[len(head) : end]
    else:
        event.raw = bytes(_raw_event_decoder.decode(line).object)
    if event.type == "ERROR":
        status = _status_decoder.decode(event.raw)
        raise _error(status.code, status.reason, status.message)
    return event


def decode_identity(raw: bytes) -> ObjectIdentity:
    """The identity of one object's JSON (a list item, say)."""
    return _identity_decoder.decode(raw)


def _error_from(status_code: int, body: bytes) -> KubeApiError:
    try:
        status = _status_decoder.decode(body)
    except msgspec.DecodeError:
        return KubeApiError(status_code, "", body[:200].decode(errors="replace"))
    return error_for(status.code or status_code, status.reason, status.message, status.causes)


def _error(code: int, reason: str, message: str) -> KubeApiError:
    return error_for(code, reason, message)
