"""A lean NATS client connection for the producer: publish, and hear the replies to one inbox.

nats-py turns every message it receives into a ``Msg`` and passes it through a queue to a task;
for a JetStream publisher that is one ack per message, and that handling cost more than all of
kubus's own work per event. This connection speaks the NATS client protocol itself on an
``asyncio.Protocol``: replies are parsed in the read callback and handed to a plain function.

It does what a long-lived client connection must, and no more:

- ``nats://`` and ``tls://`` URLs with ``user:password@`` or ``token@`` credentials, one or a
  comma-separated list of a cluster's servers (:func:`parse_servers`); TLS when the scheme asks
  for it or the server requires it (the system trust store, so ``SSL_CERT_FILE`` works, or the
  context given);
- answering the server's PINGs, and its own PINGs to notice a dead server;
- reconnecting for as long as it is open, to the URLs given and to the cluster's other servers
  that the server announces, re-subscribing each time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, cast
from urllib.parse import unquote, urlsplit

from bus.errors import BusError

__all__ = [
    "ConnectionRefused",
    "NatsConnection",
    "NotConnected",
    "ProtocolError",
    "ServerUrl",
    "WireParser",
    "describe_servers",
    "parse_servers",
    "split_server_urls",
]

log = logging.getLogger(__name__)

_DEFAULT_PORT: Final = 4222
_MAX_CONTROL_LINE: Final = 64 * 1024
_CRLF: Final = b"\r\n"
_PING: Final = b"PING\r\n"
_PONG: Final = b"PONG\r\n"
_SID: Final = 1


class NotConnected(BusError, ConnectionError):
    """The connection is down (or was never up); nothing was sent."""


class ConnectionRefused(NotConnected):
    """The server refused the connection (bad credentials, TLS, a protocol mismatch)."""


class ProtocolError(BusError):
    """The server sent something that is not the NATS protocol."""


@dataclass(frozen=True)
class ServerUrl:
    scheme: str
    host: str
    port: int
    user: str | None = field(default=None, repr=False)  # a token, when there is no password
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str) -> ServerUrl:
        """``nats://[user[:password]@]host[:port]``, ``tls://…`` or ``host[:port]``."""
        text = url.strip()
        if "://" not in text:
            text = f"nats://{text}"
        try:
            parts = urlsplit(text)
            port = parts.port or _DEFAULT_PORT
        except ValueError as error:
            # urlsplit may quote the whole netloc (e.g. "invalid characters under NFKC
            # normalization"): credentials and all.
            credentials = text.rpartition("://")[2].rpartition("@")[0]
            detail = str(error).replace(credentials, "***") if credentials else str(error)
            raise BusError(f"bad NATS URL {_redact(url)!r}: {detail}") from None
        if parts.scheme not in ("nats", "tls"):
            raise BusError(
                f"bad NATS URL {_redact(url)!r}: the scheme must be nats:// or tls://, "
                f"not {parts.scheme}://"
            )
        if not parts.hostname:
            raise BusError(f"bad NATS URL {_redact(url)!r}: no host")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise BusError(f"bad NATS URL {_redact(url)!r}: a server URL has no path or query")
        return cls(
            parts.scheme,
            parts.hostname,
            port,
            unquote(parts.username) if parts.username is not None else None,
            unquote(parts.password) if parts.password is not None else None,
        )

    def with_address(self, address: str) -> ServerUrl:
        """Another server of the cluster (``host:port`` from the server's INFO), reached with
        this URL's scheme and credentials."""
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        return ServerUrl(self.scheme, host, int(port), self.user, self.password)

    def __str__(self) -> str:
        """Without the credentials: this is what logs and errors show."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


# Between the URLs of a list: a comma, where the next URL's scheme follows (so that a comma in
# a password does not split it).
_NEXT_URL: Final = re.compile(r",\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")


def parse_servers(text: str) -> tuple[ServerUrl, ...]:
    """One server URL, or several separated by commas (the servers of one cluster, as nats-py
    takes them): ``nats://a:4222,nats://b:4222``, or ``a:4222,b:4222`` without schemes.

    Each URL carries its own credentials. BusError names the URL at fault, never credentials.
    """
    items = split_server_urls(text)
    if len(items) > 1 and not all(items):
        shown = ",".join(_redact(item) for item in items)
        raise BusError(f"bad NATS URL list {shown!r}: an empty entry")
    return tuple(ServerUrl.parse(item) for item in items)


def split_server_urls(text: str) -> list[str]:
    """The list's items as written (stripped, not checked): see :func:`parse_servers`."""
    items = _NEXT_URL.split(text.strip()) if "://" in text else text.split(",")
    return [item.strip() for item in items]


def describe_servers(servers: tuple[ServerUrl, ...] | list[ServerUrl]) -> str:
    """The servers as messages name them: without credentials, comma-separated."""
    return ", ".join(str(server) for server in servers)


def _redact(url: str) -> str:
    scheme, separator, rest = url.rpartition("://")
    if "@" not in rest:
        return url
    return f"{scheme}{separator}***@{rest.rpartition('@')[2]}"


MessageHandler = Callable[[bytes, bytes | None, bytes], None]
"""Called with a message's subject, its header block (None without headers) and payload."""


class WireParser:
    """Splits the server's byte stream into protocol operations, across any read boundaries."""

    def __init__(
        self,
        *,
        on_message: MessageHandler,
        on_info: Callable[[dict[str, Any]], None],
        on_ping: Callable[[], None],
        on_pong: Callable[[], None],
        on_error: Callable[[str], None],
    ) -> None:
        self._on_message = on_message
        self._on_info = on_info
        self._on_ping = on_ping
        self._on_pong = on_pong
        self._on_error = on_error
        self._rest = b""

    def feed(self, data: bytes) -> None:
        buffer = self._rest + data if self._rest else data
        size = len(buffer)
        position = 0
        while position < size:
            end = buffer.find(_CRLF, position)
            if end < 0:
                if size - position > _MAX_CONTROL_LINE:
                    raise ProtocolError(
                        f"a protocol line longer than {_MAX_CONTROL_LINE} bytes: "
                        f"{buffer[position : position + 60]!r}…"
                    )
                break
            operation = buffer[position : position + 4]
            if operation in (b"MSG ", b"HMSG"):
                fields = buffer[position:end].split()
                try:
                    total = int(fields[-1])
                    header_size = int(fields[-2]) if operation == b"HMSG" else 0
                except (ValueError, IndexError):
                    raise ProtocolError(f"malformed {buffer[position:end]!r}") from None
                start = end + 2
                if start + total + 2 > size:
                    break  # the payload has not all arrived yet
                headers = buffer[start : start + header_size] if header_size else None
                payload = buffer[start + header_size : start + total]
                position = start + total + 2
                self._on_message(fields[1], headers, payload)
                continue
            line = buffer[position:end]
            position = end + 2
            if line == b"PING":
                self._on_ping()
            elif line == b"PONG":
                self._on_pong()
            elif line.startswith(b"INFO "):
                try:
                    info = json.loads(line[5:])
                except ValueError:
                    raise ProtocolError(f"unreadable {line[:200]!r}") from None
                self._on_info(info)
            elif line.startswith(b"-ERR"):
                self._on_error(line[4:].strip().strip(b"'").decode(errors="replace"))
            elif line != b"+OK":
                raise ProtocolError(f"unknown protocol operation {line[:60]!r}")
        self._rest = buffer[position:] if position < size else b""


class _Session(asyncio.Protocol):
    """One TCP (or TLS) connection's life, from INFO to connection_lost."""

    def __init__(self, owner: NatsConnection) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.info: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()
        self.pings_out = 0
        self.parser = WireParser(
            on_message=owner.on_message,
            on_info=self._info,
            on_ping=self._ping,
            on_pong=self._pong,
            on_error=self._error,
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed(data)
        except ProtocolError as error:
            self._fail(error)
            if self.transport is not None:
                self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        reason = exc or NotConnected("the server closed the connection")
        self._fail(reason)
        if not self.lost.done():
            self.lost.set_result(exc)
        self.owner._session_lost(self, reason)

    def _fail(self, error: BaseException) -> None:
        for waiter in (self.info, self.ready):
            if not waiter.done():
                waiter.set_exception(error)
                waiter.exception()  # retrieved: whoever awaits it sees it; nobody else must

    def _info(self, info: dict[str, Any]) -> None:
        if not self.info.done():
            self.info.set_result(info)
        self.owner._learn(info)

    def _ping(self) -> None:
        if self.transport is not None:
            self.transport.write(_PONG)

    def _pong(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)  # the handshake's PING: CONNECT was accepted
        self.pings_out = 0

    def _error(self, text: str) -> None:
        if not self.ready.done():
            self._fail(ConnectionRefused(f"the server refused the connection: {text}"))
            return
        log.warning("NATS server error: %s", text)


class NatsConnection:
    """A client connection that reconnects until closed; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        name: str,
        on_message: MessageHandler,
        on_disconnect: Callable[[BaseException], None] = lambda _error: None,
        connect_timeout: float = 5.0,
        reconnect_wait: float = 0.5,
        ping_interval: float = 20.0,
        max_pings_out: int = 2,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._configured = parse_servers(url)
        self._url = self._configured[0]  # whose credentials announced servers are reached with
        self._servers: list[ServerUrl] = list(dict.fromkeys(self._configured))
        self._name = name
        self.on_message = on_message
        self._on_disconnect = on_disconnect
        self._connect_timeout = connect_timeout
        self._reconnect_wait = reconnect_wait
        self._ping_interval = ping_interval
        self._max_pings_out = max_pings_out
        self._tls = tls
        self._subjects: list[str] = []
        self._session: _Session | None = None
        self._server: ServerUrl | None = None
        self._closed = False
        self._reconnecting: asyncio.Task[None] | None = None
        self._pinging: asyncio.Task[None] | None = None
        self.max_payload = 1024 * 1024

    @property
    def is_connected(self) -> bool:
        return self._session is not None

    @property
    def server(self) -> ServerUrl | None:
        """The server connected to now (None while down)."""
        return self._server

    @property
    def servers(self) -> tuple[ServerUrl, ...]:
        """Where a reconnect tries: the URLs' servers, then those the cluster announced."""
        return tuple(self._servers)

    def subscribe(self, subject: str) -> None:
        """Receive ``subject`` on ``on_message``, from the next (re)connect on."""
        if self._session is not None or self._subjects:
            raise BusError("a NatsConnection takes its one subscription before connect()")
        self._subjects.append(subject)

    async def connect(self) -> None:
        """The first connection, to the first of the URLs' servers that takes it; raises
        NotConnected (or ConnectionRefused, at once: the others would refuse the same
        credentials) with each server's reason."""
        failures: list[str] = []
        last: BaseException | None = None
        for server in dict.fromkeys(self._configured):
            try:
                await asyncio.wait_for(self._open(server), timeout=self._connect_timeout)
            except (OSError, TimeoutError, ssl.SSLError, BusError) as error:
                if isinstance(error, TimeoutError):
                    reason = f"no answer within {self._connect_timeout:g}s"
                else:
                    reason = str(error) or repr(error)
                if isinstance(error, ConnectionRefused):
                    raise ConnectionRefused(
                        f"cannot connect to NATS at {server}: {reason}"
                    ) from error
                failures.append(f"{server}: {reason}")
                last = error
                continue
            break
        else:
            raise NotConnected(f"cannot connect to NATS at {'; '.join(failures)}") from last
        self._pinging = asyncio.get_running_loop().create_task(self._ping_loop())

    def write(self, data: bytes) -> None:
        session = self._session
        if session is None or session.transport is None:
            raise NotConnected(f"not connected to NATS at {self._server or self._url}")
        session.transport.write(data)

    async def close(self) -> None:
        self._closed = True
        for task in (self._reconnecting, self._pinging):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        session, self._session = self._session, None
        if session is not None and session.transport is not None:
            session.transport.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(session.lost), timeout=2)

    # --- connecting ---------------------------------------------------------------------

    async def _open(self, server: ServerUrl) -> None:
        loop = asyncio.get_running_loop()
        # In plain text first, TLS or not: the server sends its INFO before any handshake.
        transport, session = await loop.create_connection(
            lambda: _Session(self), server.host, server.port
        )
        try:
            info = await session.info
            if not info.get("headers", False):
                raise ConnectionRefused("the server has no header support (NATS 2.2+ has)")
            if server.scheme == "tls" or info.get("tls_required", False):
                upgraded = await loop.start_tls(
                    transport, session, self._tls_context(), server_hostname=server.host
                )
                if upgraded is None:
                    raise NotConnected(f"the TLS handshake with {server} did not complete")
                session.transport = transport = upgraded
            transport.write(self._handshake(server, info))
            await session.ready
        except BaseException:
            transport.abort()
            raise
        self.max_payload = int(info.get("max_payload", self.max_payload))
        self._session, self._server = session, server

    def _tls_context(self) -> ssl.SSLContext:
        return self._tls or ssl.create_default_context()

    def _handshake(self, server: ServerUrl, info: dict[str, Any]) -> bytes:
        options: dict[str, Any] = {
            "verbose": False,
            "pedantic": False,
            "lang": "python3",
            "version": "kubus",
            "protocol": 1,
            "headers": True,
            "no_responders": True,
            "name": self._name,
        }
        if server.user is not None and server.password is not None:
            options["user"], options["pass"] = server.user, server.password
        elif server.user is not None:
            options["auth_token"] = server.user
        lines = [b"CONNECT " + json.dumps(options).encode()]
        lines += [f"SUB {subject} {_SID}".encode() for subject in self._subjects]
        return _CRLF.join([*lines, b"PING", b""])

    def _learn(self, info: dict[str, Any]) -> None:
        """The servers a cluster announces are where to reconnect when ours is gone."""
        for address in info.get("connect_urls") or ():
            try:
                server = self._url.with_address(str(address))
            except ValueError:
                continue
            if server not in self._servers:
                self._servers.append(server)

    def _session_lost(self, session: _Session, reason: BaseException) -> None:
        if session is not self._session:
            return  # a handshake that failed, or an old session
        self._session = None
        if self._closed:
            return
        log.warning("lost the NATS connection to %s (%s); reconnecting", self._server, reason)
        self._on_disconnect(NotConnected(f"lost the NATS connection to {self._server}: {reason}"))
        self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        attempts = 0
        while not self._closed:
            for server in list(self._servers):
                attempts += 1
                try:
                    await asyncio.wait_for(self._open(server), timeout=self._connect_timeout)
                except (OSError, TimeoutError, ssl.SSLError, BusError) as error:
                    if attempts % 20 == 0:
                        log.warning(
                            "still no NATS connection after %d attempts: %s", attempts, error
                        )
                    continue
                log.info("reconnected to NATS at %s after %d attempt(s)", server, attempts)
                return
            await asyncio.sleep(self._reconnect_wait * (1 + random.random() / 2))

    async def _ping_loop(self) -> None:
        """A server that stops answering is dropped, so that reconnecting can start."""
        while True:
            await asyncio.sleep(self._ping_interval)
            session = self._session
            if session is None or session.transport is None:
                continue
            if session.pings_out >= self._max_pings_out:
                log.warning(
                    "NATS at %s left %d PINGs unanswered: dropping the connection",
                    self._server,
                    session.pings_out,
                )
                session.transport.abort()
                continue
            session.pings_out += 1
            session.transport.write(_PING)
