"""kubus as the test cluster's own controller manager, and namespaces made ready for pods.

With the ServiceAccount admission plugin on, the apiserver refuses a pod in a namespace that
has no ``default`` ServiceAccount yet. In the local dev stack nothing but kubus creates it: the
session runs a "system" pool (a watcher and one reconciler on a bus prefix of their own) with
kube-controller-manager's service-account controllers, and namespaces are created the way
upstream's e2e framework creates them: then waited on until ``default`` and
``kube-root-ca.crt`` are there.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.services import Pool
from tests.support.wait import wait_for

# The resources the system controllers read (Secrets travel as metadata only).
SYSTEM_RESOURCES = "v1/namespaces,v1/serviceaccounts,v1/secrets,v1/configmaps"
SYSTEM_CONTROLLERS = "serviceaccount,serviceaccount-token,root-ca-cert-publisher"
NAMESPACE_READY_TIMEOUT = 30.0


def system_flags(state_dir: Path) -> list[str]:
    """The reconciler flags kube-controller-manager gets in a cluster of the dev stack."""
    pki = state_dir / "pki"
    return [
        f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--root-ca-file={pki / 'ca.crt'}",
    ]


@contextmanager
def system_pool(env: Mapping[str, str], log_dir: Path) -> Iterator[Pool | None]:
    """The system pool for a dev stack (``KUBUS_STATE_DIR`` with its PKI); None for a cluster
    that has controllers of its own (k3s)."""
    state_dir = env.get("KUBUS_STATE_DIR")
    if not state_dir or not (Path(state_dir) / "pki" / "sa.key").is_file():
        yield None
        return
    log_dir.mkdir(parents=True, exist_ok=True)
    pool = Pool(
        env,
        log_dir,
        "sys" + uuid.uuid4().hex[:8],
        1,
        ["--pool=system", f"--controllers={SYSTEM_CONTROLLERS}", *system_flags(Path(state_dir))],
        watcher_args=[f"--resources={SYSTEM_RESOURCES}"],
    )
    try:
        pool.start()
        yield pool
    finally:
        pool.stop()


def wait_for_namespace_ready(
    core: Any, namespace: str, *, timeout: float = NAMESPACE_READY_TIMEOUT
) -> float:
    """Wait until ``namespace`` has its ``default`` ServiceAccount and ``kube-root-ca.crt``
    (as the e2e framework's namespace creation does); returns the seconds waited."""
    from kubernetes.client.exceptions import ApiException

    started = time.monotonic()

    def ready() -> bool:
        try:
            core.read_namespaced_service_account("default", namespace)
            core.read_namespaced_config_map("kube-root-ca.crt", namespace)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    wait_for(
        ready,
        timeout=timeout,
        what=f"ServiceAccount default and ConfigMap kube-root-ca.crt in namespace {namespace}",
        interval=0.05,
    )
    return time.monotonic() - started


def create_namespace(core: Any, namespace: str, **metadata: Any) -> str:
    """Create ``namespace`` and wait until pods can be created in it."""
    core.create_namespace({"metadata": {"name": namespace, **metadata}})
    wait_for_namespace_ready(core, namespace)
    return namespace
