"""Idempotent provisioning of the object stream and the buckets kubus keeps in NATS.

Provisioning compares what exists with what kubus wants. A setting that can be changed in
place is updated and the change logged; one that cannot (storage, the partition count the
subjects were laid out with) is a :class:`BusConfigError` that names the setting and both
values. Nothing is silently left as it was.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BucketNotFoundError, NotFoundError, ServiceUnavailableError
from nats.js.kv import KeyValue

from bus.errors import BusConfigError, BusError
from bus.layout import BusLayout

__all__ = [
    "MAX_REPLICAS",
    "PROVISION_WITHIN",
    "StreamSettings",
    "ensure_bucket",
    "ensure_object_stream",
    "provisioning",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long provisioning waits out a cluster that cannot answer yet: a new cluster electing its
# meta leader, a new replicated stream electing its own. Each takes seconds, under load longer
# than one API request's timeout.
PROVISION_WITHIN: Final = 60.0
_RETRY_AFTER: Final = 0.5

MAX_REPLICAS: Final = 5  # JetStream's own limit on a stream's (and a bucket's) replicas
# Bumped when kubus changes how it lays out the stream; recorded in the stream's metadata.
SETTINGS_VERSION: Final = "1"
PARTITIONS_KEY: Final = "kubus.partitions"
VERSION_KEY: Final = "kubus.settings-version"


@dataclass(frozen=True)
class StreamSettings:
    replicas: int = 1
    # How long a republish of the same uid:resourceVersion is recognised as a duplicate.
    duplicate_window_seconds: float = 120.0
    storage: StorageType = StorageType.FILE


def object_stream_config(layout: BusLayout, settings: StreamSettings) -> StreamConfig:
    return StreamConfig(
        name=layout.object_stream,
        description="kubus: the latest state of every watched Kubernetes object",
        subjects=[layout.object_subjects],
        retention=RetentionPolicy.LIMITS,
        max_msgs_per_subject=1,
        discard=DiscardPolicy.OLD,
        storage=settings.storage,
        num_replicas=settings.replicas,
        duplicate_window=settings.duplicate_window_seconds,
        allow_direct=True,
        allow_msg_ttl=True,
        metadata={PARTITIONS_KEY: str(layout.partitions), VERSION_KEY: SETTINGS_VERSION},
    )


# Settings compared on an existing stream; the first group cannot change in place.
_FIXED = ("storage",)
_UPDATABLE = (
    "subjects",
    "max_msgs_per_subject",
    "num_replicas",
    "duplicate_window",
    "allow_direct",
    "allow_msg_ttl",
    "discard",
)


async def provisioning(
    what: str, attempt: Callable[[], Awaitable[T]], *, within: float = PROVISION_WITHIN
) -> T:
    """``attempt()``, tried again while JetStream does not answer or says it is unavailable;
    after ``within`` seconds a :class:`BusError` naming ``what``. An attempt must be idempotent:
    a create that timed out may have happened."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await attempt()
        except (NatsTimeoutError, ServiceUnavailableError) as error:
            if time.monotonic() + _RETRY_AFTER >= deadline:
                reason = getattr(error, "description", None) or "no answer"
                raise BusError(
                    f"NATS did not {what} within {within:g}s: {reason} (a cluster without a "
                    "JetStream leader, or a request the server's permissions refuse, which "
                    "its log names)"
                ) from None
            log.info("NATS did not %s yet (%s); trying again", what, type(error).__name__)
            await asyncio.sleep(_RETRY_AFTER)


async def ensure_object_stream(
    js: JetStreamContext,
    layout: BusLayout,
    settings: StreamSettings | None = None,
    *,
    update: bool = True,
) -> None:
    """Create the stream, or check an existing one's layout and (``update``) bring its
    settings to ``settings``. Readers pass ``update=False``: the watcher owns the settings (a
    reconciler must not shrink a stream the watcher made with 3 replicas back to 1)."""
    await provisioning(
        f"provision stream {layout.object_stream}",
        lambda: _ensure_object_stream(js, layout, settings, update=update),
    )


async def _ensure_object_stream(
    js: JetStreamContext,
    layout: BusLayout,
    settings: StreamSettings | None,
    *,
    update: bool,
) -> None:
    desired = object_stream_config(layout, settings or StreamSettings())
    try:
        info = await js.stream_info(layout.object_stream)
    except NotFoundError:
        await js.add_stream(desired)
        log.info("created stream %s (%d partitions)", layout.object_stream, layout.partitions)
        return
    existing = info.config
    recorded = (existing.metadata or {}).get(PARTITIONS_KEY)
    if recorded is not None and recorded != str(layout.partitions):
        raise BusConfigError(
            f"stream {layout.object_stream} lays out objects in {recorded} partitions, but "
            f"{layout.partitions} were asked for; use --partitions {recorded}, or delete the "
            "stream to start over"
        )
    if not update:
        return
    for name in _FIXED:
        want, have = getattr(desired, name), getattr(existing, name)
        if _normal(want) != _normal(have):
            raise BusConfigError(
                f"stream {layout.object_stream} has {name}={_normal(have)}, kubus wants "
                f"{_normal(want)}, and NATS cannot change it in place; delete the stream to "
                "start over"
            )
    changes = [
        f"{name} {_normal(getattr(existing, name))} -> {_normal(getattr(desired, name))}"
        for name in _UPDATABLE
        if _normal(getattr(existing, name)) != _normal(getattr(desired, name))
    ]
    if recorded is None or (existing.metadata or {}).get(VERSION_KEY) != SETTINGS_VERSION:
        changes.append(f"metadata {existing.metadata} -> {desired.metadata}")
    if changes:
        await js.update_stream(desired)
        log.warning("updated stream %s: %s", layout.object_stream, "; ".join(changes))


async def ensure_bucket(
    js: JetStreamContext,
    bucket: str,
    *,
    ttl_seconds: float | None = None,
    history: int = 1,
    replicas: int = 1,
) -> KeyValue:
    """A KV bucket with these settings; an existing one with other TTL/history is an error,
    one with another number of replicas is brought to ``replicas`` (NATS can, in place)."""
    return await provisioning(
        f"provision bucket {bucket}",
        lambda: _ensure_bucket(js, bucket, ttl_seconds, history, replicas),
    )


async def _ensure_bucket(
    js: JetStreamContext, bucket: str, ttl_seconds: float | None, history: int, replicas: int
) -> KeyValue:
    try:
        kv = await js.key_value(bucket)
    except BucketNotFoundError:
        return await js.create_key_value(
            KeyValueConfig(bucket=bucket, history=history, ttl=ttl_seconds, replicas=replicas)
        )
    status = await kv.status()
    have_ttl = status.ttl or None
    if (have_ttl or 0) != (ttl_seconds or 0) or status.history != history:
        raise BusConfigError(
            f"bucket {bucket} has ttl={have_ttl} history={status.history}, kubus wants "
            f"ttl={ttl_seconds} history={history}; delete the bucket to start over"
        )
    config = status.stream_info.config
    have_replicas = config.num_replicas or 1
    if have_replicas != replicas:
        config.num_replicas = replicas
        await js.update_stream(config)
        log.warning("updated bucket %s: replicas %d -> %d", bucket, have_replicas, replicas)
    return kv


def _normal(value: Any) -> Any:
    """Settings as comparable plain values (enums to their value, floats rounded)."""
    if hasattr(value, "value"):
        return value.value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return round(float(value), 3)
    if isinstance(value, list):
        return sorted(value)
    return value
