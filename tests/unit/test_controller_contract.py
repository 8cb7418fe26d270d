"""The public controller API: what a controller is written against, and what it declares."""

from __future__ import annotations

import reconcilers
from reconcilers.rbac import rules_for
from reconcilers.registry import IMPLEMENTED

PUBLIC = {
    "EVERY_RESOURCE",
    "Context",
    "Controller",
    "ControllerBase",
    "EventRecorder",
    "Expectations",
    "Flag",
    "InvalidSelectorError",
    "ObjectCache",
    "Permission",
    "Request",
    "Result",
    "RetryPolicy",
    "Scope",
    "Selector",
    "TerminalError",
    "controller_of",
}


def test_the_package_exports_the_controller_api_and_nothing_else() -> None:
    assert set(reconcilers.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(reconcilers, name) is not None, name


def test_every_builtin_controller_declares_what_it_writes_and_its_gates() -> None:
    for name, controller in IMPLEMENTED.items():
        assert controller.name == name
        assert controller.permissions, f"{name} declares no apiserver verbs"
        assert controller.primary in controller.reads, name
        for gate, default in controller.feature_gates.items():
            assert isinstance(gate, str) and isinstance(default, bool)


def test_rbac_rules_merge_the_verbs_of_every_controller_per_resource() -> None:
    rules = rules_for(IMPLEMENTED.values())
    by_resource = {(r["apiGroups"][0], r["resources"][0]): r["verbs"] for r in rules}
    # list: the persistentvolume binder's live look for the pods a delayed claim waits on;
    # get and update: the StatefulSet controller's identity and storage fixes of its pods
    assert by_resource[("", "pods")] == ["create", "delete", "get", "list", "patch", "update"]
    assert by_resource[("", "events")] == ["create", "patch"]
    assert by_resource[("apps", "replicasets")] == ["create", "delete", "get", "patch", "update"]
    assert by_resource[("apps", "deployments/status")] == ["update"]
    # Only the token controller writes Secrets, and it reads their data live (the bus has
    # their metadata only).
    assert by_resource[("", "secrets")] == ["delete", "get", "update"]
    # The garbage collector and the namespace controller act on every resource, as kcm's
    # (their live checks list); nothing watches the apiserver: the watcher does.
    assert by_resource[("*", "*")] == ["delete", "deletecollection", "get", "list", "patch"]
    assert not [rule for rule in rules if "watch" in rule["verbs"]]
