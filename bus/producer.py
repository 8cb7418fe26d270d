"""Publishing to JetStream with acknowledgements, many messages in flight, at low cost per message.

nats-py's ``JetStreamContext.publish_async`` spends about 50 µs of Python per message on this
machine (a header dict encoded key by key, a future and a timer per message, a flusher kick per
publish); the watcher publishes every object state, so that cost was most of its publish path.
This producer keeps the same protocol (``HPUB`` with a reply subject; the stream answers with a
JSON ``PubAck``) and removes the per-message overhead:

- one wildcard reply subscription ``<inbox>.*`` for all acks, decoded with msgspec;
- header blocks are bytes the caller builds (see :func:`bus.envelope.header_block`);
- messages published in one turn of the event loop go out as one write;
- one sweeper expires unanswered messages instead of a timer per message.

It writes through nats-py's connection (its outbound buffer, flusher and reconnect logic), using
the two private methods nats-py's own ``publish`` uses; :meth:`JetStreamProducer.start` checks
they exist, so a nats-py that changes them fails at start, by name, never silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import msgspec
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from bus.errors import BusError

__all__ = [
    "AckCallback",
    "JetStreamProducer",
    "NotConnected",
    "PubAck",
    "PublishRejected",
    "PublishTimeout",
]

log = logging.getLogger(__name__)

_SWEEP_INTERVAL: Final = 0.5
_NATS_INTERNALS: Final = ("_send_command", "_flush_pending")


class PubAck(msgspec.Struct, frozen=True):
    """The stream's answer to one stored message."""

    stream: str
    seq: int
    duplicate: bool = False


class _ApiError(msgspec.Struct, frozen=True):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _Reply(msgspec.Struct, frozen=True):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _ApiError | None = None


_reply_decoder = msgspec.json.Decoder(_Reply)


class PublishRejected(BusError):
    """JetStream refused the message (``err_code`` is JetStream's, e.g. 10071 for a failed
    ``Nats-Expected-Last-Subject-Sequence``)."""

    def __init__(self, subject: str, code: int, err_code: int, description: str) -> None:
        super().__init__(f"JetStream refused {subject}: {description} (err_code {err_code})")
        self.code = code
        self.err_code = err_code
        self.description = description


class PublishTimeout(BusError, TimeoutError):
    pass


class NotConnected(BusError, ConnectionError):
    pass


AckCallback = Callable[[PubAck | None, BaseException | None], None]
"""Called once per message: with the ack, or with the error (refused, timed out, not sent)."""


class _Pending:
    __slots__ = ("deadline", "on_done", "subject")

    def __init__(self, subject: str, on_done: AckCallback, deadline: float) -> None:
        self.subject = subject
        self.on_done = on_done
        self.deadline = deadline


class JetStreamProducer:
    def __init__(self, connection: NatsClient, *, ack_timeout: float = 10.0) -> None:
        self._nc = connection
        self._ack_timeout = ack_timeout
        self._reply_prefix = ""
        self._prefix_length = 0
        self._next_token = 0
        self._pending: dict[str, _Pending] = {}
        self._outbox: list[bytes] = []
        self._outbox_tokens: list[str] = []
        self._flush_scheduled = False
        self._writes: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._subscription: Any = None

    async def start(self) -> None:
        missing = [name for name in _NATS_INTERNALS if not hasattr(self._nc, name)]
        if missing:
            raise BusError(
                f"this nats-py has no {', '.join(missing)}: the JetStream producer needs them "
                "(kubus is tested with nats-py 2.x, as pyproject.toml requires)"
            )
        inbox = self._nc.new_inbox()
        self._reply_prefix = f"{inbox}."
        self._prefix_length = len(self._reply_prefix)
        self._subscription = await self._nc.subscribe(
            f"{inbox}.*",
            cb=self._on_reply,
            pending_msgs_limit=1_000_000,
            pending_bytes_limit=256 * 1024 * 1024,
        )
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def publish(self, subject: str, headers: bytes, payload: bytes, on_done: AckCallback) -> None:
        """Queue one message; ``on_done`` gets the stream's ack or the error, exactly once.

        Not a coroutine: the message is written with the others of this loop turn. ``on_done``
        never runs inside this call.
        """
        loop = asyncio.get_running_loop()
        if not self._nc.is_connected:
            error = NotConnected(f"not connected to NATS; {subject} not sent")
            loop.call_soon(on_done, None, error)
            return
        token = str(self._next_token)
        self._next_token += 1
        self._pending[token] = _Pending(subject, on_done, time.monotonic() + self._ack_timeout)
        # Pieces, joined once per write: the payload is copied once, not twice.
        self._outbox += (
            f"HPUB {subject} {self._reply_prefix}{token} {len(headers)} "
            f"{len(headers) + len(payload)}\r\n".encode(),
            headers,
            payload,
            b"\r\n",
        )
        self._outbox_tokens.append(token)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    async def close(self) -> None:
        """Fail what is unanswered, stop the sweeper and the reply subscription."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for task in list(self._writes):
            task.cancel()
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        pending, self._pending = self._pending, {}
        self._outbox, self._outbox_tokens = [], []
        for entry in pending.values():
            entry.on_done(None, NotConnected("the producer was closed"))
        if self._subscription is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._outbox:
            return
        batch, tokens = b"".join(self._outbox), self._outbox_tokens
        self._outbox, self._outbox_tokens = [], []
        task = asyncio.get_running_loop().create_task(self._write(batch, tokens))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, batch: bytes, tokens: list[str]) -> None:
        try:
            if not self._nc.is_connected:
                raise NotConnected("lost the NATS connection before the write")
            await self._nc._send_command(batch)
            await self._nc._flush_pending()
        except Exception as error:
            for token in tokens:
                entry = self._pending.pop(token, None)
                if entry is not None:
                    entry.on_done(None, error)

    async def _on_reply(self, msg: Msg) -> None:
        entry = self._pending.pop(msg.subject[self._prefix_length :], None)
        if entry is None:
            return  # expired meanwhile
        if not msg.data:
            status = (msg.headers or {}).get("Status", "")
            error = PublishRejected(entry.subject, int(status or 0), 0, "no stream answered")
            entry.on_done(None, error)
            return
        try:
            reply = _reply_decoder.decode(msg.data)
        except msgspec.DecodeError as failure:
            detail = f"unreadable ack {msg.data[:100]!r}: {failure}"
            entry.on_done(None, PublishRejected(entry.subject, 0, 0, detail))
            return
        if reply.error is not None:
            problem = reply.error
            error = PublishRejected(
                entry.subject, problem.code, problem.err_code, problem.description
            )
            entry.on_done(None, error)
            return
        entry.on_done(PubAck(reply.stream, reply.seq, reply.duplicate), None)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_INTERVAL)
            now = time.monotonic()
            expired = []
            for token, entry in self._pending.items():  # insertion order = deadline order
                if entry.deadline > now:
                    break
                expired.append(token)
            for token in expired:
                entry = self._pending.pop(token)
                timeout = self._ack_timeout
                error = PublishTimeout(
                    f"no JetStream ack for {entry.subject} within {timeout:.0f}s"
                )
                try:
                    entry.on_done(None, error)
                except Exception:
                    log.exception("ack callback for %s failed", entry.subject)
