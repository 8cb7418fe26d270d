"""Session fixtures: one real dev stack for the whole test run.

Which stack, in this order:
- ``KUBUS_TEST_ENV_FILE=DIR/env``: an already running stack (``kubus dev up --detach``), or any
  cluster + NATS + Jaeger described by such a file;
- a Docker engine that answers: the testcontainers stack (k3s, NATS, Jaeger);
- otherwise the local stack of ``kubus dev up``, started by the same code.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubus.devstack import Binaries, DevStack, StackConfig, default_cache_dir
from kubus.devstack.containers import ContainerStack, docker_available
from kubus.devstack.state import read_env_file
from tests.support.system import create_namespace, system_pool, wait_for_namespace_ready

log = logging.getLogger("kubus.tests")


@pytest.fixture(scope="session")
def stack_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The env of a running stack: KUBECONFIG, NATS_URL, OTEL_EXPORTER_OTLP_ENDPOINT, ..."""
    env_file = os.environ.get("KUBUS_TEST_ENV_FILE")
    if env_file:
        env = read_env_file(Path(env_file))
        with system_pool(env, tmp_path_factory.mktemp("system-pool")):
            _wait_for_system_namespaces(env)
            yield env
        return
    if os.environ.get("KUBUS_TEST_STACK", "auto") != "local" and docker_available():
        containers = ContainerStack()
        yield containers.up()
        containers.stop()
        return
    # Infrastructure, and kubus as its base controller manager (the service-account
    # controllers, on a bus prefix of their own): each test runs the kubus services it is
    # about, as it needs them.
    stack = _local_stack(tmp_path_factory.mktemp("dev-stack"), nodes=3)
    env = stack.up(progress=log.info)
    try:
        with system_pool(env, tmp_path_factory.mktemp("system-pool")):
            _wait_for_system_namespaces(env)
            yield env
    finally:
        stack.stop()


def _wait_for_system_namespaces(env: dict[str, str]) -> None:
    """Pods may go to `default` (and the other namespaces that exist from the start)."""
    from kubernetes import client, config

    core = client.CoreV1Api(config.new_client_from_config(config_file=env["KUBECONFIG"]))
    for namespace in ("default", "kube-system", "kube-public", "kube-node-lease"):
        wait_for_namespace_ready(core, namespace)


def _local_stack(state_dir: Path, *, nodes: int) -> DevStack:
    return DevStack(
        StackConfig(
            state_dir=state_dir,
            binaries=Binaries(cache_dir=default_cache_dir(os.environ)),
            nodes=nodes,
            services=False,
            tied_to_parent=True,
        )
    )


@pytest.fixture
def private_stack(tmp_path: Path) -> Iterator[DevStack]:
    """A local stack of this test's own, for tests that stop and restart its servers."""
    stack = _local_stack(tmp_path / "stack", nodes=1)
    stack.up(progress=log.info)
    try:
        with system_pool(stack.env, tmp_path / "system-pool"):
            yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def kube(stack_env: dict[str, str]) -> Any:
    """An ApiClient of the official Kubernetes client, as the stack's admin."""
    from kubernetes import config

    return config.new_client_from_config(config_file=stack_env["KUBECONFIG"])


@pytest.fixture
def namespace(kube: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, ready for pods (its `default` ServiceAccount is there),
    deleted afterwards."""
    from kubernetes import client

    core = client.CoreV1Api(kube)
    name = f"t-{request.node.name.lower().replace('_', '-')[:40].strip('-')}-{uuid.uuid4().hex[:5]}"
    create_namespace(core, name)
    yield name
    core.delete_namespace(name)
