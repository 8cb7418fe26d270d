"""The ReplicationController controller, as kube-controller-manager's
``replicationcontroller-controller`` (upstream's ``replication`` package).

Upstream runs its ReplicaSet controller on ReplicationControllers converted to ReplicaSets;
this is the ReplicaSet controller with the kind's differences as class attributes: the
selector is a map of labels (equality only, the apiserver defaults it to the template's
labels), the status has no ``terminatingReplicas``, the events come from
``replication-controller``. Everything else (adoption and release, slow-start creation, the
deletion order, expectations, the ``ReplicaFailure`` condition) is the same code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from bus.subjects import ResourceType
from reconcilers.controller import Permission
from reconcilers.controllers.replicaset import ReplicaSetController
from reconcilers.kinds import EVENTS, PODS, REPLICATIONCONTROLLERS, Object

__all__ = ["ReplicationControllerController"]


class ReplicationControllerController(ReplicaSetController):
    name: ClassVar[str] = "replicationcontroller-controller"
    aliases: ClassVar[tuple[str, ...]] = ("replicationcontroller",)
    primary: ClassVar[ResourceType] = REPLICATIONCONTROLLERS
    reads: ClassVar[tuple[ResourceType, ...]] = (REPLICATIONCONTROLLERS, PODS)
    concurrency_flag: ClassVar[str] = "concurrent-rc-syncs"
    default_concurrency: ClassVar[int] = 5
    permissions: ClassVar[tuple[Permission, ...]] = (
        Permission.on(PODS, "create", "delete", "patch"),
        Permission.on(REPLICATIONCONTROLLERS, "get"),
        Permission.on(REPLICATIONCONTROLLERS, "get", "update", subresource="status"),
        Permission.on(EVENTS, "create", "patch"),
    )
    feature_gates: ClassVar[Mapping[str, bool]] = {}
    kind: ClassVar[str] = "ReplicationController"
    component: ClassVar[str] = "replication-controller"
    reports_terminating: ClassVar[bool] = False

    @staticmethod
    def selector_of(owner: Object) -> Mapping[str, Any] | None:
        """A map of labels as the label selector it means (None: no selector, an error)."""
        labels = owner.get("spec", {}).get("selector")
        return None if labels is None else {"matchLabels": labels}
