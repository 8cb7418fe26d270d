"""A DaemonSet's status (upstream's updateDaemonSetStatus and storeDaemonSetStatus).

Per node that should run the pod: ``desiredNumberScheduled``; of those with a daemon pod,
``currentNumberScheduled``, and, judged on the node's oldest pod, ``numberReady``,
``numberAvailable`` (ready for ``minReadySeconds``) and ``updatedNumberScheduled`` (of the
current revision). A pod on a node that should not run one is ``numberMisscheduled``;
``numberUnavailable`` is desired minus available. ``observedGeneration`` is raised only by a
sync that acted (expectations satisfied).
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final

from reconcilers.controllers.daemonset.update import is_pod_updated, template_generation
from reconcilers.controllers.podutil import is_available, is_pod_ready, parse_time
from reconcilers.kinds import Object

__all__ = ["COUNTS", "calculate_status", "oldest_first", "status_unchanged"]

COUNTS: Final = (
    "desiredNumberScheduled",
    "currentNumberScheduled",
    "numberMisscheduled",
    "numberReady",
    "updatedNumberScheduled",
    "numberAvailable",
    "numberUnavailable",
)


def _compare(a: Object, b: Object) -> int:
    """podByCreationTimestampAndPhase: scheduled first, then older first, then by name."""
    bound_a = bool((a.get("spec") or {}).get("nodeName"))
    bound_b = bool((b.get("spec") or {}).get("nodeName"))
    if bound_a != bound_b:
        return -1 if bound_a else 1
    created_a = parse_time(a["metadata"].get("creationTimestamp"))
    created_b = parse_time(b["metadata"].get("creationTimestamp"))
    if created_a == created_b:
        name_a, name_b = a["metadata"].get("name", ""), b["metadata"].get("name", "")
        return -1 if name_a < name_b else (1 if name_a > name_b else 0)
    if created_a is None or created_b is None:  # Go's zero time is before any other
        return -1 if created_a is None else 1
    return -1 if created_a < created_b else 1


def oldest_first(pods: Iterable[Object]) -> list[Object]:
    return sorted(pods, key=functools.cmp_to_key(_compare))


def calculate_status(
    ds: Object,
    nodes: Iterable[Object],
    node_to_pods: Mapping[str, Sequence[Object]],
    *,
    hash_: str,
    now: datetime.datetime,
    should_run: Callable[[Object], bool],
) -> dict[str, int]:
    """The seven counts of the status, for the nodes there are now."""
    min_ready = int((ds.get("spec") or {}).get("minReadySeconds") or 0)
    generation = template_generation(ds)
    counts = dict.fromkeys(COUNTS, 0)
    for node in nodes:
        pods = node_to_pods.get(node["metadata"]["name"]) or []
        if not should_run(node):
            if pods:
                counts["numberMisscheduled"] += 1
            continue
        counts["desiredNumberScheduled"] += 1
        if not pods:
            continue
        counts["currentNumberScheduled"] += 1
        pod = oldest_first(pods)[0]
        if is_pod_ready(pod):
            counts["numberReady"] += 1
            if is_available(pod, min_ready, now):
                counts["numberAvailable"] += 1
        if is_pod_updated(pod, hash_, generation):
            counts["updatedNumberScheduled"] += 1
    counts["numberUnavailable"] = counts["desiredNumberScheduled"] - counts["numberAvailable"]
    return counts


def status_unchanged(ds: Object, counts: Mapping[str, int]) -> bool:
    """Nothing to write: the counts as stored, and the generation observed already."""
    status = ds.get("status") or {}
    observed = int(status.get("observedGeneration") or 0)
    generation = int((ds.get("metadata") or {}).get("generation") or 0)
    return (
        all(int(status.get(name) or 0) == value for name, value in counts.items())
        and observed >= generation
    )
