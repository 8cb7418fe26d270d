"""Reading traces back from the stack's Jaeger: a reconcile span, what it continues, what it did."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ReconcileTrace:
    """One reconcile span of a trace, its parent (the span it continues) and its children."""

    trace: dict[str, Any]
    span: dict[str, Any]
    parent: dict[str, Any]
    children: list[dict[str, Any]]

    @property
    def tags(self) -> dict[str, Any]:
        return tags_of(self.span)

    @property
    def events(self) -> list[str]:
        """The names of the span's events (Jaeger's logs), in order."""
        return [
            field["value"]
            for log in self.span["logs"]
            for field in log["fields"]
            if field["key"] == "event"
        ]

    def service(self, span: Mapping[str, Any]) -> str:
        """The service that recorded ``span`` (kubus-watcher, kubus-reconciler, apiserver)."""
        name: str = self.trace["processes"][span["processID"]]["serviceName"]
        return name

    def writes(self) -> list[dict[str, Any]]:
        """The children that are apiserver writes (the client's POST, PUT, PATCH, DELETE)."""
        return [
            c
            for c in self.children
            if c["operationName"].startswith(("POST ", "PUT ", "PATCH ", "DELETE "))
        ]


def tags_of(span: Mapping[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span["tags"]}


def find_reconcile(
    stack_env: Mapping[str, str],
    controller: str,
    accept: Callable[[ReconcileTrace], bool],
) -> ReconcileTrace | None:
    """The first ``reconcile <controller>`` span of the last hour, with its parent in the same
    trace, that ``accept`` takes; None while Jaeger has none (or does not answer)."""
    operation = urllib.parse.quote(f"reconcile {controller}")
    url = (
        f"{stack_env['JAEGER_QUERY_URL']}/api/traces?service=kubus-reconciler"
        f"&operation={operation}&limit=200&lookback=1h"
    )
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            traces = json.load(response)["data"]
    except OSError:
        return None
    for trace in traces:
        spans = {s["spanID"]: s for s in trace["spans"]}
        for span in spans.values():
            if span["operationName"] != f"reconcile {controller}":
                continue
            parents = [r["spanID"] for r in span["references"] if r["refType"] == "CHILD_OF"]
            if not parents or parents[0] not in spans:
                continue
            children = [
                s
                for s in spans.values()
                if any(
                    r["refType"] == "CHILD_OF" and r["spanID"] == span["spanID"]
                    for r in s["references"]
                )
            ]
            found = ReconcileTrace(trace, span, spans[parents[0]], children)
            if accept(found):
                return found
    return None
