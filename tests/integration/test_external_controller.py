"""Controllers of another distribution, installed for real, chosen with ``--controllers``.

tests/data/external_controllers holds two distributions: one with two good controllers (one on
by default), one whose five ``kubus.controllers`` entry points are each bad in another way. The
test installs both with pip into a temporary directory and runs processes with PYTHONPATH on it,
as a user who pip-installs a plugin would (pip fetches setuptools to build them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from reconcilers.registry import select_controllers
from tests.support.services import kubus_pool
from tests.support.wait import wait_for

DATA = Path(__file__).resolve().parents[1] / "data" / "external_controllers"
BROKEN = "kubus_test_broken_controllers"
WHERE = "(distribution kubus-test-broken-controllers 0.2.0)"
PROBLEMS = [
    f"kubus.controllers entry point 'missing-module-controller' = '{BROKEN}.nowhere:Controller' "
    f"{WHERE} cannot be loaded: ModuleNotFoundError: No module named '{BROKEN}.nowhere'",
    f"kubus.controllers entry point 'raising-controller' = '{BROKEN}.raising:Controller' "
    f"{WHERE} cannot be loaded: RuntimeError: the plugin's configuration is missing see its "
    "README",
    f"kubus.controllers entry point 'not-a-class-controller' = '{BROKEN}:helper' {WHERE} "
    "is a function, not a controller class",
    f"kubus.controllers entry point 'half-controller' = '{BROKEN}:HalfController' {WHERE} "
    f"{BROKEN}.HalfController is not a controller class: has no aliases, has no primary, "
    "has no reads, has no concurrency_flag, has no default_concurrency, has no scope, "
    "has no permissions, has no retry, has no feature_gates, has no flags, "
    "has no enabled_by_default, has no method requests_for, has no method reconcile, "
    "has no method forget, "
    "its constructor does not take one argument (the Context)",
    f"kubus.controllers entry point 'deployment' = '{BROKEN}:HalfController' {WHERE} "
    "takes the name of kube-controller-manager's deployment-controller",
]


@pytest.fixture(scope="module")
def plugins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with both distributions installed as pip installs a plugin (its build
    backend, setuptools, comes from the package index as for any sdist)."""
    work = tmp_path_factory.mktemp("plugins")
    sources = work / "src"
    shutil.copytree(DATA, sources)  # the build writes into its source tree
    target = work / "site-packages"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"),
            *("--target", str(target)),
            *(str(sources / "good"), str(sources / "broken")),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return target


def with_plugins(plugins: Path, env: Mapping[str, str] = os.environ) -> dict[str, str]:
    path = [str(plugins), *filter(None, [env.get("PYTHONPATH")])]
    return {**env, "PYTHONPATH": os.pathsep.join(path)}


def python(plugins: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        env=with_plugins(plugins),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def kubus(plugins: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubus.cli", *argv],
        env=with_plugins(plugins),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


SELECT = """
import json, sys
from reconcilers.registry import available, select_controllers
def names(items):
    return [controller.name for controller in select_controllers(items)]
print(json.dumps({
    "star": names(["*"]),
    "by-alias": names(["configmap-stamp"]),
    "star-and-stamp": names(["*", "configmap-stamp-controller", "-configmap-count-controller"]),
    "deployment": names(["deployment"]),
    "problems": list(available().problems),
}))
"""


def test_installed_controllers_are_chosen_by_name_and_alias_and_bad_ones_are_one_line(
    plugins: Path,
) -> None:
    result = python(plugins, SELECT)
    assert result.returncode == 0, result.stderr
    chosen: dict[str, Any] = json.loads(result.stdout)
    # The built-ins on by default, as this process (without the plugins) selects them: the
    # built-in set itself is test_reconciler_cli's to check.
    builtins = sorted(controller.name for controller in select_controllers(["*"]))
    assert "deployment-controller" in builtins
    # '*' turns on what is on by default: the built-ins and the one that says so.
    assert chosen["star"] == [*builtins, "configmap-count-controller"]
    assert chosen["by-alias"] == ["configmap-stamp-controller"]
    assert chosen["star-and-stamp"] == [*builtins, "configmap-stamp-controller"]
    # The entry point that takes kcm's alias 'deployment' does not take the built-in's place.
    assert chosen["deployment"] == ["deployment-controller"]
    assert sorted(chosen["problems"]) == sorted(PROBLEMS)
    # Each selection logs each problem as one line, and nothing else goes to stderr.
    assert sorted(result.stderr.splitlines()) == sorted(PROBLEMS * 4), result.stderr


@pytest.mark.parametrize(
    ("controllers", "message"),
    [
        ("raising-controller", PROBLEMS[1]),
        ("*,half-controller", PROBLEMS[3]),
        (
            "configmap-stamp-contoller",
            '"configmap-stamp-contoller" is not in the list of known controllers',
        ),
    ],
)
def test_kubus_reconciler_names_the_bad_entry_point_in_one_line(
    plugins: Path, controllers: str, message: str
) -> None:
    result = kubus(plugins, "reconciler", f"--controllers={controllers}")
    assert result.returncode == 1
    assert result.stderr == f"kubus reconciler: error: --controllers: {message}\n"


@pytest.mark.integration
def test_an_installed_controller_runs_beside_the_builtins_on_the_dev_stack(
    plugins: Path, kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    core, apps = client.CoreV1Api(kube), client.AppsV1Api(kube)
    env = with_plugins(plugins, stack_env)
    with kubus_pool(env, tmp_path, extra=["--controllers=configmap-stamp,replicaset"]) as pool:
        core.create_namespaced_config_map(
            namespace,
            {"metadata": {"name": "asks", "labels": {"kubus.test/stamp": "yes"}}},
        )
        apps.create_namespaced_replica_set(
            namespace,
            {
                "metadata": {"name": "web"},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "c", "image": "registry.example/c:1"}]},
                    },
                },
            },
        )

        def stamped() -> str | None:
            annotations = core.read_namespaced_config_map("asks", namespace).metadata.annotations
            return (annotations or {}).get("kubus.test/stamped-by")

        assert (
            wait_for(stamped, timeout=60, what="the ConfigMap stamped")
            == "configmap-stamp-controller"
        )
        wait_for(
            lambda: apps.read_namespaced_replica_set("web", namespace).status.replicas == 2,
            timeout=60,
            what="the built-in replicaset-controller's 2 replicas",
        )
        log = pool.reconcilers[0].log.read_text()
    for line in PROBLEMS:
        assert line in log
    assert "Traceback" not in log
