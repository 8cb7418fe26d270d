"""The real kube-controller-manager beside kubus on the dev stack, running only the controllers a
test names: the reference kubus is checked against, or a part kubus does not play in that test."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kubus.devstack import Binaries, default_cache_dir


@contextmanager
def running_kcm(
    stack_env: dict[str, str],
    log_path: Path,
    controllers: str,
    *,
    env: dict[str, str] | None = None,
) -> Iterator[Path]:
    """kube-controller-manager with ``--controllers=<controllers>``, no leader election and no
    serving port, its output in ``log_path``; stopped (SIGTERM, then SIGKILL) on exit."""
    binary = Binaries(cache_dir=default_cache_dir(os.environ)).ensure(["kube-controller-manager"])
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                str(binary["kube-controller-manager"].path),
                f"--kubeconfig={stack_env['KUBECONFIG']}",
                f"--controllers={controllers}",
                "--leader-elect=false",
                "--use-service-account-credentials=false",
                "--secure-port=0",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    try:
        yield log_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
