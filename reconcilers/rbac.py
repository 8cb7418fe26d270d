"""The RBAC rules a set of controllers needs, from what each declares it writes.

Reads come from the bus, not the apiserver: a reconciler needs ``get`` only where a controller
re-reads an object live (an owner before adoption), and the verbs of its writes. The rules are
merged per API group and resource, so the generated ClusterRole is the least the enabled
controllers need.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from reconcilers.controller import Controller

__all__ = ["rules_for"]


def rules_for(controllers: Iterable[type[Controller]]) -> list[dict[str, Any]]:
    """ClusterRole rules, one per (group, resource), verbs sorted, in a stable order."""
    verbs: dict[tuple[str, str], set[str]] = defaultdict(set)
    for controller in controllers:
        for permission in controller.permissions:
            verbs[(permission.group, permission.resource)].update(permission.verbs)
    return [
        {"apiGroups": [group], "resources": [resource], "verbs": sorted(verbs[(group, resource)])}
        for group, resource in sorted(verbs)
    ]
