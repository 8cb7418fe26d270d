"""A pull consumer read as a stream: one request outstanding for many messages.

nats-py's ``fetch`` asks the server anew for every batch, and a batch that is not full is
only returned when its request expires; a reconciler that wants each message as soon as it
exists then pays a request, a "no messages" reply and an expiry for every delivery when
traffic trickles (about eight server messages per delivered one, measured on the dev stack).
:class:`PullStream` keeps one request for up to ``batch`` messages open instead, as nats.go's
``Consume`` does: messages are handed over as they arrive, and a new request is sent when
fewer than half of what was asked for is still to come. Idle heartbeats from the server tell a
live request from one lost with a connection; a request not heard of for two heartbeats is
replaced.

Status messages, as the server sends them on the request's inbox: ``100`` an idle heartbeat,
``408`` a request expired (its ``Nats-Pending-Messages`` header says how many of its messages
never came), ``409`` a request ended for another reason (the same header), or, with
``Consumer Deleted``, the consumer is gone (:class:`ConsumerGone`), as it is when a request
finds no responder (``503``: no such consumer). A request that ended early for another reason is
replaced at most once a second, so a refusal does not turn into a storm of requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Final

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

__all__ = ["ConsumerGone", "PullStream"]

_STATUS: Final = "Status"
_DESCRIPTION: Final = "Description"
_PENDING_MESSAGES: Final = "Nats-Pending-Messages"


class ConsumerGone(Exception):
    """The server deleted the consumer the stream pulls from."""


class PullStream:
    """Deliveries of the durable (or named ephemeral) pull consumer ``consumer`` of ``stream``."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        stream: str,
        consumer: str,
        batch: int = 256,
        expires: float = 30.0,
        heartbeat: float = 5.0,
    ) -> None:
        if heartbeat * 2 >= expires:
            raise ValueError("heartbeat must be under half of expires")
        # nats-py keeps the connection and the API prefix (a JetStream domain's) private.
        self._nc = js._nc
        self._next_subject = f"{js._prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._consumer = consumer
        self._batch = batch
        self._expires_ns = int(expires * 1e9)
        self._heartbeat = heartbeat
        self._heartbeat_ns = int(heartbeat * 1e9)
        self._inbox = ""
        self._subscription: Subscription | None = None
        self._ready: list[Msg] = []
        self._arrived = asyncio.Event()
        self._gone: str | None = None
        self._requested = 0  # messages asked for and neither received nor given up
        self._heard = 0.0  # monotonic time of the last message or status from the server
        self._hold_until = 0.0  # no new request before this (after a refused one)

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._subscription = await self._nc.subscribe(self._inbox, cb=self._received)
        await self._top_up()

    async def stop(self) -> None:
        """Stop listening. Requests still open on the server end with their expiry; what they
        deliver meanwhile is unacknowledged, and comes again after the consumer's ack wait or
        to whoever recreates the consumer."""
        if self._subscription is not None:
            subscription, self._subscription = self._subscription, None
            await subscription.unsubscribe()

    async def next(self, within: float) -> list[Msg]:
        """The messages that arrived since the last call: at once if any, else the first to
        come within ``within`` seconds (else an empty list)."""
        deadline = time.monotonic() + within
        while not self._ready:
            self._check_gone()
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, self._heartbeat)):
                    await self._arrived.wait()
            await self._top_up()
        self._check_gone()
        messages, self._ready = self._ready, []
        await self._top_up()
        return messages

    async def _top_up(self) -> None:
        """Ask for more once fewer than half of a batch is still to come; replace requests the
        server has not been heard about for two heartbeats (lost with a connection)."""
        if self._subscription is None:
            return
        if self._requested and time.monotonic() - self._heard > 2 * self._heartbeat:
            self._requested = 0
        if self._requested > self._batch // 2 or time.monotonic() < self._hold_until:
            return
        wanted = self._batch - self._requested
        request = {
            "batch": wanted,
            "expires": self._expires_ns,
            "idle_heartbeat": self._heartbeat_ns,
        }
        self._requested += wanted
        self._heard = time.monotonic()
        await self._nc.publish(self._next_subject, json.dumps(request).encode(), reply=self._inbox)

    async def _received(self, message: Msg) -> None:
        self._heard = time.monotonic()
        headers = message.headers
        status = headers.get(_STATUS) if headers else None
        if status is None:
            self._requested = max(self._requested - 1, 0)
            self._ready.append(message)
            self._arrived.set()
            return
        if status == "100":
            return  # idle heartbeat: the request is alive
        assert headers is not None
        description = headers.get(_DESCRIPTION, "")
        if status == "409" and "consumer deleted" in description.lower():
            self._gone = f"consumer {self._consumer} was deleted"
        elif status == "503":
            self._gone = f"consumer {self._consumer} does not exist (no responders)"
        elif status != "408":
            self._hold_until = time.monotonic() + 1.0
        try:
            self._requested -= int(headers.get(_PENDING_MESSAGES, ""))
        except ValueError:
            self._requested = 0  # an ended request that does not say what it still owed
        self._requested = max(self._requested, 0)
        self._arrived.set()  # let next() ask again

    def _check_gone(self) -> None:
        if self._gone is not None:
            raise ConsumerGone(self._gone)
