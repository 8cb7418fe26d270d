"""The Job controller's metrics, under upstream's names (pkg/controller/job/metrics)."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter

__all__ = [
    "JOBS_FINISHED",
    "JOB_PODS_FINISHED",
    "POD_FAILURES_HANDLED_BY_FAILURE_POLICY",
    "STALE_SYNC_SKIPS",
]

JOBS_FINISHED: Final = Counter(
    "job_controller_jobs_finished_total",
    "The number of finished jobs",
    ["completion_mode", "result", "reason"],
)
JOB_PODS_FINISHED: Final = Counter(
    "job_controller_job_pods_finished_total",
    "The number of finished Pods that are fully tracked",
    ["completion_mode", "result"],
)
POD_FAILURES_HANDLED_BY_FAILURE_POLICY: Final = Counter(
    "job_controller_pod_failures_handled_by_failure_policy_total",
    "The number of failed Pods handled by failure policy with respect to the failure policy "
    "action applied based on the matched rule",
    ["action"],
)
STALE_SYNC_SKIPS: Final = Counter(
    "job_controller_stale_sync_skips_total",
    "Total number of Job syncs skipped due to a stale watch cache.",
    ["group", "resource"],
)
