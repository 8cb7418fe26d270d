"""ControllerRevision history, as kube-controller-manager's ``pkg/controller/history``.

StatefulSets and DaemonSets record every pod template they have run as a ControllerRevision
owned by them: ``data`` holds a strategic-merge patch replacing ``spec.template``, ``revision``
a number growing with each change. This module holds what both controllers share:

- the revision's bytes as kcm writes them (:func:`revision_bytes`: Go's ``encoding/json`` of a
  ``map[string]interface{}``, sorted keys, HTML characters escaped), and the patch itself
  (:func:`template_patch`) and its inverse (:func:`apply_template_revision`);
- the name ``<owner>-<hash>`` (:func:`hash_revision`: FNV-1 32 over those bytes then the
  collision count in decimal, spelled with apimachinery's SafeEncodeString alphabet; upstream
  uses ``fnv.New32``, not the 1a variant of the pod-template-hash) and the new revision object
  (:func:`new_revision`, labelled ``controller.kubernetes.io/hash``);
- equality (:func:`equal_revision`, by the bytes), order (:func:`sort_revisions`: by revision,
  then creation time, then name) and :func:`next_revision`;
- the revisions an owner may use, read from the cache (:func:`owned_revisions`: its own and
  the orphans its selector picks);
- the writes (:class:`History`): create with the collision-count bump on ``AlreadyExists``,
  renumbering on rollback, delete, adopt and release (strategic-merge patches as upstream's).

Objects are plain apiserver JSON; the apiserver client is anything with KubeClient's calls.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

from kubus.kube import ApiResource, ConflictError, InvalidError, NotFoundError
from reconcilers.cache import ObjectCache, controller_of
from reconcilers.controllers.podtemplatehash import safe_encode_string
from reconcilers.kinds import CONTROLLERREVISIONS, Object, clone
from reconcilers.refmanager import adopt_patch, controller_ref, release_patch
from reconcilers.selectors import Selector

__all__ = [
    "CONTROLLER_REVISION_HASH_LABEL",
    "History",
    "RevisionClient",
    "RevisionOwnedError",
    "apply_template_revision",
    "equal_revision",
    "find_equal_revisions",
    "hash_revision",
    "new_revision",
    "next_revision",
    "owned_revisions",
    "revision_bytes",
    "revision_name",
    "sort_revisions",
    "template_patch",
]

CONTROLLER_REVISION_HASH_LABEL: Final = "controller.kubernetes.io/hash"
_NAME_PREFIX_LIMIT: Final = 223  # a revision name stays within 253 bytes
_FNV32_OFFSET: Final = 0x811C9DC5
_FNV32_PRIME: Final = 0x01000193
_MASK32: Final = 0xFFFFFFFF
# client-go's retry.DefaultBackoff: 4 tries, 10 ms growing fivefold (jitter left out).
_CONFLICT_DELAYS: Final = (0.01, 0.05, 0.25)


class RevisionClient(Protocol):
    """The apiserver calls the history makes (KubeClient's; a recording fake in tests)."""

    async def get(self, resource: ApiResource, namespace: str | None, name: str) -> Object: ...

    async def create(
        self, resource: ApiResource, namespace: str | None, body: Mapping[str, Any]
    ) -> Object: ...

    async def replace(
        self,
        resource: ApiResource,
        namespace: str | None,
        name: str,
        body: Mapping[str, Any],
        *,
        subresource: str | None = None,
    ) -> Object: ...

    async def patch(
        self,
        resource: ApiResource,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any] | list[Any],
        *,
        patch_type: str = "merge",
        subresource: str | None = None,
    ) -> Object: ...

    async def delete(self, resource: ApiResource, namespace: str | None, name: str) -> Object: ...


class RevisionOwnedError(Exception):
    """Adoption of a revision that already has a controller."""


# --- bytes and hash ---------------------------------------------------------------------------


def _go_escape_table() -> dict[int, str]:
    table = {code: f"\\u{code:04x}" for code in range(0x20)}
    table.update({0x08: "\\u0008", 0x0C: "\\u000c", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"})
    table.update({ord('"'): '\\"', ord("\\"): "\\\\"})
    table.update({ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026"})
    table.update({0x2028: "\\u2028", 0x2029: "\\u2029"})
    return table


_GO_ESCAPES: Final = _go_escape_table()


def _go_number(value: float) -> str:
    """A JSON number as Go prints the float64 that ``interface{}`` decoding made of it."""
    if value == int(value) and abs(value) < 1e21:
        return str(int(value))
    text = repr(float(value))
    if "e" in text and 1e-6 <= abs(value) < 1e21:
        return format(decimal.Decimal(text), "f")  # Go's 'f' format in that range
    return text  # shortest digits; outside the range Go's 'e' format spells it as repr does


def _write_go_json(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append('"' + value.translate(_GO_ESCAPES) + '"')
    elif value is None:
        out.append("null")
    elif isinstance(value, bool):
        out.append("true" if value else "false")
    elif isinstance(value, int):
        # Decoded into float64 first: beyond 2**53 Go keeps the nearest double.
        out.append(str(value) if abs(value) < 2**53 else _go_number(float(value)))
    elif isinstance(value, float):
        out.append(_go_number(value))
    elif isinstance(value, Mapping):
        out.append("{")
        for index, key in enumerate(sorted(value)):
            if index:
                out.append(",")
            out.append('"' + str(key).translate(_GO_ESCAPES) + '":')
            _write_go_json(value[key], out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write_go_json(item, out)
        out.append("]")
    else:
        raise TypeError(f"not JSON data: {type(value).__name__}")


def revision_bytes(data: Any) -> bytes:
    """A revision's ``data`` as the bytes kcm stores: ``json.Marshal`` of the decoded map."""
    out: list[str] = []
    _write_go_json(data, out)
    return "".join(out).encode()


def _fnv1_32(data: bytes, value: int = _FNV32_OFFSET) -> int:
    for byte in data:
        value = ((value * _FNV32_PRIME) & _MASK32) ^ byte
    return value


def hash_revision(data: Any, collision_count: int | None) -> str:
    """``HashControllerRevision``: of the revision's data (JSON data or its raw bytes) and,
    when not None, the collision count."""
    raw = data if isinstance(data, bytes) else revision_bytes(data)
    value = _fnv1_32(raw)
    if collision_count is not None:
        value = _fnv1_32(str(collision_count).encode(), value)
    return safe_encode_string(str(value))


def revision_name(prefix: str, hash_: str) -> str:
    """``<prefix>-<hash>``, the prefix cut to 223 bytes as upstream's."""
    return f"{prefix.encode()[:_NAME_PREFIX_LIMIT].decode(errors='ignore')}-{hash_}"


# --- the template patch -----------------------------------------------------------------------


def template_patch(owner: Object) -> Object:
    """The data of a StatefulSet's or DaemonSet's revision: a strategic-merge patch that
    replaces ``spec.template`` with the owner's."""
    template = clone(owner.get("spec", {}).get("template") or {})
    template["$patch"] = "replace"
    return {"spec": {"template": template}}


def apply_template_revision(owner: Object, revision: Object) -> Object:
    """``ApplyRevision``: a copy of ``owner`` whose ``spec.template`` is the revision's."""
    restored = clone(owner)
    data = revision.get("data") or {}
    template = (data.get("spec") or {}).get("template")
    if isinstance(template, Mapping):
        replaced = {key: clone(value) for key, value in template.items() if key != "$patch"}
        restored.setdefault("spec", {})["template"] = replaced
    return restored


def new_revision(
    owner: Object,
    owner_api: ApiResource,
    template_labels: Mapping[str, str] | None,
    data: Object,
    *,
    revision: int,
    collision_count: int | None,
) -> Object:
    """``NewControllerRevision``: named ``<owner>-<hash>``, labelled with the template's labels
    and the hash, controlled by ``owner`` (not yet created)."""
    hash_ = hash_revision(data, collision_count)
    meta = owner["metadata"]
    labels = {**(template_labels or {}), CONTROLLER_REVISION_HASH_LABEL: hash_}
    return {
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": {
            "name": revision_name(meta["name"], hash_),
            "namespace": meta.get("namespace"),
            "labels": labels,
            "ownerReferences": [controller_ref(owner, owner_api)],
        },
        "data": data,
        "revision": revision,
    }


# --- comparing and ordering -------------------------------------------------------------------


def equal_revision(left: Object | None, right: Object | None) -> bool:
    """Both None, or both revisions with the same data bytes."""
    if left is None or right is None:
        return left is right
    return revision_bytes(left.get("data")) == revision_bytes(right.get("data"))


def find_equal_revisions(revisions: Iterable[Object], needle: Object) -> list[Object]:
    """The revisions equal to ``needle``, in their order."""
    wanted = revision_bytes(needle.get("data"))
    return [r for r in revisions if revision_bytes(r.get("data")) == wanted]


def _creation_time(revision: Object) -> datetime.datetime:
    text = revision.get("metadata", {}).get("creationTimestamp")
    if not text:
        return datetime.datetime.min.replace(tzinfo=datetime.UTC)
    parsed = datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def sort_revisions(revisions: Iterable[Object]) -> list[Object]:
    """Oldest first: by ``revision``, then creation time, then name (a new list)."""
    return sorted(
        revisions,
        key=lambda r: (
            int(r.get("revision") or 0),
            _creation_time(r),
            r.get("metadata", {}).get("name", ""),
        ),
    )


def next_revision(revisions: Sequence[Object]) -> int:
    """One past the last of ``revisions`` (sorted), 1 for none."""
    if not revisions:
        return 1
    return int(revisions[-1].get("revision") or 0) + 1


# --- reading ----------------------------------------------------------------------------------


def owned_revisions(cache: ObjectCache, owner: Object, selector: Selector) -> list[Object]:
    """``ListControllerRevisions``: the cached revisions in the owner's namespace that match
    ``selector`` and are controlled by ``owner`` or by nothing (orphans to adopt)."""
    meta = owner["metadata"]
    uid = meta.get("uid")
    found = []
    for revision in cache.in_namespace(CONTROLLERREVISIONS, meta.get("namespace")):
        if not selector.matches(revision["metadata"].get("labels")):
            continue
        ref = controller_of(revision)
        if ref is None or ref.get("uid") == uid:
            found.append(revision)
    return found


# --- writing ----------------------------------------------------------------------------------


class History:
    """The revision writes of one controller (``realHistory``)."""

    def __init__(self, client: RevisionClient, api: ApiResource) -> None:
        """``api``: the ``apps/v1`` ``controllerrevisions`` resource."""
        self._client = client
        self._api = api

    async def create(
        self, owner: Object, revision: Object, collision_count: int
    ) -> tuple[Object, int]:
        """Create ``revision`` (from :func:`new_revision`) for ``owner``. When its name is
        taken by a revision with other data, bump the collision count and rename, until it
        lands; an existing revision with the same data is returned instead. Returns the
        revision and the collision count it ended with (to record in the owner's status)."""
        namespace = owner["metadata"].get("namespace")
        body = clone(revision)
        body["metadata"]["namespace"] = namespace
        raw = revision_bytes(revision.get("data"))
        while True:
            name = revision_name(owner["metadata"]["name"], hash_revision(raw, collision_count))
            body["metadata"]["name"] = name
            try:
                created = await self._client.create(self._api, namespace, body)
            except ConflictError as error:
                if error.reason != "AlreadyExists":
                    raise
                existing = await self._client.get(self._api, namespace, name)
                if revision_bytes(existing.get("data")) == raw:
                    return existing, collision_count
                collision_count += 1
                continue
            return created, collision_count

    async def update_revision(self, revision: Object, new_revision: int) -> Object:
        """Renumber ``revision`` (a rollback to it), retrying conflicts on a fresh read."""
        current = clone(revision)
        meta = current["metadata"]
        for delay in (*_CONFLICT_DELAYS, None):
            if int(current.get("revision") or 0) == new_revision:
                return current
            current["revision"] = new_revision
            try:
                return await self._client.replace(
                    self._api, meta.get("namespace"), meta["name"], current
                )
            except ConflictError:
                if delay is None:
                    raise
                await asyncio.sleep(delay)
                current = await self._client.get(self._api, meta.get("namespace"), meta["name"])
                meta = current["metadata"]
        raise AssertionError("unreachable")

    async def delete(self, revision: Object) -> None:
        meta = revision["metadata"]
        await self._client.delete(self._api, meta.get("namespace"), meta["name"])

    async def adopt(self, owner: Object, owner_api: ApiResource, revision: Object) -> Object:
        """Patch a controller ownerReference to ``owner`` onto an orphan revision (the
        revision's uid as precondition). Raises :class:`RevisionOwnedError` if it has one."""
        ref = controller_of(revision)
        if ref is not None:
            raise RevisionOwnedError(f"attempt to adopt revision owned by {ref}")
        meta = revision["metadata"]
        body = adopt_patch(owner, owner_api, meta.get("uid", ""))
        return await self._client.patch(
            self._api,
            owner["metadata"].get("namespace"),
            meta["name"],
            body,
            patch_type="strategic",
        )

    async def release(self, owner: Object, revision: Object) -> Object | None:
        """Remove ``owner``'s ownerReference from ``revision``; None when the revision is gone
        or no longer references it."""
        meta = revision["metadata"]
        body = release_patch(owner["metadata"]["uid"], meta.get("uid", ""))
        try:
            return await self._client.patch(
                self._api, meta.get("namespace"), meta["name"], body, patch_type="strategic"
            )
        except (NotFoundError, InvalidError):
            return None
