"""A real nats-server of a test's own, on 127.0.0.1, that the test may stop, restart and freeze.

Use it as a context manager: whatever happens in the test, the process is killed on the way
out (a frozen one is killed too, or thawed before a graceful stop, so that nothing SIGSTOPped
is left behind). Started from the main thread, the process also gets SIGKILL from the kernel
if the test run itself dies.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from kubus.devstack import Binaries, default_cache_dir
from kubus.devstack.process import spawn, tail

__all__ = ["NatsServer", "free_port", "nats_server_binary"]


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def nats_server_binary() -> Path:
    binaries = Binaries(cache_dir=default_cache_dir(os.environ)).ensure(["nats-server"])
    return Path(binaries["nats-server"].path)


class NatsServer:
    """One nats-server: client port ``port``, monitoring on ``monitor_port``, logs and the
    JetStream store (with ``jetstream=True``) under ``directory``.

    ``args`` are extra command-line options (``--user``, ``--tls``, ...); ``config`` is the
    text of a configuration file, for what has no option (``max_payload``). ``cluster`` names
    a cluster to join: the server listens for routes on ``cluster_port`` and connects to the
    servers of ``routes`` (other clustered ``NatsServer`` s, started before this one).

    The ports are picked when the server first starts (again, if another process took one
    meanwhile), and stay the same across :meth:`restart`.
    """

    def __init__(
        self,
        directory: Path,
        *,
        jetstream: bool = False,
        args: Sequence[str] = (),
        config: str | None = None,
        cluster: str | None = None,
        routes: Sequence[NatsServer] = (),
        ready_timeout: float = 20.0,
    ) -> None:
        self.directory = directory
        self.log = directory / "nats-server.log"
        self.ready_timeout = ready_timeout
        self.port = free_port()
        self.monitor_port = free_port()
        self.cluster_port = free_port() if cluster is not None else None
        self._binary = nats_server_binary()
        self._options = list(args)
        if config is not None:
            directory.mkdir(parents=True, exist_ok=True)
            config_file = directory / "nats-server.conf"
            config_file.write_text(config)
            self._options += ["--config", str(config_file)]
        if jetstream:
            self._options += ["--jetstream", "--store_dir", str(directory / "jetstream")]
        if cluster is not None:
            self._options += ["--cluster_name", cluster]
        self._routes = list(routes)
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._started = False

    # --- addresses ------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, *, scheme: str = "nats", credentials: str = "", host: str = "127.0.0.1") -> str:
        """``scheme://[credentials@]host:port``; ``credentials`` as they go in a URL."""
        userinfo = f"{credentials}@" if credentials else ""
        return f"{scheme}://{userinfo}{host}:{self.port}"

    # --- life -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> NatsServer:
        """Start the server and wait until it serves clients; fails with its log otherwise."""
        if self.running:
            raise RuntimeError(f"nats-server on {self.address} is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self._started else 5
        for attempt in range(1, attempts + 1):
            logged = self.log.stat().st_size if self.log.exists() else 0
            # The kernel's SIGKILL-with-parent fires when the *thread* that forked exits: ask
            # for it from the main thread only (not from asyncio.to_thread's workers).
            tied = threading.current_thread() is threading.main_thread()
            _record, self._process = spawn(
                "nats-server", self._argv(), log_path=self.log, die_with_parent=tied
            )
            self._paused = False
            try:
                self._wait_ready()
            except BaseException:
                self.stop(kill=True)
                if attempt < attempts and self._lost_a_port_since(logged):
                    # free_port() is only a guess: another process bound the port since.
                    self.port, self.monitor_port = free_port(), free_port()
                    if self.cluster_port is not None:
                        self.cluster_port = free_port()
                    continue
                raise
            self._started = True
            break
        return self

    def _argv(self) -> list[str]:
        argv = [str(self._binary), "--addr", "127.0.0.1", "--port", str(self.port)]
        argv += ["--http_port", str(self.monitor_port)]
        if self.cluster_port is not None:
            argv += ["--cluster", f"nats://127.0.0.1:{self.cluster_port}"]
        # Read now: a route's own ports are final once it has started.
        routes = [f"nats://127.0.0.1:{server.cluster_port}" for server in self._routes]
        if routes:
            argv += ["--routes", ",".join(routes)]
        return argv + self._options

    def _lost_a_port_since(self, offset: int) -> bool:
        with self.log.open("rb") as log:
            log.seek(offset)
            return b"address already in use" in log.read()

    def stop(self, *, kill: bool = False, grace: float = 10.0) -> None:
        """SIGTERM (a graceful shutdown) or, with ``kill``, SIGKILL: as a crash would.

        Idempotent; a paused server is thawed first so that SIGTERM can take effect.
        """
        process, self._process = self._process, None
        if process is None:
            return
        try:
            if process.poll() is None:
                if kill:
                    process.kill()
                else:
                    if self._paused:
                        process.send_signal(signal.SIGCONT)
                    process.terminate()
                try:
                    process.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        finally:
            self._paused = False
            if process.poll() is None:  # only if wait() itself was interrupted
                process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=10)

    def restart(self, *, kill: bool = False) -> NatsServer:
        """Stop and start again on the same ports, with the same store."""
        self.stop(kill=kill)
        return self.start()

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing, as a hung one would."""
        process = self._require_process()
        process.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        process = self._require_process()
        process.send_signal(signal.SIGCONT)
        self._paused = False

    def __enter__(self) -> NatsServer:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop(kill=True)

    # --- monitoring -----------------------------------------------------------------------

    def monitor(self, endpoint: str, timeout: float = 2.0) -> dict[str, Any]:
        """The JSON of a monitoring endpoint, e.g. ``connz`` or ``routez``."""
        address = f"http://127.0.0.1:{self.monitor_port}/{endpoint.lstrip('/')}"
        with urllib.request.urlopen(address, timeout=timeout) as response:
            document: dict[str, Any] = json.load(response)
            return document

    def log_tail(self, lines: int = 15) -> str:
        return tail(self.log, lines)

    def _require_process(self) -> subprocess.Popen[bytes]:
        if self._process is None or self._process.poll() is not None:
            raise RuntimeError(f"nats-server on {self.address} is not running")
        return self._process

    def _wait_ready(self) -> None:
        """/healthz answers ok (JetStream included, when enabled) and the client port accepts."""
        deadline = time.monotonic() + self.ready_timeout
        problem = "not started"
        while time.monotonic() < deadline:
            self._fail_if_exited()
            try:
                health = self.monitor("healthz", timeout=1)
                if health.get("status") == "ok":
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                        return
                problem = f"healthz says {health}"
            except (OSError, ValueError) as error:
                problem = str(error)
            time.sleep(0.05)
        raise AssertionError(
            f"nats-server on {self.address} not ready within {self.ready_timeout:.0f}s "
            f"({problem}); log: {self.log_tail()}"
        )

    def _fail_if_exited(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            code = None if process is None else process.returncode
            raise AssertionError(
                f"nats-server on {self.address} exited (code {code}); log: {self.log_tail()}"
            )
