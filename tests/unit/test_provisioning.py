"""Provisioning waits out a JetStream that cannot answer yet, and then says what it gave up on.

A new three-server cluster answered the watcher's first stream create after more than one
request timeout (CI, under load); the watcher must not die of that.
"""

from __future__ import annotations

import asyncio

import pytest
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import NotFoundError, ServiceUnavailableError

from bus.errors import BusError
from bus.streams import provisioning


def test_an_attempt_that_times_out_is_tried_again_until_it_answers() -> None:
    refusals = [NatsTimeoutError(), ServiceUnavailableError(code=503, description="no leader")]
    attempts = 0

    async def attempt() -> str:
        nonlocal attempts
        attempts += 1
        if refusals:
            raise refusals.pop(0)
        return "created"

    assert asyncio.run(provisioning("provision stream KUBUS_OBJECTS", attempt)) == "created"
    assert attempts == 3


def test_one_that_never_answers_ends_in_one_line_naming_what_was_asked() -> None:
    async def attempt() -> None:
        raise NatsTimeoutError()

    with pytest.raises(BusError) as raised:
        asyncio.run(provisioning("provision bucket kubus-pool-leases", attempt, within=1.0))
    message = str(raised.value)
    assert message.startswith("NATS did not provision bucket kubus-pool-leases within 1s: ")
    assert "\n" not in message


def test_other_errors_are_not_retried() -> None:
    attempts = 0

    async def attempt() -> None:
        nonlocal attempts
        attempts += 1
        raise NotFoundError(code=404, description="stream not found")

    with pytest.raises(NotFoundError):
        asyncio.run(provisioning("provision stream KUBUS_OBJECTS", attempt))
    assert attempts == 1
