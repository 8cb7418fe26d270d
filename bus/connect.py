"""Connecting a nats-py client at start-up: within a bounded time, in one line, no credentials.

nats-py left to itself retries an unreachable server for ever when asked to reconnect for
ever, and its default error callback logs a traceback per attempt, URL credentials included
where the error quotes them. Here the first connection has a deadline and fails with one
:class:`NatsConnectError` naming the server as :class:`ServerUrl` prints it (no user, password
or token); credentials the server refuses fail at once rather than at the deadline. Once
connected, the client reconnects for as long as it lives and each disconnection is logged in
a line or two.

:func:`check_jetstream` asks what the bus needs of the server before anything is created on
it: JetStream enabled, and enough servers for the stream's replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from typing import Any, Final, cast

from nats.aio.client import Client as NatsClient
from nats.errors import AuthorizationError, NoRespondersError
from nats.errors import Error as NatsError
from nats.js.errors import ServiceUnavailableError

from bus.connection import ServerUrl
from bus.errors import BusError

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "NatsConnectError",
    "TooManyReplicas",
    "check_jetstream",
    "connect_nats",
    "nats_url",
    "single_server",
]

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT: Final = 30.0
# Per attempt; attempts repeat until the overall deadline.
_ATTEMPT_TIMEOUT: Final = 5.0
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
        ServerUrl.parse(value)
    except BusError as error:
        raise ValueError(str(error)) from None
    return value


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

    def __init__(self, server: ServerUrl, client: NatsClient) -> None:
        self.server = server
        self.client = client
        self.connected = False
        self.last_error: str | None = None
        self._failing = False
        self._secrets = [s for s in (server.user, server.password) if s and len(s) >= _SCRUB_MIN]

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
            return
        # One warning per outage; the retries after it at debug level.
        log.log(logging.DEBUG if self._failing else logging.WARNING, "NATS: %s", reason)
        self._failing = True

    async def disconnected(self) -> None:
        if self.connected and not self.client.is_closed:
            log.warning("disconnected from NATS at %s; reconnecting", self.server)

    async def reconnected(self) -> None:
        self._failing = False
        log.info("reconnected to NATS at %s", self.server)


async def connect_nats(
    url: str,
    *,
    name: str,
    within: float = DEFAULT_CONNECT_TIMEOUT,
    reconnect_wait: float = 0.5,
) -> NatsClient:
    """A connected client, or :class:`NatsConnectError` after at most ``within`` seconds."""
    server = ServerUrl.parse(url)
    client = NatsClient()
    events = _Events(server, client)
    connected = False
    try:
        async with asyncio.timeout(within):
            await client.connect(
                servers=[url if "://" in url else f"nats://{url.strip()}"],
                name=name,
                max_reconnect_attempts=-1,
                # nats-py annotates these int; it waits on them with asyncio, floats and all.
                reconnect_time_wait=cast(int, reconnect_wait),
                connect_timeout=cast(int, min(_ATTEMPT_TIMEOUT, within)),
                error_cb=events.error,
                disconnected_cb=events.disconnected,
                reconnected_cb=events.reconnected,
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
        if not connected:
            with contextlib.suppress(Exception):
                await client.close()
    if connected:
        return client
    raise NatsConnectError(
        f"cannot connect to NATS at {server} within {within:g}s: {reason}"
    ) from None


async def check_jetstream(client: NatsClient, url: str, *, replicas: int = 1) -> None:
    """JetStream is on, and a single server is not asked for more than one replica.

    A cluster's own size is not told to clients reliably (its INFO lists each server's
    addresses, several per server); there the server refuses a stream with too many replicas
    when it is created, before anything else exists.
    """
    server = ServerUrl.parse(url)
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
    """True if the server says in its INFO that it is in no cluster; False if it is, or if it
    does not say ``within`` seconds (a server that starts with TLS, say)."""
    server = ServerUrl.parse(url)
    info: dict[str, Any] = {}
    writer = None
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection(server.host, server.port)
            line = await reader.readline()
        if line.startswith(b"INFO "):
            info = json.loads(line[5:])
    except (OSError, TimeoutError, ValueError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    return bool(info) and not info.get("cluster")
