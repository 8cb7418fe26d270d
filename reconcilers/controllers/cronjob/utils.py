"""What upstream's ``utils.go`` holds beside the schedule arithmetic: the Job made for a start
time, ``status.active`` as a list of references, the order history limits delete in, and the
time formats the API and the events use."""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import Final

from kubus.kube import ApiResource
from reconcilers.controllers.cronjob.schedule import UnknownTimeZoneError, load_location
from reconcilers.kinds import Object, clone
from reconcilers.refmanager import controller_ref

__all__ = [
    "SCHEDULED_TIMESTAMP",
    "active_jobs",
    "earliest_time",
    "finished_condition",
    "format_schedule",
    "format_time",
    "in_active",
    "job_from_template",
    "job_name",
    "job_ref",
    "oldest_first",
    "parse_time",
    "remove_active",
    "rfc1123z",
    "rfc3339",
    "succeeded",
]

SCHEDULED_TIMESTAMP: Final = "batch.kubernetes.io/cronjob-scheduled-timestamp"


def parse_time(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def format_time(when: datetime.datetime) -> str:
    """A ``metav1.Time`` on the wire: RFC 3339 in UTC, whole seconds."""
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339(when: datetime.datetime) -> str:
    """Go's ``time.RFC3339`` in the time's own zone (``Z`` for UTC)."""
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    offset = when.utcoffset() or datetime.timedelta()
    if not offset:
        return text + "Z"
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"{text}{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def rfc1123z(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")


def finished_condition(job: Object) -> str | None:
    """``Complete`` or ``Failed`` when that condition is True (upstream's FinishedCondition)."""
    for condition in (job.get("status") or {}).get("conditions") or ():
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return str(condition["type"])
    return None


def succeeded(job: Object) -> bool:
    return any(
        c.get("type") == "Complete" and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or ()
    )


def oldest_first(jobs: Iterable[Object]) -> list[Object]:
    """By ``status.startTime``, unstarted last, ties by name (upstream's byJobStartTime)."""

    def key(job: Object) -> tuple[bool, datetime.datetime, str]:
        started = parse_time((job.get("status") or {}).get("startTime"))
        floor = datetime.datetime.min.replace(tzinfo=datetime.UTC)
        return started is None, started or floor, job["metadata"]["name"]

    return sorted(jobs, key=key)


def job_name(cronjob: Object, scheduled: datetime.datetime) -> str:
    minutes = int((scheduled - datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)).total_seconds())
    return f"{cronjob['metadata']['name']}-{minutes // 60}"


def format_schedule(cronjob: Object) -> tuple[str, bool]:
    """The schedule the parser reads (``TZ=<timeZone>`` prepended) and whether it names a zone
    itself (not officially supported: a warning event)."""
    spec = cronjob.get("spec") or {}
    schedule = str(spec.get("schedule", ""))
    if "TZ" in schedule:
        return schedule, True
    zone = spec.get("timeZone")
    if zone is not None:
        try:
            load_location(zone)
        except UnknownTimeZoneError:
            return schedule, False
        return f"TZ={zone} {schedule}", False
    return schedule, False


def job_from_template(cronjob: Object, api: ApiResource, scheduled: datetime.datetime) -> Object:
    """The Job for one start time: the template's labels, annotations and spec, the scheduled
    time as an annotation (in ``timeZone``, UTC without one), a controller ownerReference."""
    spec = cronjob.get("spec") or {}
    template = spec.get("jobTemplate") or {}
    template_meta = template.get("metadata") or {}
    zone = load_location(spec.get("timeZone") or "")
    annotations = dict(template_meta.get("annotations") or {})
    annotations[SCHEDULED_TIMESTAMP] = rfc3339(scheduled.astimezone(zone))
    metadata: Object = {"name": job_name(cronjob, scheduled), "annotations": annotations}
    labels = template_meta.get("labels")
    if labels:
        metadata["labels"] = dict(labels)
    metadata["ownerReferences"] = [controller_ref(cronjob, api)]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": clone(template.get("spec") or {}),
    }


def job_ref(job: Object) -> Object:
    """The ObjectReference ``status.active`` holds (client-go's GetReference)."""
    meta = job["metadata"]
    return {
        "kind": "Job",
        "namespace": meta.get("namespace"),
        "name": meta["name"],
        "uid": meta["uid"],
        "apiVersion": "batch/v1",
        "resourceVersion": meta.get("resourceVersion", ""),
    }


def active_jobs(cronjob: Object) -> list[Object]:
    active: list[Object] = cronjob["status"].get("active") or []
    return active


def in_active(cronjob: Object, uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in active_jobs(cronjob))


def remove_active(cronjob: Object, uid: str) -> None:
    cronjob["status"]["active"] = [ref for ref in active_jobs(cronjob) if ref.get("uid") != uid]


def earliest_time(cronjob: Object) -> datetime.datetime:
    """Where the search for missed start times begins: the last one, else the creation."""
    status = cronjob.get("status") or {}
    when = parse_time(status.get("lastScheduleTime")) or parse_time(
        cronjob["metadata"].get("creationTimestamp")
    )
    return when or datetime.datetime.fromtimestamp(0, datetime.UTC)
