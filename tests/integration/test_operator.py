"""An operator written with reconcilers.operator, installed from a distribution of its own, run
on a pool of two reconcilers beside kubus's garbage collector.

tests/data/operator_package holds it: a Greeting is written into ``copies`` ConfigMaps it
owns, its status carries ``copies``, ``observedGeneration`` and a ``Ready`` condition, and its
finalizer's cleanup leaves a farewell ConfigMap before the Greeting goes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.support.crds import create_established_crd, delete_crd
from tests.support.jaeger import ReconcileTrace, find_reconcile
from tests.support.services import kubus_pool
from tests.support.wait import wait_for

DATA = Path(__file__).resolve().parents[1] / "data" / "operator_package"
GROUP, VERSION, PLURAL = "operators.kubus.test", "v1", "greetings"
FINALIZER = "operators.kubus.test/farewell"
SPEC_SCHEMA = "/spec/versions/0/schema/openAPIV3Schema/properties/spec"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The operator's distribution, pip-installed into a directory of its own."""
    work = tmp_path_factory.mktemp("operator")
    shutil.copytree(DATA, work / "src")
    target = work / "site-packages"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"),
            *("--target", str(target), str(work / "src")),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return target


def with_operator(installed: Path, env: dict[str, str]) -> dict[str, str]:
    path = [str(installed), *filter(None, [env.get("PYTHONPATH")])]
    return {**env, "PYTHONPATH": os.pathsep.join(path)}


def generated_crd(installed: Path) -> dict[str, Any]:
    """The Greeting CRD as `kubus crd generate` writes it from the installed package's types."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubus.cli",
            "crd",
            "generate",
            "-o",
            "json",
            "kubus_test_greeting:Greeting",
        ],
        env=with_operator(installed, dict(os.environ)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    crd: dict[str, Any] = json.loads(result.stdout)
    return crd


@pytest.fixture
def greeting_crd(installed: Path, kube: Any) -> Iterator[str]:
    """The CRD as `kubus crd generate` writes it from the installed package's types."""
    name = create_established_crd(kube, generated_crd(installed))
    yield name
    release_greetings(kube)
    delete_crd(kube, name)


def release_greetings(kube: Any) -> None:
    """Take the operator's finalizer off Greetings a failed test left, so the CRD can go."""
    custom = client.CustomObjectsApi(kube)
    for item in custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]:
        meta = item["metadata"]
        if meta.get("finalizers"):
            custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                meta["namespace"],
                PLURAL,
                meta["name"],
                {"metadata": {"finalizers": None}},
            )


def reconcile_trace(stack_env: dict[str, str], namespace: str, copies: int) -> Any:
    """A reconcile of the Greeting that wrote its copies, or None while Jaeger has none."""

    def wrote_copies(found: ReconcileTrace) -> bool:
        tags = found.tags
        return (
            tags.get("k8s.object.key") == f"{namespace}/hello"
            and tags.get("greeting.copies") == copies
            and any(c["operationName"].startswith("PATCH ") for c in found.children)
        )

    return find_reconcile(stack_env, "greeting-operator", wrote_copies)


@pytest.mark.usefixtures("greeting_crd")
def test_the_operator_reconciles_updates_and_cleans_up_its_greetings(
    installed: Path,
    kube: Any,
    namespace: str,
    stack_env: dict[str, str],
    tmp_path: Path,
) -> None:
    core, custom = client.CoreV1Api(kube), client.CustomObjectsApi(kube)
    env = with_operator(installed, stack_env)
    controllers = "--controllers=greeting-operator,garbagecollector"
    with kubus_pool(env, tmp_path, reconcilers=2, extra=[controllers]) as pool:
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "Greeting",
                "metadata": {"name": "hello"},
                "spec": {"message": "hi", "copies": 2},
            },
        )

        def greeting() -> dict[str, Any]:
            got: dict[str, Any] = custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, "hello"
            )
            return got

        def copies() -> dict[str, str]:
            found = core.list_namespaced_config_map(namespace).items
            return {
                cm.metadata.name: (cm.data or {}).get("message", "")
                for cm in found
                if cm.metadata.name.startswith("hello-") and cm.metadata.owner_references
            }

        def ready(generation: int) -> bool:
            status = greeting().get("status") or {}
            conditions = {c["type"]: c for c in status.get("conditions", [])}
            return (
                status.get("observedGeneration") == generation
                and conditions.get("Ready", {}).get("status") == "True"
            )

        wait_for(lambda: ready(1), timeout=60, what="the Greeting Ready at generation 1")

        def written_events() -> list[str]:
            return [
                event.message
                for event in core.list_namespaced_event(namespace).items
                if event.reason == "Written" and event.involved_object.kind == "Greeting"
            ]

        assert wait_for(written_events, timeout=30, what="the operator's Written event") == [
            "2 copies"
        ]
        assert copies() == {"hello-0": "hi", "hello-1": "hi"}
        created = greeting()
        assert created["metadata"]["finalizers"] == [FINALIZER]
        assert created["status"]["copies"] == 2
        owner = core.read_namespaced_config_map("hello-0", namespace).metadata.owner_references[0]
        assert (owner.kind, owner.name, owner.uid, owner.controller) == (
            "Greeting",
            "hello",
            created["metadata"]["uid"],
            True,
        )
        # Written under the operator's field manager (server-side apply).
        managers = core.read_namespaced_config_map("hello-0", namespace).metadata.managed_fields
        assert "greeting-operator" in {entry.manager for entry in managers}

        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "hello", {"spec": {"message": "hey", "copies": 1}}
        )
        wait_for(lambda: ready(2), timeout=60, what="the Greeting Ready at generation 2")
        wait_for(
            lambda: copies() == {"hello-0": "hey"},
            timeout=60,
            what="one copy left, with the new message",
        )

        found = wait_for(
            lambda: reconcile_trace(stack_env, namespace, copies=2),
            timeout=60,
            what="a greeting-operator reconcile trace in Jaeger",
        )
        assert found.service(found.parent) == "kubus-watcher"
        assert found.parent["operationName"].startswith("publish ")
        assert found.tags["greeting.copies"] == 2
        assert "copies_written" in found.events
        assert any(c["operationName"].startswith("PATCH ") for c in found.children)

        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "hello")

        def gone() -> bool:
            try:
                greeting()
            except ApiException as error:
                if error.status == 404:
                    return True
                raise
            return False

        wait_for(gone, timeout=60, what="the Greeting gone once its finalizer ran")
        farewell = core.read_namespaced_config_map("hello-farewell", namespace)
        assert farewell.data == {"said": "hey"}
        wait_for(
            lambda: copies() == {},
            timeout=60,
            what="its ConfigMaps collected by kubus's garbage collector",
        )
        logs = [process.log.read_text() for process in pool.reconcilers]
    assert not any("Traceback" in log for log in logs)


def test_the_operator_installs_its_crd_at_start_and_upgrades_an_older_one(
    installed: Path, kube: Any, stack_env: dict[str, str], tmp_path: Path
) -> None:
    extensions = client.ApiextensionsV1Api(kube)
    name = f"{PLURAL}.{GROUP}"
    env = with_operator(installed, stack_env)

    def schema() -> dict[str, Any]:
        crd = extensions.read_custom_resource_definition(name)
        spec: dict[str, Any] = crd.spec.versions[0].schema.open_apiv3_schema.properties["spec"]
        return spec

    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    try:
        with kubus_pool(env, tmp_path / "first", extra=["--controllers=greeting-operator"]):
            crd = extensions.read_custom_resource_definition(name)
            assert {c.type: c.status for c in crd.status.conditions}["Established"] == "True"
            assert "greeting-operator" in {entry.manager for entry in crd.metadata.managed_fields}
            assert set(schema().properties) == {"message", "copies"}
        # An older release's schema, without `copies`: the next start brings it back.
        extensions.patch_custom_resource_definition(
            name,
            [
                {
                    "op": "remove",
                    "path": f"{SPEC_SCHEMA}/properties/copies",
                }
            ],
        )
        assert set(schema().properties) == {"message"}
        with kubus_pool(env, tmp_path / "second", extra=["--controllers=greeting-operator"]):
            assert set(schema().properties) == {"message", "copies"}
    finally:
        release_greetings(kube)
        delete_crd(kube, name)


def test_an_object_that_does_not_match_the_types_is_an_event_and_the_others_go_on(
    installed: Path, kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    """An older CRD that let ``copies`` be any string: such a Greeting is reported on itself,
    never crashing the operator, which goes on with the good ones."""
    core, custom = client.CoreV1Api(kube), client.CustomObjectsApi(kube)
    env = with_operator(installed, stack_env)
    crd = generated_crd(installed)
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"]["copies"] = {"x-kubernetes-int-or-string": True}
    name = create_established_crd(kube, crd)
    try:
        for greeting, copies in (("bad", "many"), ("good", 1)):
            custom.create_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "Greeting",
                    "metadata": {"name": greeting},
                    "spec": {"message": "hi", "copies": copies},
                },
            )
        # The operator does not install its CRD here: the old one stays, as a user who
        # upgrades the operator before the CRD would have it.
        with kubus_pool(
            {**env, "KUBUS_TEST_GREETING_NO_INSTALL": "1"},
            tmp_path,
            extra=["--controllers=greeting-operator"],
        ) as pool:

            def invalid_events() -> list[str]:
                return [
                    event.message
                    for event in core.list_namespaced_event(namespace).items
                    if event.reason == "InvalidObject" and event.involved_object.name == "bad"
                ]

            (message,) = wait_for(invalid_events, timeout=60, what="an InvalidObject event")
            assert message == (
                f"Greeting {namespace}/bad: Expected `int`, got `str` - at `$.spec.copies`"
            )

            def good_copy() -> bool:
                names = [
                    cm.metadata.name for cm in core.list_namespaced_config_map(namespace).items
                ]
                return "good-0" in names

            wait_for(good_copy, timeout=60, what="the good Greeting's copy")
            # Deleted while the operator runs, so the good one's finalizer is taken off.
            for greeting in ("bad", "good"):
                custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, greeting)

            def greetings() -> list[str]:
                found = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
                return [item["metadata"]["name"] for item in found["items"]]

            wait_for(lambda: not greetings(), timeout=60, what="both Greetings gone")
            log = pool.reconcilers[0].log.read_text()
        assert f"Greeting {namespace}/bad: Expected `int`, got `str` - at `$.spec.copies`" in log
        assert "Traceback" not in log
    finally:
        release_greetings(kube)
        delete_crd(kube, name)
