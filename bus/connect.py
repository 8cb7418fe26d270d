"""Connecting a nats-py client at start-up: within a bounded time, in one line, no credentials.

nats-py left to itself retries an unreachable server for ever when asked to reconnect for
ever, and its default error callback logs a traceback per attempt, URL credentials included
where the error quotes them. Here the first connection has a deadline and fails with one
:class:`NatsConnectError` naming the servers as :class:`ServerUrl` prints them (no user,
password or token); credentials the server refuses fail at once rather than at the deadline.
Once connected, the client reconnects for as long as it lives and each disconnection is logged
in a line or two.

``--nats-url`` names one server or a comma-separated list of a cluster's servers
(:func:`bus.connection.parse_servers`); ``--nats-tls-ca`` a PEM file of the CA certificates
the servers' TLS certificates are verified against (:func:`nats_tls_context`), instead of the
system trust store.

:func:`check_jetstream` asks what the bus needs of the server before anything is created on
it: JetStream enabled, and enough servers for the stream's replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from pathlib import Path
from typing import Any, Final, cast

from nats.aio.client import Client as NatsClient
from nats.errors import AuthorizationError, NoRespondersError
from nats.errors import Error as NatsError
from nats.js.errors import ServiceUnavailableError

from bus.connection import ServerUrl, describe_servers, parse_servers, split_server_urls
from bus.errors import BusError

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "NatsConnectError",
    "TooManyReplicas",
    "check_jetstream",
    "connect_nats",
    "nats_tls_context",
    "nats_url",
    "single_server",
]

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT: Final = 30.0
# Per attempt; attempts repeat until the overall deadline.
_ATTEMPT_TIMEOUT: Final = 5.0
_CLOSE_TIMEOUT: Final = 1.0
_SCRUB_MIN: Final = 3
# What nats-server says (as -ERR) to credentials it does not take.
_REFUSALS: Final = (
    "authorization violation",
    "authentication",
)  # credentials shorter than this are not scrubbed out of error text


def nats_url(value: object) -> str:
    """A ``--nats-url`` value (a flag's string or a YAML value): a URL kubus can use, or
    ValueError saying why, without the URL's credentials."""
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {value!r} ({type(value).__name__})")
    try:
        parse_servers(value)
    except BusError as error:
        raise ValueError(str(error)) from None
    return value


_PEM_CERTIFICATE: Final = "-----BEGIN CERTIFICATE-----"


def nats_tls_context(ca_file: Path) -> ssl.SSLContext:
    """A client TLS context that trusts the CA certificates of ``ca_file`` (PEM), and only
    those; ValueError ``"<file>: <what is wrong>"`` if it cannot be read or holds none."""
    try:
        data = ca_file.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{ca_file}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{ca_file}: is a directory, not a PEM file") from None
    except OSError as error:
        raise ValueError(f"{ca_file}: {error.strerror or error}") from None
    text = data.decode("ascii", errors="replace")
    if _PEM_CERTIFICATE not in text:
        raise ValueError(
            f"{ca_file}: not a PEM CA bundle (no '{_PEM_CERTIFICATE}' block in its "
            f"{len(data)} bytes)"
        )
    try:
        return ssl.create_default_context(cadata=text)
    except ssl.SSLError as error:
        reason = error.reason or str(error)
        raise ValueError(f"{ca_file}: not a PEM CA bundle ({reason})") from None


class NatsConnectError(BusError):
    """No connection to NATS within the deadline, or the server refused us; says which."""


class TooManyReplicas(BusError):
    """More stream replicas asked for than the NATS deployment has servers."""


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Events:
    """nats-py's callbacks: quiet while connecting, a line per disconnection afterwards."""

    def __init__(self, servers: tuple[ServerUrl, ...], client: NatsClient) -> None:
        self.server = describe_servers(servers)
        self.client = client
        self.connected = False
        self.last_error: str | None = None
        self._failing = False
        self._on: str | None = None  # the server connected to last, once known
        credentials = {s for server in servers for s in (server.user, server.password) if s}
        # Longest first: a secret that contains another is scrubbed whole.
        self._secrets = sorted((s for s in credentials if len(s) >= _SCRUB_MIN), key=len)[::-1]

    def scrub(self, error: BaseException | str) -> str:
        text = str(error) or type(error).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return " ".join(text.split())

    async def error(self, error: Exception) -> None:
        reason = self.scrub(error)
        if not self.connected:
            self.last_error = reason
            log.debug("connecting to NATS at %s: %s", self.server, reason)
            if isinstance(error, AuthorizationError) or any(
                marker in reason.lower() for marker in _REFUSALS
            ):
                # Raised out of nats-py's connect loop: the same credentials will not do better.
                raise _Refused(f"the server refused the credentials ({reason})")
            if isinstance(error, ssl.SSLCertVerificationError):
                # Nor will the same trust store: say which flag changes it.
                raise _Refused(
                    f"the server's TLS certificate is not trusted ({reason}); --nats-tls-ca "
                    "names the CA that signed it"
                )
            return
        # One warning per outage; the retries after it at debug level.
        log.log(logging.DEBUG if self._failing else logging.WARNING, "NATS: %s", reason)
        self._failing = True

    async def disconnected(self) -> None:
        if self.connected and not self.client.is_closed:
            log.warning("disconnected from NATS at %s; reconnecting", self._on or self.server)

    async def reconnected(self) -> None:
        self._failing = False
        self.note_server()
        log.info("reconnected to NATS at %s", self._on or self.server)

    def note_server(self) -> None:
        """Remember the server the client is on now (without credentials), for the lines
        about losing it."""
        uri = self.client.connected_url
        if uri is not None and uri.hostname:
            self._on = str(ServerUrl(uri.scheme or "nats", uri.hostname, uri.port or 4222))


async def connect_nats(
    url: str,
    *,
    name: str,
    within: float = DEFAULT_CONNECT_TIMEOUT,
    reconnect_wait: float = 0.5,
    tls: ssl.SSLContext | None = None,
) -> NatsClient:
    """A connected client, or :class:`NatsConnectError` after at most ``within`` seconds.

    ``url`` is one server or a comma-separated list; ``tls`` the context TLS connections are
    verified with (default: the system trust store)."""
    servers = parse_servers(url)
    client = NatsClient()
    events = _Events(servers, client)
    connected = False
    options: dict[str, Any] = {} if tls is None else {"tls": tls}
    try:
        async with asyncio.timeout(within):
            await client.connect(
                servers=_nats_py_urls(url),
                name=name,
                # In the order given: the first is the one to try first (nats-py shuffles).
                dont_randomize=True,
                max_reconnect_attempts=-1,
                # nats-py annotates these int; it waits on them with asyncio, floats and all.
                reconnect_time_wait=cast(int, reconnect_wait),
                connect_timeout=cast(int, min(_ATTEMPT_TIMEOUT, within)),
                error_cb=events.error,
                disconnected_cb=events.disconnected,
                reconnected_cb=events.reconnected,
                **options,
            )
        connected = True
    except TimeoutError:
        reason = events.last_error or "no answer"
    except _Refused as refusal:
        reason = refusal.reason
    except (OSError, NatsError, ssl.SSLError) as error:
        reason = events.scrub(error)
    finally:
        events.connected = connected
        if connected:
            events.note_server()
        else:
            # Bounded: nats-py's close of a client whose TLS handshake failed waits for ever
            # (for the half-open transport to close); such a client has nothing to flush.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), timeout=_CLOSE_TIMEOUT)
    if connected:
        return client
    raise NatsConnectError(
        f"cannot connect to NATS at {events.server} within {within:g}s: {reason}"
    ) from None


def _nats_py_urls(url: str) -> list[str]:
    """The list's URLs as nats-py takes them: each with a scheme."""
    return [item if "://" in item else f"nats://{item}" for item in split_server_urls(url)]


async def check_jetstream(client: NatsClient, url: str, *, replicas: int = 1) -> None:
    """JetStream is on, and a single server is not asked for more than one replica.

    A cluster's own size is not told to clients reliably (its INFO lists each server's
    addresses, several per server); there the server refuses a stream with too many replicas
    when it is created, before anything else exists.
    """
    server = describe_servers(parse_servers(url))
    try:
        await client.jetstream().account_info()
    except (ServiceUnavailableError, NoRespondersError):
        raise BusError(
            f"NATS at {server} has no JetStream; kubus needs it (nats-server --jetstream)"
        ) from None
    except (NatsError, TimeoutError) as error:
        raise BusError(
            f"NATS at {server} does not answer JetStream requests: {error or 'timeout'}"
        ) from None
    if replicas > 1 and await single_server(url):
        raise TooManyReplicas(
            f"{replicas} replicas asked for, but NATS at {server} is a single server, not a "
            "cluster: it holds 1"
        )


async def single_server(url: str, *, within: float = 5.0) -> bool:
    """True if the (first answering) server says in its INFO that it is in no cluster; False
    if it is, or if none says within ``within`` seconds (a server that starts with TLS, say)."""
    for server in dict.fromkeys(parse_servers(url)):
        answer = await _alone(server, within=within)
        if answer is not None:
            return answer
    return False


async def _alone(server: ServerUrl, *, within: float) -> bool | None:
    """What one server's INFO says: in no cluster (True), in one (False), or nothing (None)."""
    info: dict[str, Any] = {}
    writer = None
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection(server.host, server.port)
            line = await reader.readline()
        if line.startswith(b"INFO "):
            info = json.loads(line[5:])
    except (OSError, TimeoutError, ValueError):
        return None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    if not info:
        return None
    return not info.get("cluster")
