"""The object stream's header block, as NATS reads it."""

from __future__ import annotations

import pytest

from bus.envelope import EventType, header_block


def test_a_tombstone_block_has_every_header_and_ends_with_a_blank_line() -> None:
    block = header_block(
        EventType.DELETED, "42", "u-1", 7, ttl="86400", extra={"traceparent": "00-ab-cd-01"}
    )
    assert block == (
        b"NATS/1.0\r\nKubus-Event: DELETED\r\nKubus-Resource-Version: 42\r\n"
        b"Kubus-Uid: u-1\r\nNats-Msg-Id: u-1:42:DELETED\r\n"
        b"Nats-Expected-Last-Subject-Sequence: 7\r\nNats-TTL: 86400\r\n"
        b"traceparent: 00-ab-cd-01\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("resource_version", "uid", "extra"),
    [
        ("5\r\nNats-Msg-Id: forged", "uid", None),
        ("5", "uid\nX: y", None),
        ("5", "uid", {"traceparent": "00\r\nX: y"}),
    ],
)
def test_line_breaks_cannot_inject_headers(
    resource_version: str, uid: str, extra: dict[str, str] | None
) -> None:
    with pytest.raises(ValueError, match="line break"):
        header_block(EventType.ADDED, resource_version, uid, 0, extra=extra)
