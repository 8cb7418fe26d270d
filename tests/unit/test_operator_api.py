"""The operator API's own logic: which requests a change makes, what a reconcile's return
means, conditions set as apimachinery sets them, and operators that cannot be made."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from reconcilers.controller import Request, Result
from reconcilers.external import problem_of
from reconcilers.kinds import CONFIGMAPS, PODS, SECRETS
from reconcilers.operator import Condition, OperatorContext, Watch, operator, set_condition
from reconcilers.operator.controller import _result
from tests.support.typed_resources import MySQLCluster

MYSQL = MySQLCluster.primary_resource()


async def nothing(_cluster: MySQLCluster, _ctx: OperatorContext[MySQLCluster]) -> None:
    return None


def secret_users(secret: dict[str, Any]) -> list[tuple[str | None, str]]:
    cluster = (secret["metadata"].get("labels") or {}).get("mysql")
    return [(secret["metadata"]["namespace"], cluster)] if cluster else []


MySQLOperator = operator(
    MySQLCluster,
    nothing,
    name="mysql-operator",
    owns=(PODS, CONFIGMAPS),
    watches=(Watch(SECRETS, secret_users),),
    finalizer="database.example.com/cleanup",
)


def obj(name: str, *, owner: tuple[str, str, str] | None = None, **labels: str) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": "shop", "labels": labels}
    if owner is not None:
        api_version, kind, owner_name = owner
        metadata["ownerReferences"] = [
            {
                "apiVersion": api_version,
                "kind": kind,
                "name": owner_name,
                "uid": "u",
                "controller": True,
            }
        ]
    return {"metadata": metadata}


def requests(
    resource: Any, new: dict[str, Any] | None, old: dict[str, Any] | None = None
) -> list[Request]:
    return list(MySQLOperator.requests_for(None, resource, new, old))  # type: ignore[arg-type]


def test_the_operator_is_a_controller_class_of_the_runtime() -> None:
    assert problem_of(MySQLOperator) is None
    assert MySQLOperator.name == "mysql-operator"
    assert MySQLOperator.primary == MYSQL
    assert MySQLOperator.reads == (MYSQL, PODS, CONFIGMAPS, SECRETS)
    assert MySQLOperator.concurrency_flag == "concurrent-mysql-operator-syncs"
    rules = {(p.group, p.resource): p.verbs for p in MySQLOperator.permissions}
    assert rules[("database.example.com", "mysqlclusters/status")] == ("patch", "update")
    assert "create" in rules[("", "pods")] and "delete" in rules[("", "pods")]
    assert rules[("", "secrets")] == ("get", "list", "watch")


def test_a_change_of_the_primary_names_it_and_an_owned_object_names_its_owner() -> None:
    assert requests(MYSQL, obj("db")) == [Request("shop", "db")]
    assert requests(MYSQL, None, obj("db")) == [Request("shop", "db")]  # deleted
    pod = obj("db-0", owner=("database.example.com/v1", "MySQLCluster", "db"))
    assert requests(PODS, pod) == [Request("shop", "db")]
    # Owned by something else (a ReplicaSet), or by no controller: not this operator's.
    assert requests(PODS, obj("web-1", owner=("apps/v1", "ReplicaSet", "web"))) == []
    assert requests(PODS, obj("loose")) == []
    # Adopted from one cluster by another: both are told.
    moved = obj("db-0", owner=("database.example.com/v1", "MySQLCluster", "other"))
    assert requests(PODS, moved, pod) == [Request("shop", "other"), Request("shop", "db")]


def test_a_watched_object_names_what_its_mapping_returns() -> None:
    assert requests(SECRETS, obj("root", mysql="db")) == [Request("shop", "db")]
    assert requests(SECRETS, obj("unrelated")) == []
    assert requests(SECRETS, None, obj("root", mysql="db")) == [Request("shop", "db")]


def test_a_reconcile_returns_none_seconds_or_a_result() -> None:
    assert _result(None) == Result()
    assert _result(30) == Result(requeue_after=30.0)
    assert _result(0.5) == Result(requeue_after=0.5)
    assert _result(Result(requeue_after=2)) == Result(requeue_after=2)
    with pytest.raises(TypeError, match="returns None, seconds or a Result, not str"):
        _result("later")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not bool"):
        _result(True)


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        ({"name": "MySQL"}, "operator MySQL: name 'MySQL' is not lowercase words joined by dashes"),
        (
            {"name": "mysql-operator", "cleanup": nothing},
            "operator mysql-operator: a cleanup needs a finalizer to run before the object goes",
        ),
        (
            {"name": "mysql-operator", "finalizer": "cleanup"},
            "operator mysql-operator: finalizer 'cleanup' is not domain-qualified",
        ),
        (
            {"name": "mysql-operator", "concurrency": 0},
            "operator mysql-operator: concurrency 0 is not at least 1",
        ),
    ],
)
def test_an_operator_that_cannot_run_is_refused_in_one_line(
    arguments: dict[str, Any], says: str
) -> None:
    with pytest.raises(ValueError) as refused:
        operator(MySQLCluster, nothing, **arguments)
    assert str(refused.value).startswith(says)


T0 = datetime.datetime(2026, 12, 3, 12, 0, tzinfo=datetime.UTC)
T1 = T0 + datetime.timedelta(minutes=5)


def test_a_condition_moves_its_transition_time_only_when_its_status_changes() -> None:
    conditions: list[Condition] = []
    assert set_condition(
        conditions, "Ready", "False", "PodsStarting", "0/3", observed_generation=1, now=T0
    )
    (ready,) = conditions
    assert (ready.status, ready.last_transition_time) == ("False", "2026-12-03T12:00:00Z")
    # Same status, new message and generation: updated, the transition time kept.
    assert set_condition(
        conditions, "Ready", "False", "PodsStarting", "2/3", observed_generation=2, now=T1
    )
    assert (ready.message, ready.observed_generation) == ("2/3", 2)
    assert ready.last_transition_time == "2026-12-03T12:00:00Z"
    # Nothing new: no change to write.
    assert not set_condition(
        conditions, "Ready", "False", "PodsStarting", "2/3", observed_generation=2, now=T1
    )
    assert set_condition(
        conditions, "Ready", "True", "PodsReady", "3/3", observed_generation=2, now=T1
    )
    assert (ready.status, ready.last_transition_time) == ("True", "2026-12-03T12:05:00Z")
    with pytest.raises(ValueError, match="reason 'pods ready' is not CamelCase"):
        set_condition(conditions, "Ready", "True", "pods ready")
