"""Logs as kube-controller-manager's: klog text or JSON lines, ``-v`` levels, and the fields of
the reconcile and of the current span on every line written during one."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from kubus.logs import log_context, setup_logging


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    """What the process would write to stderr; the logging set-up is put back afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    own = {
        name: logging.getLogger(name).level for name in ("kubus", "bus", "watcher", "reconcilers")
    }
    stream = io.StringIO()
    yield stream
    for handler in list(root.handlers):
        if handler not in saved[0]:
            root.removeHandler(handler)
    root.setLevel(saved[1])
    for name, level in own.items():
        logging.getLogger(name).setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_time_level_logger_message_and_fields(output: io.StringIO) -> None:
    setup_logging("json", 0, stream=output)
    before = time.time()
    logging.getLogger("reconcilers.manager").info(
        "synced %s", "shop/web", extra={"replicas": 3, "pod": "web-1"}
    )
    logging.getLogger("bus.connect").warning("NATS: %s", "gone")
    info, warning = lines(output)
    assert before <= info["ts"] <= time.time()
    assert isinstance(info["ts"], float)
    assert info["level"] == "info"
    assert info["logger"] == "reconcilers.manager"
    assert info["msg"] == "synced shop/web"
    assert info["v"] == 0
    assert info["caller"].startswith("test_logs.py:")
    assert (info["replicas"], info["pod"]) == (3, "web-1")
    assert (warning["level"], warning["msg"]) == ("warning", "NATS: gone")
    assert "v" not in warning  # as component-base: only info lines have a V level


def test_an_exception_stays_on_its_json_line(output: io.StringIO) -> None:
    setup_logging("json", 0, stream=output)
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        logging.getLogger("kubus.x").exception("sync failed")
    [line] = lines(output)  # one line: the traceback's newlines are escaped
    assert line["level"] == "error"
    assert line["err"] == "boom\nsecond line"
    assert "Traceback" in line["stacktrace"]
    assert "RuntimeError" in line["stacktrace"]


def test_text_is_klogs_header_then_the_message_and_fields(output: io.StringIO) -> None:
    setup_logging("text", 0, stream=output)
    with log_context(controller="deployment-controller", key="shop/web"):
        logging.getLogger("reconcilers.manager").warning("sync failed: %s", "409", extra={"n": 2})
    [line] = output.getvalue().splitlines()
    assert re.fullmatch(
        r"W\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ test_logs\.py:\d+\] sync failed: 409 "
        r'logger="reconcilers\.manager" n=2 controller="deployment-controller" key="shop/web"',
        line,
    ), line


@pytest.mark.parametrize(
    ("verbosity", "own_debug", "library_debug"),
    [(0, False, False), (3, False, False), (4, True, False), (5, True, False), (6, True, True)],
)
def test_v_levels(
    output: io.StringIO, verbosity: int, own_debug: bool, library_debug: bool
) -> None:
    setup_logging("json", verbosity, stream=output)
    logging.getLogger("kubus.service").info("always")
    logging.getLogger("reconcilers.workqueue").debug("own debug")
    logging.getLogger("aiohttp.client").debug("library debug")
    logging.getLogger("aiohttp.client").info("library info")
    shown = [line["msg"] for line in lines(output)]
    expected = ["always"] + ["own debug"] * own_debug + ["library debug"] * library_debug
    assert shown == [*expected, "library info"]
    debug = [line for line in lines(output) if line["msg"] == "own debug"]
    assert all(line["level"] == "debug" and line["v"] == 4 for line in debug)


def test_a_line_inside_a_span_in_a_log_context_carries_the_span_and_the_fields(
    output: io.StringIO,
) -> None:
    setup_logging("json", 0, stream=output)
    tracer = TracerProvider().get_tracer("test")  # the OTel SDK, no exporter needed
    log = logging.getLogger("reconcilers.manager")
    with log_context(controller="replicaset-controller", key="shop/web-5d8f"):
        with tracer.start_as_current_span("reconcile replicaset-controller") as span:
            log.info("inside the span")
            ids = span.get_span_context()
        log.info("after the span")
    log.info("after the reconcile")
    inside, after_span, after_reconcile = lines(output)
    assert inside["trace_id"] == format(ids.trace_id, "032x")
    assert inside["span_id"] == format(ids.span_id, "016x")
    assert re.fullmatch(r"[0-9a-f]{32}", inside["trace_id"])  # as Jaeger shows trace ids
    assert re.fullmatch(r"[0-9a-f]{16}", inside["span_id"])
    assert (inside["controller"], inside["key"]) == ("replicaset-controller", "shop/web-5d8f")
    assert after_span["key"] == "shop/web-5d8f" and "trace_id" not in after_span
    assert not {"controller", "key", "trace_id", "span_id"} & set(after_reconcile)


def test_log_contexts_nest_and_extra_wins(output: io.StringIO) -> None:
    setup_logging("json", 0, stream=output)
    log = logging.getLogger("kubus.x")
    with log_context(controller="a", key="k1"), log_context(key="k2", attempt=2):
        log.info("nested")
        log.info("explicit", extra={"key": "given"})
    nested, explicit = lines(output)
    assert (nested["controller"], nested["key"], nested["attempt"]) == ("a", "k2", 2)
    assert explicit["key"] == "given"


def test_concurrent_reconciles_keep_their_own_fields(output: io.StringIO) -> None:
    setup_logging("json", 0, stream=output)
    log = logging.getLogger("reconcilers.manager")

    async def reconcile(key: str, gate: asyncio.Event, other: asyncio.Event) -> None:
        with log_context(controller="deployment-controller", key=key):
            gate.set()
            await other.wait()  # both are inside their contexts at once
            log.info("done %s", key)

    async def main() -> None:
        first, second = asyncio.Event(), asyncio.Event()
        async with asyncio.TaskGroup() as group:
            group.create_task(reconcile("ns/a", first, second))
            group.create_task(reconcile("ns/b", second, first))

    asyncio.run(main())
    assert sorted((line["msg"], line["key"]) for line in lines(output)) == [
        ("done ns/a", "ns/a"),
        ("done ns/b", "ns/b"),
    ]


def test_setting_up_again_replaces_the_handler(output: io.StringIO) -> None:
    setup_logging("text", 0, stream=io.StringIO())
    setup_logging("json", 0, stream=output)
    logging.getLogger("kubus.x").info("once")
    assert [line["msg"] for line in lines(output)] == ["once"]
    with pytest.raises(ValueError, match="text, json"):
        setup_logging("xml", 0, stream=output)
