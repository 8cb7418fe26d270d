"""`kubus dev` as a user runs it: up and down leave nothing behind; bad input fails clearly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from kubus.devstack.state import read_env_file
from tests.support.system import create_namespace
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

KUBUS = [sys.executable, "-m", "kubus.cli"]


def run_kubus(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KUBUS, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ if env is None else env),
        check=False,
    )


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (every component names its dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(f"{entry.name}: {cmdline}")
    return found


def assert_one_error_line(
    result: subprocess.CompletedProcess[str], prog: str, *needles: str
) -> None:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1, result.stderr
    assert lines[-1] == errors[0], result.stderr
    assert errors[0].startswith(f"{prog}: error: "), errors[0]
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_detached_up_then_down_leaves_no_process(tmp_path: Path) -> None:
    state_dir = tmp_path / "stack"
    up = run_kubus("dev", "up", "--detach", "--state-dir", str(state_dir), "--nodes", "1")
    try:
        _check_detached_stack_then_stop_it(up, state_dir)
    finally:
        run_kubus("dev", "down", "--state-dir", str(state_dir))  # whatever failed above
    assert processes_mentioning(str(state_dir)) == []


def _check_detached_stack_then_stop_it(
    up: subprocess.CompletedProcess[str], state_dir: Path
) -> None:
    assert up.returncode == 0, up.stderr
    env_lines = read_env_file(state_dir / "env")
    for key in ("KUBECONFIG", "NATS_URL", "OTEL_EXPORTER_OTLP_ENDPOINT", "JAEGER_QUERY_URL"):
        assert env_lines.get(key), key
    records = json.loads((state_dir / "stack.json").read_text())["processes"]
    pids = {record["name"]: record["pid"] for record in records}
    assert set(pids) == {
        "etcd",
        "nats-server",
        "jaeger",
        "kube-apiserver",
        "kube-scheduler",
        "kwok",
        "provisioner",
        "kubus-watcher",
        "kubus-reconciler-0",
        "kubus-reconciler-1",
    }
    assert all(Path(f"/proc/{pid}").exists() for pid in pids.values())
    _check_namespaces_get_their_service_account(env_lines["KUBECONFIG"])

    down = run_kubus("dev", "down", "--state-dir", str(state_dir))
    assert down.returncode == 0, down.stderr

    still_running = [name for name, pid in pids.items() if _alive(pid)]
    assert still_running == []


def _check_namespaces_get_their_service_account(kubeconfig: str) -> None:
    """The stack's own reconcilers run the service-account controllers (with its signing key
    and CA), so the ServiceAccount admission plugin, on, admits pods in a new namespace."""
    from kubernetes import client, config

    core = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    create_namespace(core, "sa-check")
    core.create_namespaced_pod(
        "sa-check",
        {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "c:1"}]}},
    )
    assert core.read_namespaced_pod("p", "sa-check").spec.service_account_name == "default"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_unknown_flag_is_one_clear_error() -> None:
    result = run_kubus("dev", "up", "--detach", "--nodez", "2")
    assert result.returncode == 2
    assert_one_error_line(result, "kubus dev up", "--nodez")


def test_unusable_state_dir_is_one_clear_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("")
    state_dir = not_a_dir / "stack"
    result = run_kubus("dev", "up", "--detach", "--state-dir", str(state_dir))
    assert_one_error_line(result, "kubus dev up", str(state_dir), "not usable")
    assert processes_mentioning(str(state_dir)) == []


def test_taken_port_is_one_clear_error_and_nothing_starts(tmp_path: Path) -> None:
    state_dir = tmp_path / "stack"
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = run_kubus(
            "dev", "up", "--detach", "--state-dir", str(state_dir), "--nats-port", str(port)
        )
    assert_one_error_line(result, "kubus dev up", f"port {port}", "nats", "in use")
    assert processes_mentioning(str(state_dir)) == []


@pytest.mark.parametrize("command", [["dev", "binaries"], ["dev", "up", "--detach"]])
def test_missing_go_toolchain_without_cached_binaries_is_one_clear_error(
    tmp_path: Path, command: list[str]
) -> None:
    # Nothing on PATH but the Python environment (which has nats-server and no Go), an empty
    # cache, and no envtest assets: the binaries can neither be found nor built.
    env = {
        "PATH": str(Path(sys.executable).parent),
        "HOME": str(tmp_path / "home"),
        "KUBUS_CACHE_DIR": str(tmp_path / "empty-cache"),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
    }
    state_dir = tmp_path / "stack"
    args = [*command, "--state-dir", str(state_dir)] if "up" in command else command
    result = run_kubus(*args, env=env)
    prog = "kubus " + " ".join(command[:2])
    assert_one_error_line(result, prog, "no Go toolchain", "etcd")
    assert processes_mentioning(str(state_dir)) == []
    assert processes_mentioning(str(tmp_path / "empty-cache")) == []


def start_in_foreground(state_dir: Path) -> tuple[subprocess.Popen[str], list[dict[str, Any]]]:
    """`kubus dev up` in the foreground, once it says it is ready; and its process records."""
    foreground = subprocess.Popen(
        [*KUBUS, "dev", "up", "--infra-only", "--state-dir", str(state_dir), "--nodes", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert foreground.stderr is not None
    for line in foreground.stderr:
        if "Ctrl-C stops everything" in line:
            break
    else:
        pytest.fail(f"kubus dev up ended before it was ready (exit {foreground.wait()})")
    return foreground, json.loads((state_dir / "stack.json").read_text())["processes"]


def test_foreground_up_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    state_dir = tmp_path / "stack"
    foreground, records = start_in_foreground(state_dir)
    try:
        assert len(records) == 7  # the infrastructure, the provisioner included
        assert all(_alive(record["pid"]) for record in records)

        foreground.send_signal(signal.SIGINT)
        assert foreground.wait(timeout=60) == 0
    finally:
        if foreground.poll() is None:
            foreground.kill()
            run_kubus("dev", "down", "--state-dir", str(state_dir))
    assert [record["name"] for record in records if _alive(record["pid"])] == []
    assert processes_mentioning(str(state_dir)) == []


def test_a_killed_foreground_up_takes_its_processes_with_it(tmp_path: Path) -> None:
    state_dir = tmp_path / "stack"
    foreground, records = start_in_foreground(state_dir)
    try:
        foreground.kill()  # SIGKILL: no chance to clean up
        foreground.wait(timeout=10)
        wait_for(
            lambda: not processes_mentioning(str(state_dir)),
            timeout=30,
            what="the stack's processes to exit with their parent",
        )
    finally:
        if foreground.poll() is None:
            foreground.kill()
        run_kubus("dev", "down", "--state-dir", str(state_dir))
    assert [record["name"] for record in records if _alive(record["pid"])] == []
