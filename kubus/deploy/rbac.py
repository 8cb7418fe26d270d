"""Least-privilege RBAC for the watcher and a reconciler pool, generated, never hand-written.

The reconciler's ClusterRole is the union of what its enabled controllers declare they write
(``Controller.permissions``, merged by ``reconcilers.rbac.rules_for``); it reads from the bus,
so it gets no list or watch beyond what a controller's live checks declare. The watcher only
lists and watches: everything, as its default ``--resources all`` does. One ServiceAccount,
ClusterRole and ClusterRoleBinding per component.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import yaml

from reconcilers.controller import Controller
from reconcilers.rbac import rules_for

__all__ = ["WATCHER_RULES", "manifests", "render"]

WATCHER_RULES: Final = ({"apiGroups": ["*"], "resources": ["*"], "verbs": ["list", "watch"]},)


def _labels(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "kubus", "app.kubernetes.io/component": component}


def _component(name: str, namespace: str, rules: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    labels = _labels(name.removeprefix("kubus-"))
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name, "labels": labels},
            "rules": list(rules),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": labels},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    ]


def manifests(
    controllers: Iterable[type[Controller]], *, namespace: str, pool: str = "default"
) -> list[dict[str, Any]]:
    """The watcher's objects, then the pool's (``kubus-reconciler-<pool>``)."""
    return [
        *_component("kubus-watcher", namespace, WATCHER_RULES),
        *_component(f"kubus-reconciler-{pool}", namespace, rules_for(controllers)),
    ]


def render(objects: Iterable[dict[str, Any]], *, header: str) -> str:
    """Multi-document YAML, stable (the checked-in copy is compared to it byte for byte)."""
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    documents = [yaml.safe_dump(obj, sort_keys=False, default_flow_style=False) for obj in objects]
    return comment + "---\n" + "---\n".join(documents)
