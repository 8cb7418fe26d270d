"""`kubus reconciler` reads flags as kube-controller-manager does."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from kubus.cli import build_parser
from reconcilers.cli import ReconcilerConfigError, _check_feature_gates, _merged
from reconcilers.controllers.cronjob import CronJobController
from reconcilers.controllers.daemonset import DaemonSetController
from reconcilers.controllers.deployment import DeploymentController
from reconcilers.controllers.disruption import DisruptionController
from reconcilers.controllers.garbagecollector import GarbageCollectorController
from reconcilers.controllers.job import JobController
from reconcilers.controllers.namespace import NamespaceController
from reconcilers.controllers.persistentvolume import PersistentVolumeBinderController
from reconcilers.controllers.podgc import PodGCController
from reconcilers.controllers.pvcprotection import PVCProtectionController
from reconcilers.controllers.pvprotection import PVProtectionController
from reconcilers.controllers.replicaset import ReplicaSetController
from reconcilers.controllers.replicationcontroller import ReplicationControllerController
from reconcilers.controllers.rootcacertpublisher import RootCACertPublisher
from reconcilers.controllers.serviceaccount.serviceaccounts import ServiceAccountsController
from reconcilers.controllers.serviceaccount.tokens import TokensController
from reconcilers.controllers.statefulset import StatefulSetController
from reconcilers.controllers.ttlafterfinished import TTLAfterFinishedController
from reconcilers.registry import ControllerSelectionError, select_controllers


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["reconciler", *argv])


def test_controllers_star_names_aliases_and_exclusions() -> None:
    on_by_default = {
        CronJobController,
        DaemonSetController,
        DeploymentController,
        DisruptionController,
        GarbageCollectorController,
        JobController,
        NamespaceController,
        PersistentVolumeBinderController,
        PodGCController,
        PVCProtectionController,
        PVProtectionController,
        ReplicaSetController,
        ReplicationControllerController,
        RootCACertPublisher,
        ServiceAccountsController,
        StatefulSetController,
        TokensController,
        TTLAfterFinishedController,
    }
    assert set(select_controllers(["*"])) == on_by_default
    assert set(select_controllers(["*", "-deployment", "-garbagecollector"])) == on_by_default - {
        DeploymentController,
        GarbageCollectorController,
    }
    assert select_controllers(["replicaset-controller"]) == (ReplicaSetController,)
    with pytest.raises(ControllerSelectionError, match='"deploymnt" is not in the list'):
        select_controllers(["deploymnt"])
    with pytest.raises(
        ControllerSelectionError, match="horizontal-pod-autoscaler-controller is not implemented"
    ):
        select_controllers(["*", "horizontalpodautoscaling"])
    with pytest.raises(ControllerSelectionError, match="selects no controller"):
        select_controllers(["-deployment", "-replicaset", "-garbagecollector"])


def test_config_file_values_and_flags_that_win(tmp_path: Path) -> None:
    config = tmp_path / "kubus.yaml"
    config.write_text(
        "concurrent-deployment-syncs: 9\nkube-api-qps: 50\ncontrollers: ['*', '-replicaset']\n"
    )
    values = _merged(parse(f"--config={config}", "--kube-api-qps=70"))
    assert values["concurrent_deployment_syncs"] == 9
    assert values["kube_api_qps"] == 70
    assert values["controllers"] == "*,-replicaset"


def test_an_unknown_config_key_names_the_file_and_the_key(tmp_path: Path) -> None:
    config = tmp_path / "kubus.yaml"
    config.write_text("concurent-deployment-syncs: 9\n")
    with pytest.raises(
        ReconcilerConfigError,
        match=r"kubus.yaml: unknown setting "
        r"'concurent-deployment-syncs'",
    ):
        _merged(parse(f"--config={config}"))


@pytest.mark.parametrize(
    ("gates", "message"),
    [
        ("NoSuchGate=true", "unrecognized feature gate: NoSuchGate"),
        ("DeploymentReplicaSetTerminatingReplicas=yes", "is not KEY=true|false"),
    ],
)
def test_bad_feature_gates(gates: str, message: str) -> None:
    with pytest.raises(ReconcilerConfigError, match=message):
        _check_feature_gates(gates)
    _check_feature_gates("DeploymentReplicaSetTerminatingReplicas=false")
