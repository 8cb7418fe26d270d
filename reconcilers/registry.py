"""The controllers kubus knows, by kube-controller-manager's names, and ``--controllers``.

``--controllers`` reads as kube-controller-manager's: ``*`` enables every controller that is
on by default, ``name`` enables one, ``-name`` disables one; canonical names and the legacy
aliases are both accepted. A name kube-controller-manager does not know is an error, and so is
one kubus has not implemented yet (rather than silently running without it).
"""

from __future__ import annotations

from typing import Final

from reconcilers.controller import Controller
from reconcilers.controllers.deployment import DeploymentController
from reconcilers.controllers.replicaset import ReplicaSetController

__all__ = ["IMPLEMENTED", "KNOWN", "ControllerSelectionError", "select_controllers"]

# kube-controller-manager's controllers: canonical name -> legacy aliases.
KNOWN: Final[dict[str, tuple[str, ...]]] = {
    "attachdetach-controller": ("attachdetach",),
    "bootstrap-signer-controller": ("bootstrapsigner",),
    "certificatesigningrequest-approving-controller": ("csrapproving",),
    "certificatesigningrequest-cleaner-controller": ("csrcleaner",),
    "certificatesigningrequest-signing-controller": ("csrsigning",),
    "clusterrole-aggregation-controller": ("clusterrole-aggregation",),
    "cronjob-controller": ("cronjob",),
    "daemonset-controller": ("daemonset",),
    "deployment-controller": ("deployment",),
    "disruption-controller": ("disruption",),
    "endpoints-controller": ("endpoint",),
    "endpointslice-controller": ("endpointslice",),
    "endpointslice-mirroring-controller": ("endpointslicemirroring",),
    "ephemeral-volume-controller": ("ephemeral-volume",),
    "garbage-collector-controller": ("garbagecollector",),
    "horizontal-pod-autoscaler-controller": ("horizontalpodautoscaling",),
    "job-controller": ("job",),
    "namespace-controller": ("namespace",),
    "node-ipam-controller": ("nodeipam",),
    "node-lifecycle-controller": ("nodelifecycle",),
    "persistentvolume-binder-controller": ("persistentvolume-binder",),
    "persistentvolume-expander-controller": ("persistentvolume-expander",),
    "persistentvolumeclaim-protection-controller": ("pvc-protection",),
    "persistentvolume-protection-controller": ("pv-protection",),
    "pod-garbage-collector-controller": ("podgc",),
    "replicaset-controller": ("replicaset",),
    "replicationcontroller-controller": ("replicationcontroller",),
    "resourcequota-controller": ("resourcequota",),
    "root-ca-certificate-publisher-controller": ("root-ca-cert-publisher",),
    "service-lb-controller": ("service",),
    "serviceaccount-controller": ("serviceaccount",),
    "serviceaccount-token-controller": ("serviceaccount-token",),
    "statefulset-controller": ("statefulset",),
    "token-cleaner-controller": ("tokencleaner",),
    "ttl-after-finished-controller": ("ttl-after-finished",),
    "ttl-controller": ("ttl",),
}
DISABLED_BY_DEFAULT: Final = frozenset({"bootstrap-signer-controller", "token-cleaner-controller"})

IMPLEMENTED: Final[dict[str, type[Controller]]] = {
    DeploymentController.name: DeploymentController,
    ReplicaSetController.name: ReplicaSetController,
}

_CANONICAL: Final = {alias: name for name, aliases in KNOWN.items() for alias in (name, *aliases)}


class ControllerSelectionError(ValueError):
    pass


def select_controllers(items: list[str]) -> tuple[type[Controller], ...]:
    enabled: dict[str, bool] = {}
    star = False
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        if item == "*":
            star = True
            continue
        disable = item.startswith("-")
        name = _CANONICAL.get(item.lstrip("-"))
        if name is None:
            raise ControllerSelectionError(
                f"--controllers: {item.lstrip('-')!r} is not in the list of known controllers"
            )
        if not disable and name not in IMPLEMENTED:
            raise ControllerSelectionError(
                f"--controllers: {name} is not implemented by kubus yet (implemented: "
                f"{', '.join(sorted(IMPLEMENTED))})"
            )
        enabled[name] = not disable
    chosen = [
        name for name in IMPLEMENTED if enabled.get(name, star and name not in DISABLED_BY_DEFAULT)
    ]
    if not chosen:
        raise ControllerSelectionError("--controllers selects no controller kubus implements")
    return tuple(IMPLEMENTED[name] for name in chosen)
