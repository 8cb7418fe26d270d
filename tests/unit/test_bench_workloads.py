"""`kubus bench --workload`: the flag and the shape flags of each workload, the manifests the
harness writes for Jobs and StatefulSets, and how it tells that they have converged."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from bench.compare.cli import contenders_of, shape_of
from bench.compare.contenders import (
    KCM,
    KCM_CONTROLLERS,
    KUBUS_CONTROLLERS,
    Contender,
    Limits,
    contender_named,
)
from bench.compare.driver import PhaseRun
from bench.compare.harness import Settings, phase_record, run_all
from bench.compare.jobs import JobView, job_manifest, jobs_not_complete
from bench.compare.measure import Usage
from bench.compare.report import Reports, described, markdown
from bench.compare.statefulsets import (
    RevisionView,
    StatefulSetView,
    revision_latencies,
    statefulset_manifest,
    statefulsets_not_converged,
)
from bench.compare.workload import IMAGE_NEW, IMAGE_OLD, LABEL, Shape, Workload
from kubus.cli import build_parser, main

SHAPE = Shape.spread(2)


def parsed(*flags: str) -> Any:
    return build_parser().parse_args(["bench", *flags])


def test_the_default_workload_is_todays_deployments_with_the_ceiling() -> None:
    args = parsed()
    assert args.workload == "deployments"
    assert shape_of(args) == (20, 5)
    assert contenders_of(args) == [
        "kube-controller-manager",
        "kubus-1",
        "kubus-2",
        "kubus-4",
        "ceiling",
    ]
    workload = Workload(*shape_of(args))
    assert workload.phases == ("create", "update", "delete")
    assert workload.names(SHAPE)[0] == ("bench-spread-000", "web-00000")
    assert workload.settings() == {"workload": "deployments", "deployments": 20, "replicas": 5}
    assert shape_of(parsed("--deployments=7", "--replicas=3")) == (7, 3)


def test_jobs_default_to_100_by_10_and_run_no_update_and_no_ceiling() -> None:
    args = parsed("--workload=jobs")
    assert shape_of(args) == (100, 10)
    assert "ceiling" not in contenders_of(args)
    assert shape_of(parsed("--workload=jobs", "--jobs=3", "--completions=2")) == (3, 2)
    workload = Workload(3, 2, "jobs")
    assert workload.phases == ("create", "delete")
    assert workload.pods == 6 and workload.describe() == "3 Jobs x 2 completions"
    assert workload.settings() == {"workload": "jobs", "jobs": 3, "completions": 2}
    assert [name for _ns, name in workload.names(SHAPE)] == ["job-00000", "job-00001", "job-00002"]


def test_statefulsets_default_to_20_by_5() -> None:
    args = parsed("--workload=statefulsets")
    assert shape_of(args) == (20, 5)
    assert "ceiling" not in contenders_of(args)
    assert shape_of(parsed("--workload=statefulsets", "--statefulsets=2", "--replicas=4")) == (
        2,
        4,
    )
    workload = Workload(2, 4, "statefulsets")
    assert workload.phases == ("create", "update", "delete")
    assert workload.describe() == "2 StatefulSets x 4 replicas"


def test_each_side_runs_the_same_controller_for_each_workload() -> None:
    assert KCM_CONTROLLERS == {
        "deployments": "deployment,replicaset",
        "jobs": "job-controller",
        "statefulsets": "statefulset-controller",
    }
    assert KUBUS_CONTROLLERS == {
        "deployments": "deployment,replicaset",
        "jobs": "job",
        "statefulsets": "statefulset",
    }


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (
            ["--workload=cronjobs"],
            "argument --workload: unknown workload 'cronjobs': the workloads are deployments, "
            "jobs and statefulsets",
        ),
        (
            ["--workload=jobs", "--replicas=3"],
            "argument --replicas: not a flag of --workload jobs (its N and R are --jobs and "
            "--completions)",
        ),
        (
            ["--jobs=3"],
            "argument --jobs: not a flag of --workload deployments (its N and R are "
            "--deployments and --replicas)",
        ),
        (
            ["--workload=statefulsets", "--deployments=3"],
            "argument --deployments: not a flag of --workload statefulsets",
        ),
        (
            ["--workload=statefulsets", "--completions=3"],
            "argument --completions: not a flag of --workload statefulsets",
        ),
        (
            ["--workload=jobs", "--contenders=kubus-1,ceiling"],
            "argument --contenders: the ceiling runs --workload deployments only, not jobs",
        ),
        (["--workload=jobs", "--completions=0"], "argument --completions: must be at least 1"),
        (["--workload=jobs", "--jobs=x"], "argument --jobs: expected a whole number, got 'x'"),
    ],
)
def test_a_bad_workload_flag_is_one_line_and_exit_2_before_anything_runs(
    flags: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        main(["bench", *flags, f"--out={out}"])
    assert exit_.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"kubus bench: error: {says}"), lines
    assert not out.exists()


def test_a_job_runs_all_its_completions_at_once_and_never_restarts() -> None:
    manifest = job_manifest("job-00001", SHAPE, 10, IMAGE_OLD)
    assert manifest["kind"] == "Job" and manifest["apiVersion"] == "batch/v1"
    spec = manifest["spec"]
    assert (spec["completions"], spec["parallelism"]) == (10, 10)
    assert "selector" not in spec  # the controller-made one
    template = spec["template"]
    assert template["metadata"]["labels"][LABEL] == "spread"
    assert template["spec"]["restartPolicy"] == "Never"
    # No command: kwok's kubus-job-pod-succeeded stage runs such a pod to Succeeded.
    (container,) = template["spec"]["containers"]
    assert container["image"] == IMAGE_OLD and "command" not in container


def job(name: str, succeeded: int, *, complete: bool) -> JobView:
    conditions = [{"type": "Complete", "status": "True"}] if complete else []
    raw = {
        "metadata": {"name": name, "namespace": "ns"},
        "status": {"succeeded": succeeded, "active": 0, "conditions": conditions},
    }
    return msgspec.convert(raw, JobView)


def test_a_job_is_done_once_complete_with_every_completion_succeeded() -> None:
    expected = {("ns", "a"), ("ns", "b"), ("ns", "c")}
    jobs = [job("a", 2, complete=True), job("b", 2, complete=False), job("d", 2, complete=True)]
    assert jobs_not_complete(jobs, expected, completions=2) == [
        "job ns/b: succeeded 2 of 2, active 0, failed 0, not Complete",
        "job ns/c: missing",
    ]
    assert jobs_not_complete([job("a", 1, complete=True)], {("ns", "a")}, completions=2) == [
        "job ns/a: succeeded 1 of 2, active 0, failed 0"
    ]
    assert jobs_not_complete([job("a", 2, complete=True)], {("ns", "a")}, completions=2) == []


def test_a_statefulset_keeps_the_default_policies_and_names_its_service() -> None:
    manifest = statefulset_manifest("sts-00000", SHAPE, 5, IMAGE_OLD)
    spec = manifest["spec"]
    assert manifest["kind"] == "StatefulSet" and spec["replicas"] == 5
    assert spec["serviceName"] == "sts-00000"
    assert "podManagementPolicy" not in spec and "updateStrategy" not in spec
    assert spec["selector"]["matchLabels"] == {"app": "sts-00000"}
    assert spec["template"]["metadata"]["labels"] == {"app": "sts-00000", LABEL: "spread"}


def statefulset(image: str, **status: Any) -> StatefulSetView:
    raw = {
        "metadata": {"name": "s", "namespace": "ns", "generation": 2},
        "spec": {"template": {"spec": {"containers": [{"image": image}]}}},
        "status": {
            "observedGeneration": 2,
            "replicas": 3,
            "readyReplicas": 3,
            "updatedReplicas": 3,
            "currentRevision": "s-1",
            "updateRevision": "s-1",
        }
        | status,
    }
    return msgspec.convert(raw, StatefulSetView)


@pytest.mark.parametrize(
    ("found", "done"),
    [
        (statefulset(IMAGE_NEW), True),
        (statefulset(IMAGE_OLD), False),
        (statefulset(IMAGE_NEW, observedGeneration=1), False),
        (statefulset(IMAGE_NEW, readyReplicas=2), False),
        (statefulset(IMAGE_NEW, updatedReplicas=2), False),
        (statefulset(IMAGE_NEW, currentRevision="s-0"), False),
        (statefulset(IMAGE_NEW, currentRevision="", updateRevision=""), False),
    ],
)
def test_a_statefulset_is_rolled_out_once_every_replica_is_updated_and_ready(
    found: StatefulSetView, done: bool
) -> None:
    stuck = statefulsets_not_converged([found], {("ns", "s")}, replicas=3, image=IMAGE_NEW)
    assert (stuck == []) is done, stuck


def test_the_rollout_latency_is_to_the_newest_revision() -> None:
    def revision(number: int, at: str) -> RevisionView:
        raw = {
            "metadata": {
                "creationTimestamp": at,
                "ownerReferences": [{"uid": "u", "controller": True}],
            },
            "revision": number,
        }
        return msgspec.convert(raw, RevisionView)

    patched = {"u": 1_800_000_000.4}  # 2027-01-15T08:00:00Z
    revisions = [revision(1, "2027-01-15T07:59:00Z"), revision(2, "2027-01-15T08:00:02Z")]
    assert revision_latencies(patched, revisions) == [2.0]


def test_the_report_names_the_workload_and_a_deployment_run_reads_as_before() -> None:
    assert described({"deployments": 20, "replicas": 5}) == "20 Deployments x 5 replicas"
    assert (
        described({"workload": "jobs", "jobs": 100, "completions": 10})
        == "100 Jobs x 10 completions"
    )
    results: dict[str, Any] = {
        "settings": {"workload": "statefulsets", "statefulsets": 2, "replicas": 2, "pods": 4}
        | {"spread_namespaces": 2, "kube_api_qps": 20.0, "kube_api_burst": 30},
        "machine": "test",
        "command": "kubus bench --workload statefulsets",
        "contenders": [],
        "scale_up": None,
        "goals": [],
    }
    text = markdown(results)
    assert text.startswith(
        "# kubus vs kube-controller-manager: 2 StatefulSets x 2 replicas (4 pods)\n"
    )


def test_a_jobs_run_without_an_update_phase_is_ok_reported_and_judged(tmp_path: Path) -> None:
    workload = Workload(3, 2, "jobs")
    run = Settings(
        workload=workload,
        spread_namespaces=2,
        limits=Limits(20.0, 30),
        deadline=600.0,
        contenders=(contender_named(KCM), contender_named("kubus-2")),
        log_dir=tmp_path / "logs",
    )

    def fill(
        contender: Contender,
        settings: Settings,
        record: dict[str, Any],
        _progress: Callable[[str], None],
    ) -> None:
        names = [KCM, "kcm-garbagecollector"] if not contender.is_kubus else ["reconciler-0"]
        record["processes"] = names
        for key in ("phases", "phases_one_namespace"):
            for phase in settings.workload.phases:
                record[key][phase] = phase_record(
                    contender,
                    run=PhaseRun(ok=True, seconds=4.0, timestamp_latencies=[0.0, 1.0]),
                    usage={name: Usage(cpu_seconds=1.0, peak_rss_mb=80.0) for name in names},
                    infra_usage={
                        "kube-apiserver": Usage(cpu_seconds=2.0, peak_rss_mb=300.0),
                        "nats-server": Usage(cpu_seconds=0.5, peak_rss_mb=20.0),
                    },
                    workload=settings.workload,
                    before=None,
                    after=None,
                    lag_max=0.0,
                )

    out = tmp_path / "out"
    header = {
        "benchmark": "kubus bench",
        "command": "kubus bench --workload jobs",
        "machine": "test",
        "started_at": "2026-12-04T00:00:00+00:00",
        "settings": {**workload.settings(), "pods": workload.pods, "spread_namespaces": 2}
        | {"kube_api_qps": 20.0, "kube_api_burst": 30, "deadline_seconds": 600.0},
    }
    reports = Reports(out, header, [c.name for c in run.contenders])
    records = run_all(run, lambda _line: None, reports.write, run_contender=fill)
    assert [r["ok"] for r in records] == [True, True]
    assert set(records[1]["phases"]) == {"create", "delete"}
    assert records[1]["phases"]["create"]["seconds_vs_kcm"] == 1.0
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["workload"] == "jobs"
    assert any(note.startswith("Workload jobs:") for note in results["notes"])
    text = (out / "results.md").read_text()
    assert text.startswith("# kubus vs kube-controller-manager: 3 Jobs x 2 completions (6 pods)")
    assert "| kubus-2 | create | 4.0 |" in text and "| kubus-2 | update |" not in text
    statuses = {goal["goal"]: goal["status"] for goal in results["goals"]}
    assert statuses["kubus-2 time to convergence <= kcm's (spread, create+update+delete)"] == (
        "met"
    )
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
