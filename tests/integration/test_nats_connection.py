"""bus.connection and the producer against real nats-servers of each test's own: credentials,
TLS, a restarted server, a hung one, the max payload, and a cluster that loses a server.

Only nats-server is needed (no Kubernetes stack). Blocking calls on a server (start, stop,
pause) run in a thread, so that the connection under test keeps running meanwhile.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import nats
import pytest
from nats.js.api import StreamConfig

from bus.connection import ConnectionRefused, NatsConnection, NotConnected
from bus.producer import JetStreamProducer, PubAck, PublishRejected
from tests.support.nats_server import NatsServer
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

Outcome = tuple[PubAck | None, BaseException | None]

HEADERS = b"NATS/1.0\r\n\r\n"
PASSWORD = "s3cr@t:pa/ss%w0rd"  # URL-encoded in URLs; nats-py gets it as an argument
TOKEN = "T0KEN-4f1c2a9e"


# --- helpers ------------------------------------------------------------------------------


def publish(
    producer: JetStreamProducer, subject: str, payload: bytes, headers: bytes = HEADERS
) -> asyncio.Future[Outcome]:
    outcome: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
    producer.publish(subject, headers, payload, lambda ack, error: outcome.set_result((ack, error)))
    return outcome


async def published(
    producer: JetStreamProducer, subject: str, payload: bytes, headers: bytes = HEADERS
) -> Outcome:
    return await asyncio.wait_for(publish(producer, subject, payload, headers), timeout=10)


async def add_stream(url: str, name: str, subjects: list[str], **options: Any) -> None:
    """The stream the producer publishes to, made with nats-py (``options``: credentials)."""
    client = await nats.connect(url, connect_timeout=5, allow_reconnect=False, **options)
    try:
        await client.jetstream().add_stream(StreamConfig(name=name, subjects=subjects))
    finally:
        await client.close()


def ignore(_subject: bytes, _headers: bytes | None, _payload: bytes) -> None:
    return None


def connection_of(server: NatsServer, name: str) -> dict[str, Any] | None:
    """Our client, as the server's /connz sees it (TLS version included)."""
    for entry in server.monitor("connz?limit=1024").get("connections") or ():
        if entry.get("name") == name:
            found: dict[str, Any] = entry
            return found
    return None


# --- credentials --------------------------------------------------------------------------


def test_user_and_password_in_the_url_connect_and_a_publish_is_acked(tmp_path: Path) -> None:
    with NatsServer(
        tmp_path, jetstream=True, args=["--user", "alice", "--pass", PASSWORD]
    ) as server:

        async def run() -> None:
            await add_stream(server.url(), "AUTH", ["auth.>"], user="alice", password=PASSWORD)
            producer = JetStreamProducer(
                server.url(credentials=f"alice:{quote(PASSWORD, safe='')}")
            )
            await producer.start()
            try:
                ack, error = await published(producer, "auth.one", b"hello")
            finally:
                await producer.close()
            assert error is None
            assert ack == PubAck("AUTH", 1)

        asyncio.run(run())


@pytest.mark.parametrize(
    "credentials", ["alice:wr0ng-Passw0rd", "mallory:" + quote(PASSWORD, safe=""), "alice"]
)
def test_wrong_credentials_are_refused_naming_the_server_but_not_the_password(
    tmp_path: Path, credentials: str
) -> None:
    with NatsServer(tmp_path, args=["--user", "alice", "--pass", PASSWORD]) as server:

        async def run() -> None:
            producer = JetStreamProducer(server.url(credentials=credentials), connect_timeout=5)
            started = time.monotonic()
            with pytest.raises(ConnectionRefused) as raised:
                await producer.start()
            assert time.monotonic() - started < 4, "refused at once, not timed out"
            message = str(raised.value)
            assert server.address in message
            assert "authorization" in message.lower()
            for secret in ("wr0ng-Passw0rd", PASSWORD, quote(PASSWORD, safe="")):
                assert secret not in message
            assert not producer.is_connected
            await producer.close()

        asyncio.run(run())


def test_a_token_in_the_url_connects_and_a_wrong_one_is_refused(tmp_path: Path) -> None:
    with NatsServer(tmp_path, jetstream=True, args=["--auth", TOKEN]) as server:

        async def run() -> None:
            await add_stream(server.url(), "TOKEN", ["token.>"], token=TOKEN)
            producer = JetStreamProducer(server.url(credentials=TOKEN))
            await producer.start()
            try:
                ack, error = await published(producer, "token.one", b"hello")
            finally:
                await producer.close()
            assert error is None
            assert ack == PubAck("TOKEN", 1)

            wrong = JetStreamProducer(server.url(credentials="T0KEN-guessed"))
            with pytest.raises(ConnectionRefused) as raised:
                await wrong.start()
            assert server.address in str(raised.value)
            assert "authorization" in str(raised.value).lower()
            assert "T0KEN-guessed" not in str(raised.value)
            await wrong.close()

            anonymous = JetStreamProducer(server.url())
            with pytest.raises(ConnectionRefused):
                await anonymous.start()
            await anonymous.close()

        asyncio.run(run())


# --- TLS ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path


def _openssl(*args: str | Path, cwd: Path) -> None:
    result = subprocess.run(
        ["openssl", *map(str, args)], cwd=cwd, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"openssl {args[0]} failed: {result.stderr[-2000:]}"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A throw-away CA and a server certificate of it for 127.0.0.1 and localhost."""
    directory = tmp_path / "pki"
    directory.mkdir()
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *curve, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=kubus test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "req", *curve, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
        cwd=directory,
    )  # fmt: skip
    (directory / "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext",
        cwd=directory,
    )  # fmt: skip
    return Pki(directory / "ca.pem", directory / "server.pem", directory / "server.key")


@pytest.fixture
def tls_server(tmp_path: Path, pki: Pki) -> Iterator[NatsServer]:
    args = ["--tls", "--tlscert", str(pki.cert), "--tlskey", str(pki.key)]
    with NatsServer(tmp_path / "nats", args=args) as server:
        yield server


@pytest.mark.parametrize("scheme", ["tls", "nats"], ids=["tls-scheme", "upgraded-by-info"])
def test_tls_connects_with_the_ca_from_ssl_cert_file(
    tls_server: NatsServer, pki: Pki, monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    """``tls://`` asks for TLS; with ``nats://`` the server's INFO (tls_required) does."""
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
    name = f"kubus-tls-{scheme}"

    async def run() -> None:
        received: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_message(message: Any) -> None:
            received.put_nowait(message.data)

        checker = await nats.connect(
            tls_server.url(scheme="tls", host="localhost"),
            tls=ssl.create_default_context(cafile=str(pki.ca)),
            allow_reconnect=False,
        )
        try:
            await checker.subscribe("tls.plain", cb=on_message)
            await checker.flush()
            connection = NatsConnection(
                tls_server.url(scheme=scheme, host="localhost"), name=name, on_message=ignore
            )
            await connection.connect()
            try:
                connection.write(b"PUB tls.plain 14\r\nover TLS, too\n\r\n")
                assert await asyncio.wait_for(received.get(), timeout=5) == b"over TLS, too\n"
                seen = await asyncio.to_thread(connection_of, tls_server, name)
            finally:
                await connection.close()
        finally:
            await checker.close()
        assert seen is not None
        assert str(seen.get("tls_version", "")).startswith("1.")

    asyncio.run(run())


@pytest.mark.parametrize("scheme", ["tls", "nats"], ids=["tls-scheme", "upgraded-by-info"])
def test_tls_without_the_ca_fails_naming_the_server_and_the_verification(
    tls_server: NatsServer, monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)

    async def run() -> None:
        connection = NatsConnection(
            tls_server.url(scheme=scheme, host="localhost"),
            name="kubus-untrusting",
            on_message=ignore,
        )
        with pytest.raises(NotConnected) as raised:
            await connection.connect()
        message = str(raised.value)
        assert f"localhost:{tls_server.port}" in message
        assert "certificate verify failed" in message
        assert not connection.is_connected
        await connection.close()

    asyncio.run(run())


# --- a lost server ------------------------------------------------------------------------


def test_a_crashed_server_fails_the_unanswered_at_once_and_the_producer_reconnects(
    tmp_path: Path,
) -> None:
    with NatsServer(tmp_path, jetstream=True) as server:

        async def run() -> None:
            await add_stream(server.url(), "RESTART", ["restart.>"])
            producer = JetStreamProducer(server.url(), ack_timeout=60.0, connect_timeout=2.0)
            await producer.start()
            try:
                first, error = await published(producer, "restart.first", b"kept")
                assert error is None and first == PubAck("RESTART", 1)

                # A frozen server reads nothing: these stay unanswered until it dies.
                await asyncio.to_thread(server.pause)
                in_flight = [publish(producer, f"restart.{i}", b"lost") for i in range(50)]
                await asyncio.sleep(0)  # one loop turn: the producer's write of this turn
                assert producer.in_flight == 50

                crashed = time.monotonic()
                await asyncio.to_thread(server.stop, kill=True)
                outcomes = await asyncio.wait_for(asyncio.gather(*in_flight), timeout=10)
                failed_after = time.monotonic() - crashed
                assert all(ack is None for ack, _error in outcomes)
                assert all(isinstance(error, NotConnected) for _ack, error in outcomes), outcomes
                assert failed_after < 5, f"failed after {failed_after:.1f}s, not at once"
                assert producer.in_flight == 0
                assert not producer.is_connected
                ack, error = await published(producer, "restart.while-down", b"x")
                assert ack is None and isinstance(error, NotConnected)

                await asyncio.to_thread(server.start)  # same port, same store
                await wait_until(lambda: producer.is_connected, within=10, what="the reconnect")
                ack, error = await published(producer, "restart.after", b"again")
                assert error is None
                assert ack == PubAck("RESTART", 2)  # the store survived, the frozen 50 did not
            finally:
                await producer.close()

        asyncio.run(run())


def test_a_server_that_stops_answering_is_dropped_and_reconnected_after(tmp_path: Path) -> None:
    with NatsServer(tmp_path) as server:

        async def run() -> None:
            lost: list[BaseException] = []
            received: list[bytes] = []
            connection = NatsConnection(
                server.url(),
                name="kubus-stale",
                on_message=lambda _subject, _headers, payload: received.append(payload),
                on_disconnect=lost.append,
                ping_interval=0.2,
                max_pings_out=2,
                connect_timeout=1.0,
                reconnect_wait=0.1,
            )
            connection.subscribe("stale.echo")
            await connection.connect()
            try:
                # A live server answers every PING: five intervals pass without a drop. (The
                # one sleep here: it watches for something that must not happen.)
                await asyncio.sleep(1.0)
                assert connection.is_connected and lost == []

                frozen = time.monotonic()
                await asyncio.to_thread(server.pause)
                try:
                    await wait_until(lambda: lost, within=5, what="the connection to be dropped")
                    dropped_after = time.monotonic() - frozen
                    assert not connection.is_connected
                finally:
                    await asyncio.to_thread(server.resume)
                assert dropped_after < 3, f"dropped after {dropped_after:.1f}s"
                assert isinstance(lost[0], NotConnected)
                assert server.address in str(lost[0])

                await wait_until(lambda: connection.is_connected, within=10, what="the reconnect")
                assert len(lost) == 1
                # Subscribed again on the new connection: our own message comes back.
                connection.write(b"PUB stale.echo 5\r\nagain\r\n")
                await wait_until(lambda: received, within=5, what="the echo")
                assert received == [b"again"]
            finally:
                await connection.close()

        asyncio.run(run())


# --- limits -------------------------------------------------------------------------------


def test_a_message_over_the_max_payload_is_refused_alone(tmp_path: Path) -> None:
    with NatsServer(tmp_path, jetstream=True, config="max_payload: 4096\n") as server:

        async def run() -> None:
            await add_stream(server.url(), "LIMITS", ["limits.>"])
            producer = JetStreamProducer(server.url())
            await producer.start()
            try:
                ack, error = await published(producer, "limits.big", b"x" * 5000)
                assert ack is None
                assert isinstance(error, PublishRejected)
                assert "max payload 4096" in str(error)
                assert "limits.big" in str(error)

                # Exactly the limit, headers included, still goes; and the connection lived on.
                ack, error = await published(producer, "limits.full", b"y" * (4096 - len(HEADERS)))
                assert error is None and ack == PubAck("LIMITS", 1)
                ack, error = await published(producer, "limits.small", b"z")
                assert error is None and ack == PubAck("LIMITS", 2)
                assert producer.is_connected
            finally:
                await producer.close()

        asyncio.run(run())


# --- a cluster ----------------------------------------------------------------------------


def test_a_lost_cluster_server_is_replaced_by_one_its_info_announced(tmp_path: Path) -> None:
    with (
        NatsServer(tmp_path / "a", cluster="kubus-test") as server_a,
        NatsServer(tmp_path / "b", cluster="kubus-test", routes=[server_a]) as server_b,
    ):

        async def run() -> None:
            received: list[tuple[bytes, bytes]] = []
            lost: list[BaseException] = []
            connection = NatsConnection(
                server_a.url(),
                name="kubus-failover",
                on_message=lambda subject, _headers, payload: received.append((subject, payload)),
                on_disconnect=lost.append,
                connect_timeout=1.0,
                reconnect_wait=0.1,
            )
            connection.subscribe("failover.>")
            await connection.connect()
            other = await nats.connect(server_b.url(), allow_reconnect=False)
            try:
                # B learns of our subscription over the route; A tells us about B in an INFO.
                async def through_the_route() -> bool:
                    await other.publish("failover.before", b"via A")
                    return any(subject == b"failover.before" for subject, _ in received)

                deadline = time.monotonic() + 10
                while not await through_the_route():
                    assert time.monotonic() < deadline, "no message from B through the route"
                    await asyncio.sleep(0.05)
                await wait_until(
                    lambda: server_b.port in {server.port for server in connection.servers},
                    within=5,
                    what="A to announce B in its INFO connect_urls",
                )
                assert connection.server is not None and connection.server.port == server_a.port

                await asyncio.to_thread(server_a.stop)  # for good
                await wait_until(
                    lambda: (
                        connection.is_connected
                        and connection.server is not None
                        and connection.server.port == server_b.port
                    ),
                    within=10,
                    what="the failover to B",
                )
                assert len(lost) == 1 and server_a.address in str(lost[0])

                received.clear()
                await other.publish("failover.after", b"from B")
                await other.flush()
                await wait_until(lambda: received, within=5, what="the message published on B")
                assert received == [(b"failover.after", b"from B")]
            finally:
                await other.close()
                await connection.close()

        asyncio.run(run())
