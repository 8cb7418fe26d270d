"""Running kubus services as a user does: `kubus ...` processes, probed over HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.support.wait import wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServiceProcess:
    """One `kubus <command>` process with its probe and metrics ports and its log file."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str],
        log: Path,
        kubus: Sequence[str] | None = None,
    ) -> None:
        self.command = list(command)
        # How `kubus` is run: this interpreter's, unless another (e.g. a virtualenv's) is given.
        self.kubus = list(kubus or (sys.executable, "-m", "kubus.cli"))
        self.health_port = free_port()
        self.metrics_port = free_port()
        self.log = log
        self._env = dict(env)
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, *, wait_ready: bool = True, timeout: float = 60) -> None:
        argv = [
            *self.kubus,
            *self.command,
            f"--health-probe-bind-address=127.0.0.1:{self.health_port}",
            f"--metrics-bind-address=127.0.0.1:{self.metrics_port}",
        ]
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=self._env
            )
        if wait_ready:
            wait_for(self.ready, timeout=timeout, what=f"{self.command[0]} /readyz ({self.log})")

    def ready(self) -> bool:
        if self._process is None or self._process.poll() is not None:
            raise AssertionError(f"{self.command[0]} exited: {self.log.read_text()[-3000:]}")
        return self._get(self.health_port, "/readyz") == "ok"

    def metrics(self) -> str:
        return self._get(self.metrics_port, "/metrics") or ""

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples that carry these labels."""
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            if all(f'{key}="{val}"' in series for key, val in labels.items()):
                total += float(value)
        return total

    def stop(self, *, sig: int = signal.SIGTERM, timeout: float = 45) -> int:
        """Signal the process and wait; a process that outlives ``timeout`` is killed and the
        test fails: a service that ignores SIGTERM is a bug."""
        assert self._process is not None
        self._process.send_signal(sig)
        try:
            return self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # Its tasks' stacks into the log first (kubus.service), then the tail into the
            # failure, so the output of a CI run shows where it hung.
            self._process.send_signal(signal.SIGUSR1)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=2)
            self._process.kill()
            self._process.wait(timeout=10)
            raise AssertionError(
                f"{self.command[0]} ignored {sig!r} for {timeout}s ({self.log}); its log ends:\n"
                + self.log.read_text(errors="replace")[-12000:]
            ) from None

    def kill(self) -> None:
        self.stop(sig=signal.SIGKILL)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _get(self, port: int, path: str) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                body: bytes = response.read()
                return body.decode()
        except OSError:
            return None


@contextmanager
def watcher(
    stack_env: Mapping[str, str], tmp_path: Path, *args: str, name: str = "watcher"
) -> Iterator[ServiceProcess]:
    env = {**os.environ, **stack_env}
    process = ServiceProcess(
        [
            "watcher",
            f"--kubeconfig={stack_env['KUBECONFIG']}",
            f"--nats-url={stack_env['NATS_URL']}",
            *args,
        ],
        env=env,
        log=tmp_path / f"{name}.log",
    )
    process.start()
    try:
        yield process
    finally:
        if process.running:
            process.stop()


class Pool:
    """A watcher and N reconciler processes sharing one bus prefix: kubus, as deployed."""

    def __init__(
        self,
        stack_env: Mapping[str, str],
        tmp_path: Path,
        prefix: str,
        reconcilers: int,
        extra: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        watcher_args: Sequence[str] = (),
        kubus: Sequence[str] | None = None,
    ) -> None:
        self.prefix = prefix
        self._env = {**os.environ, **stack_env, **(env or {})}
        common = [
            f"--kubeconfig={stack_env['KUBECONFIG']}",
            f"--nats-url={stack_env['NATS_URL']}",
            f"--bus-prefix={prefix}",
        ]
        self.watcher = ServiceProcess(
            ["watcher", *common, *watcher_args],
            env=self._env,
            log=tmp_path / "watcher.log",
            kubus=kubus,
        )
        self.reconcilers = [
            ServiceProcess(
                ["reconciler", *common, *extra],
                env=self._env,
                log=tmp_path / f"reconciler-{index}.log",
                kubus=kubus,
            )
            for index in range(reconcilers)
        ]

    def start(self) -> None:
        self.watcher.start()
        for process in self.reconcilers:
            process.start(wait_ready=False)
        for process in self.reconcilers:
            wait_for(process.ready, timeout=60, what=f"reconciler /readyz ({process.log})")

    def stop(self) -> None:
        failures = []
        for process in [*self.reconcilers, self.watcher]:
            if process.running:
                try:
                    process.stop()
                except AssertionError as failure:
                    failures.append(str(failure))
        assert not failures, failures


@contextmanager
def kubus_pool(
    stack_env: Mapping[str, str],
    tmp_path: Path,
    *,
    reconcilers: int = 1,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    watcher_args: Sequence[str] = (),
    kubus: Sequence[str] | None = None,
) -> Iterator[Pool]:
    """A watcher and ``reconcilers`` processes; ``kubus``: the command that runs kubus (default
    ``python -m kubus.cli`` of this interpreter)."""
    import uuid

    pool = Pool(
        stack_env,
        tmp_path,
        "t" + uuid.uuid4().hex[:10],
        reconcilers,
        extra,
        env=env,
        watcher_args=watcher_args,
        kubus=kubus,
    )
    try:
        pool.start()
        yield pool
    finally:
        pool.stop()
