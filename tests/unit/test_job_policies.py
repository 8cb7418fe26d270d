"""The pod failure policy and the success policy (upstream's pod_failure_policy_test.go and
success_policy_test.go cases)."""

from __future__ import annotations

from typing import Any

import pytest

from reconcilers.controllers.job.indexed import Intervals
from reconcilers.controllers.job.pod_failure_policy import match_pod_failure_policy
from reconcilers.controllers.job.success_policy import match_success_policy


def failed_pod(*exits: tuple[str, int], init: tuple[str, int] | None = None, **conds: str) -> Any:
    def terminated(name: str, code: int) -> Any:
        return {"name": name, "state": {"terminated": {"exitCode": code}}}

    status: dict[str, Any] = {
        "phase": "Failed",
        "containerStatuses": [terminated(n, c) for n, c in exits],
        "conditions": [{"type": t, "status": s} for t, s in conds.items()],
    }
    if init is not None:
        status["initContainerStatuses"] = [terminated(*init)]
    return {"metadata": {"namespace": "ns", "name": "p"}, "status": status}


def rule(action: str, operator: str = "In", values: tuple[int, ...] = (), **extra: Any) -> Any:
    body: dict[str, Any] = {"action": action}
    if values:
        body["onExitCodes"] = {"operator": operator, "values": list(values), **extra}
    return body


def test_a_fail_job_rule_on_an_exit_code_gives_upstreams_message() -> None:
    policy = {"rules": [rule("Ignore", values=(1,)), rule("FailJob", values=(5, 42))]}
    message, counts, action = match_pod_failure_policy(policy, failed_pod(("main", 42)))
    assert message == (
        "Container main for pod ns/p failed with exit code 42 matching FailJob rule at index 1"
    )
    assert (counts, action) == (True, "FailJob")


@pytest.mark.parametrize(
    ("policy_rule", "pod", "expected"),
    [
        (rule("Ignore", values=(1,)), failed_pod(("c", 1)), (None, False, "Ignore")),
        (rule("Count", values=(1,)), failed_pod(("c", 1)), (None, True, "Count")),
        (rule("FailIndex", values=(1,)), failed_pod(("c", 1)), (None, True, "FailIndex")),
        # NotIn: any other non-zero code matches; exit code 0 never does.
        (rule("Ignore", "NotIn", (1,)), failed_pod(("c", 2)), (None, False, "Ignore")),
        (rule("Ignore", "NotIn", (1,)), failed_pod(("c", 1), ("d", 0)), (None, True, None)),
        # containerName narrows the rule.
        (rule("Ignore", values=(3,), containerName="d"), failed_pod(("c", 3)), (None, True, None)),
        (
            rule("Ignore", values=(3,), containerName="d"),
            failed_pod(("c", 3), ("d", 3)),
            (None, False, "Ignore"),
        ),
        # Init containers count after regular ones.
        (rule("Count", values=(7,)), failed_pod(("c", 0), init=("i", 7)), (None, True, "Count")),
        (
            {
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },
            failed_pod(("c", 137), DisruptionTarget="True"),
            (None, False, "Ignore"),
        ),
        (
            {
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },
            failed_pod(("c", 137), DisruptionTarget="False"),
            (None, True, None),
        ),
    ],
)
def test_the_first_matching_rule_decides(
    policy_rule: Any, pod: Any, expected: tuple[str | None, bool, str | None]
) -> None:
    assert match_pod_failure_policy({"rules": [policy_rule]}, pod) == expected


def test_a_fail_job_rule_on_a_pod_condition() -> None:
    policy = {
        "rules": [
            {"action": "FailJob", "onPodConditions": [{"type": "ConfigIssue", "status": "True"}]}
        ]
    }
    message, _, action = match_pod_failure_policy(policy, failed_pod(("c", 1), ConfigIssue="True"))
    assert message == "Pod ns/p has condition ConfigIssue matching FailJob rule at index 0"
    assert action == "FailJob"


def test_no_policy_counts_every_failure() -> None:
    assert match_pod_failure_policy(None, failed_pod(("c", 1))) == (None, True, None)


@pytest.mark.parametrize(
    ("rules", "succeeded", "met"),
    [
        ([{"succeededIndexes": "0-2"}], "0,1", None),
        ([{"succeededIndexes": "0-2"}], "0-3", "Matched rules at index 0"),
        ([{"succeededCount": 2}], "1,5", "Matched rules at index 0"),
        ([{"succeededCount": 3}], "1,5", None),
        ([{"succeededIndexes": "0-4", "succeededCount": 2}], "3,8", None),
        ([{"succeededIndexes": "0-4", "succeededCount": 2}], "1,3,8", "Matched rules at index 0"),
        ([{"succeededIndexes": "20-30"}, {"succeededCount": 1}], "2", "Matched rules at index 1"),
        ([{"succeededIndexes": "x"}], "0-9", None),  # nothing parseable: skipped
    ],
)
def test_success_policy_rules(rules: list[Any], succeeded: str, met: str | None) -> None:
    found = match_success_policy({"rules": rules}, 10, Intervals.parse(succeeded, 10))
    assert found == met


def test_no_success_policy_or_no_success_matches_nothing() -> None:
    assert match_success_policy(None, 5, Intervals.parse("0-4", 5)) is None
    assert match_success_policy({"rules": [{"succeededCount": 0}]}, 5, Intervals()) is None
