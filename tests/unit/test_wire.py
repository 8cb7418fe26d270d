"""The NATS wire protocol of bus.connection, without a server: parsing, and server URLs."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from bus.connection import ProtocolError, ServerUrl, WireParser
from bus.errors import BusError

Event = tuple[Any, ...]


class Recorder:
    """A WireParser whose callbacks append what they were given to one list, in order."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.parser = WireParser(
            on_message=lambda subject, headers, payload: self.events.append(
                ("message", subject, headers, payload)
            ),
            on_info=lambda info: self.events.append(("info", info)),
            on_ping=lambda: self.events.append(("ping",)),
            on_pong=lambda: self.events.append(("pong",)),
            on_error=lambda text: self.events.append(("error", text)),
        )

    def feed(self, *chunks: bytes) -> list[Event]:
        for chunk in chunks:
            self.parser.feed(chunk)
        return self.events


def msg(subject: str, payload: bytes, reply: str | None = None) -> bytes:
    middle = f" {reply}" if reply else ""
    return f"MSG {subject} 1{middle} {len(payload)}\r\n".encode() + payload + b"\r\n"


def hmsg(subject: str, headers: bytes, payload: bytes, reply: str | None = None) -> bytes:
    middle = f" {reply}" if reply else ""
    total = len(headers) + len(payload)
    line = f"HMSG {subject} 1{middle} {len(headers)} {total}\r\n".encode()
    return line + headers + payload + b"\r\n"


INFO = {"server_id": "NTEST", "version": "2.15.1", "headers": True, "max_payload": 1048576}
ACK_HEADERS = b"NATS/1.0\r\nNats-Msg-Id: uid-7:107\r\n\r\n"
STATUS_503 = b"NATS/1.0 503\r\n\r\n"
# Payloads holding CRLF and text that looks like protocol: only the length says where they end.
TRICKY = b"PING\r\nMSG fake 1 3\r\nabc\r\n-ERR 'no'\r\n"

STREAM = b"".join(
    [
        b"INFO " + json.dumps(INFO).encode() + b"\r\n",
        b"+OK\r\n",
        b"PING\r\n",
        b"PONG\r\n",
        msg("kubus.obj.3.core.v1.pods.ns.web-1", b'{"i": 1}'),
        msg("_INBOX.abc.7", TRICKY, reply="_INBOX.reply.1"),
        msg("empty.payload", b""),
        hmsg("_INBOX.abc.8", ACK_HEADERS, b'{"stream":"OBJ","seq":42}'),
        hmsg("_INBOX.abc.9", ACK_HEADERS, TRICKY, reply="_INBOX.reply.2"),
        hmsg("_INBOX.abc.10", STATUS_503, b""),
        b"PING\r\n",
        b"-ERR 'Authorization Violation'\r\n",
    ]
)

EXPECTED: list[Event] = [
    ("info", INFO),
    ("ping",),
    ("pong",),
    ("message", b"kubus.obj.3.core.v1.pods.ns.web-1", None, b'{"i": 1}'),
    ("message", b"_INBOX.abc.7", None, TRICKY),
    ("message", b"empty.payload", None, b""),
    ("message", b"_INBOX.abc.8", ACK_HEADERS, b'{"stream":"OBJ","seq":42}'),
    ("message", b"_INBOX.abc.9", ACK_HEADERS, TRICKY),
    ("message", b"_INBOX.abc.10", STATUS_503, b""),
    ("ping",),
    ("error", "Authorization Violation"),
]


def test_a_stream_fed_in_one_piece_gives_every_operation_in_order() -> None:
    assert Recorder().feed(STREAM) == EXPECTED


def test_a_stream_fed_byte_by_byte_gives_the_same_operations() -> None:
    recorder = Recorder()
    recorder.feed(*(STREAM[i : i + 1] for i in range(len(STREAM))))
    assert recorder.events == EXPECTED


@pytest.mark.parametrize("seed", range(40))
def test_a_stream_fed_in_random_chunks_gives_the_same_operations(seed: int) -> None:
    chooser = random.Random(seed)
    chunks, position = [], 0
    while position < len(STREAM):
        size = chooser.choice([1, 2, 3, 5, 8, 13, 40, 100, 400])
        chunks.append(STREAM[position : position + size])
        position += size
    assert Recorder().feed(*chunks) == EXPECTED


def test_a_payload_of_crlf_and_protocol_text_is_delimited_by_its_length_alone() -> None:
    payload = b"\r\n" * 10 + b"PONG\r\n" + b"\r\n"
    recorder = Recorder()
    # The control line arrives with the start of the payload, the rest in a second read.
    frame = msg("a.b", payload)
    recorder.feed(frame[:20], frame[20:], b"PONG\r\n")
    assert recorder.events == [("message", b"a.b", None, payload), ("pong",)]


def test_a_large_payload_split_over_many_reads_is_one_message() -> None:
    payload = bytes(range(256)) * 1024  # 256 KiB, longer than any control line may be
    frame = hmsg("big", STATUS_503, payload)
    recorder = Recorder()
    recorder.feed(*(frame[i : i + 4096] for i in range(0, len(frame), 4096)))
    assert recorder.events == [("message", b"big", STATUS_503, payload)]


@pytest.mark.parametrize(
    "line",
    [
        b"MSG foo.bar 1 many",
        b"MSG foo.bar",
        b"HMSG foo.bar 1 x 10",
        b"HMSG foo.bar 12",
    ],
)
def test_a_malformed_message_line_is_a_protocol_error_naming_it(line: bytes) -> None:
    recorder = Recorder()
    with pytest.raises(ProtocolError) as raised:
        recorder.feed(b"PING\r\n", line + b"\r\n")
    assert line.decode() in str(raised.value)
    assert recorder.events == [("ping",)]


def test_an_unknown_operation_is_a_protocol_error_naming_it() -> None:
    with pytest.raises(ProtocolError, match="unknown protocol operation") as raised:
        Recorder().feed(b"+OK\r\nHELLO there\r\n")
    assert "HELLO there" in str(raised.value)


def test_an_unreadable_info_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="unreadable"):
        Recorder().feed(b"INFO {not json\r\n")


def test_an_overlong_line_without_crlf_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="longer than"):
        Recorder().feed(b"INFO {" + b"x" * (70 * 1024))


def test_an_overlong_line_arriving_in_pieces_is_a_protocol_error() -> None:
    recorder = Recorder()
    with pytest.raises(ProtocolError, match="longer than"):
        recorder.feed(b"+OK\r\n", *([b"y" * 1000] * 80))
    assert recorder.events == []


# --- server URLs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("nats.example", ServerUrl("nats", "nats.example", 4222)),
        ("nats.example:4333", ServerUrl("nats", "nats.example", 4333)),
        ("nats://nats.example", ServerUrl("nats", "nats.example", 4222)),
        ("  nats://10.1.2.3:4333/  ", ServerUrl("nats", "10.1.2.3", 4333)),
        ("tls://nats.example", ServerUrl("tls", "nats.example", 4222)),
        ("tls://nats.example:7422", ServerUrl("tls", "nats.example", 7422)),
        (
            "nats://alice:s3cret@nats.example:4333",
            ServerUrl("nats", "nats.example", 4333, "alice", "s3cret"),
        ),
        (
            "nats://al%20ice:p%40ss%3Aw%2Frd%25@nats.example",
            ServerUrl("nats", "nats.example", 4222, "al ice", "p@ss:w/rd%"),
        ),
        ("nats://alice:@nats.example", ServerUrl("nats", "nats.example", 4222, "alice", "")),
        ("nats://T0KEN-abc@nats.example", ServerUrl("nats", "nats.example", 4222, "T0KEN-abc")),
        ("tls://T0KEN@nats.example:4443", ServerUrl("tls", "nats.example", 4443, "T0KEN")),
        ("nats://[::1]:4333", ServerUrl("nats", "::1", 4333)),
        ("nats://u:p@[fe80::1]", ServerUrl("nats", "fe80::1", 4222, "u", "p")),
    ],
)
def test_server_urls_are_parsed(url: str, expected: ServerUrl) -> None:
    assert ServerUrl.parse(url) == expected


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://alice:s3cret@nats.example:4333", "nats://nats.example:4333"),
        ("tls://T0KEN@nats.example", "tls://nats.example:4222"),
        ("nats.example", "nats://nats.example:4222"),
        ("nats://[::1]:4333", "nats://[::1]:4333"),
    ],
)
def test_a_server_url_is_shown_without_credentials(url: str, shown: str) -> None:
    assert str(ServerUrl.parse(url)) == shown


@pytest.mark.parametrize(
    ("url", "reason", "named"),
    [
        ("http://alice:s3cret@nats.example:8080", "scheme", "nats.example:8080"),
        ("https://nats.example", "scheme", "https://nats.example"),
        ("nats://alice:s3cret@:4222", "no host", ":4222"),
        ("nats://alice:s3cret@", "no host", "nats://"),
        ("nats://alice:s3cret@nats.example:4222/jetstream", "path", "nats.example:4222/jetstream"),
        ("nats://alice:s3cret@nats.example?x=1", "query", "nats.example?x=1"),
        ("nats://alice:s3cret@nats.example:port", "Port", "nats.example:port"),
        ("nats://alice:s3cret@nats.example:99999", "range", "nats.example:99999"),
        ("nats://alice:s3@cret@nats.example/x", "path", "nats.example/x"),
        ("nats://alice:s3cret@[::1", "IPv6", "[::1"),
        # urlsplit's own complaint quotes the whole netloc: the password must not come along.
        ("nats://alice:s3cret\uff03@nats.example:4222", "NFKC", "nats.example:4222"),
    ],
)
def test_a_bad_server_url_is_refused_naming_it_but_not_its_password(
    url: str, reason: str, named: str
) -> None:
    with pytest.raises(BusError) as raised:
        ServerUrl.parse(url)
    message = str(raised.value)
    assert reason in message
    assert named in message
    assert "s3cret" not in message
    assert "cret" not in message
    # Nor in a traceback: the error does not chain urlsplit's.
    assert raised.value.__cause__ is None
    assert raised.value.__suppress_context__ or raised.value.__context__ is None


def test_another_cluster_server_keeps_the_scheme_and_credentials() -> None:
    base = ServerUrl.parse("tls://alice:s3cret@nats-0.example:4222")
    assert base.with_address("10.0.0.2:6222") == ServerUrl(
        "tls", "10.0.0.2", 6222, "alice", "s3cret"
    )
    assert base.with_address("[fd00::2]:4222") == ServerUrl(
        "tls", "fd00::2", 4222, "alice", "s3cret"
    )
    token = ServerUrl.parse("nats://T0KEN@nats-0.example")
    assert token.with_address("nats-1.example:4222") == ServerUrl(
        "nats", "nats-1.example", 4222, "T0KEN"
    )
    assert str(token.with_address("nats-1.example:4222")) == "nats://nats-1.example:4222"
