"""The README's quick start, pasted line by line into fresh shells, as a newcomer runs it.

The shells inherit nothing of the test's environment but ``PATH`` without the virtualenv (so
the ``kubectl`` found first is whatever the machine has), a ``HOME`` of their own (so
``~/.local/state/kubus/dev``, the README's default state dir, is this test's) and
``KUBUS_CACHE_DIR`` (the binaries already built, instead of a 20-minute build). The README's
text is what runs; the only rewrite is the background block's ``/tmp/kubus-dev`` into that
same default state dir, so that its ``up`` starts the stack the first block then uses.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kubus.devstack import default_cache_dir
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MARK = "::kubus-quickstart-line"


def quick_start_blocks() -> list[list[str]]:
    """The ```sh blocks of the README's Quick start section, as pasted commands.

    A line ending in a backslash continues on the next one, as in an interactive shell.
    """
    text = README.read_text()
    section = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    blocks = []
    for body in re.findall(r"^```sh\n(.*?)^```$", section, flags=re.S | re.M):
        commands: list[str] = []
        pending = ""
        for line in body.splitlines():
            pending += line + "\n"
            if not line.endswith("\\"):
                if pending.strip():
                    commands.append(pending.rstrip("\n"))
                pending = ""
        blocks.append(commands)
    return blocks


def block_with(blocks: list[list[str]], needle: str) -> list[str]:
    (block,) = (b for b in blocks if any(needle in command for command in b))
    return block


@dataclass
class Ran:
    command: str
    status: int | None  # None: the shell never got to its end (a timeout, or an earlier exit)
    output: str


def run_in_fresh_shell(
    commands: list[str], *, cwd: Path, env: dict[str, str], timeout: float
) -> list[Ran]:
    """One ``bash`` fed ``commands`` in turn, each one's exit status and output recorded.

    Like an interactive shell, it goes on after a failing command; the caller asserts.
    """
    script = []
    for index, command in enumerate(commands):
        # The status marker starts a line of its own even after output without a newline.
        script += [
            f"echo '{MARK} {index} begin'",
            command,
            f"printf '\\n{MARK} {index} status %d\\n' $?",
        ]
    process = subprocess.Popen(
        ["bash", "--noprofile", "--norc", "-c", "\n".join(script)],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a stuck `kubectl rollout status` is killed with the shell
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
    results = [Ran(command, None, "") for command in commands]
    current: Ran | None = None
    for line in output.splitlines(keepends=True):
        if line.startswith(MARK):
            _, index, what, *status = line.split()
            current = results[int(index)] if what == "begin" else None
            if what == "status":
                results[int(index)].status = int(status[0])
        elif current is not None:
            current.output += line
    return results


def assert_succeeded(ran: list[Ran]) -> None:
    for result in ran:
        assert result.status == 0, f"{result.command!r} -> {result.status}:\n{result.output}"


def fresh_environment(home: Path) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    path = [entry for entry in os.environ["PATH"].split(os.pathsep) if entry != venv_bin]
    return {
        "HOME": str(home),
        "PATH": os.pathsep.join(path),
        "KUBUS_CACHE_DIR": str(default_cache_dir(os.environ)),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
    }


def json_of(result: Ran) -> Any:
    return json.loads(result.output)


def only_trace(shown: Any) -> dict[str, Any] | None:
    """The one trace a ``limit=1`` query printed; None while Jaeger has none."""
    traces = shown["data"] or []
    assert len(traces) <= 1, f"limit=1 showed {len(traces)} traces"
    return dict(traces[0]) if traces else None


def chain(trace: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """Each span as (service, operation, its parent as "service: operation").

    The parent is None for a root span and "?" for one Jaeger does not have (yet).
    """
    service_of = {pid: p["serviceName"] for pid, p in trace["processes"].items()}
    spans = {span["spanID"]: span for span in trace["spans"]}
    result = []
    for span in spans.values():
        parent_ids = [r["spanID"] for r in span["references"] if r["refType"] == "CHILD_OF"]
        parent = spans.get(parent_ids[0]) if parent_ids else None
        if parent is not None:
            described: str | None = f"{service_of[parent['processID']]}: {parent['operationName']}"
        else:
            described = "?" if parent_ids else None
        result.append((service_of[span["processID"]], span["operationName"], described))
    return result


def lists_every_service(shown: Any) -> bool:
    return {"kubus-watcher", "kubus-reconciler", "apiserver"} <= set(shown["data"] or [])


def reconcile_from_a_publish(shown: Any) -> bool:
    """A Deployment reconcile, continuing the watcher's publish (a requeue is a root)."""
    trace = only_trace(shown)
    return trace is not None and any(
        (service, name) == ("kubus-reconciler", "reconcile deployment-controller")
        and (parent is None or parent.startswith("kubus-watcher: publish "))
        for service, name, parent in chain(trace)
    )


def write_into_the_apiserver_and_etcd(shown: Any) -> bool:
    """A reconcile's write with the apiserver's span as its child, and an etcd call."""
    trace = only_trace(shown)
    spans = chain(trace) if trace is not None else []
    writes = {
        name
        for service, name, parent in spans
        if service == "kubus-reconciler"
        and (parent or "").startswith("kubus-reconciler: reconcile ")
    }
    under_write = any(
        service == "apiserver" and parent in {f"kubus-reconciler: {name}" for name in writes}
        for service, _name, parent in spans
    )
    to_etcd = any(
        service == "apiserver" and name.startswith("etcdserverpb.") for service, name, _ in spans
    )
    return under_write and to_etcd


def test_the_quick_start_runs_line_by_line_in_fresh_shells(tmp_path: Path) -> None:
    blocks = quick_start_blocks()
    user = block_with(blocks, "source ~/.local/state/kubus/dev/env")
    background = [
        command.replace("/tmp/kubus-dev", "~/.local/state/kubus/dev")
        for command in block_with(blocks, "dev up --detach")
    ]
    up, down = background[0], background[-1]
    assert "dev up --detach" in up and "--infra-only" not in up
    assert "dev down" in down

    home = tmp_path / "home"
    home.mkdir()
    env = fresh_environment(home)
    state_dir = home / ".local" / "state" / "kubus" / "dev"
    try:
        (started,) = run_in_fresh_shell([up], cwd=ROOT, env=env, timeout=600)
        assert started.status == 0, started.output
        # A second shell, elsewhere, as the README says; then the test's own look at which
        # kubectl that shell used.
        ran = run_in_fresh_shell([*user, "command -v kubectl"], cwd=home, env=env, timeout=600)

        def rerun(command: str) -> Ran:
            source, again = run_in_fresh_shell([user[0], command], cwd=home, env=env, timeout=60)
            assert_succeeded([source, again])
            return again

        _check_the_user_block(ran[: len(user)], rerun)
        assert_succeeded(ran[len(user) :])
        used = Path(ran[-1].output.strip())
        assert used.parent == state_dir / "bin", used
        assert used.resolve() == (Path(sys.executable).parent / "kubectl").resolve()
    finally:
        stopped = run_in_fresh_shell(background[1:], cwd=ROOT, env=env, timeout=120)
    assert_succeeded(stopped)
    assert not (state_dir / "stack.json").exists()


def _check_the_user_block(ran: list[Ran], rerun: Callable[[str], Ran]) -> None:
    assert_succeeded(ran)

    def output(prefix: str) -> list[Ran]:
        return [result for result in ran if result.command.startswith(prefix)]

    (nodes,) = output("kubectl get nodes")
    rows = nodes.output.strip().splitlines()[1:]
    assert len(rows) == 3 and all(row.split()[1] == "Ready" for row in rows), nodes.output

    rollouts = output("kubectl rollout status deployment/web")
    assert len(rollouts) == 2
    assert all('deployment "web" successfully rolled out' in r.output for r in rollouts)

    (listed,) = output("kubectl get rs,pods")
    replicasets = [row for row in listed.output.splitlines() if row.startswith("replicaset")]
    assert len(replicasets) == 2, listed.output  # the first template's and the second's
    running = [row for row in listed.output.splitlines() if " Running " in row]
    assert len(running) >= 4, listed.output

    # Each process sends Jaeger its spans in batches (every 5 s by default), so right after the
    # rollout a service, or a part of the newest trace (the one `limit=1` shows), may not be
    # there yet: then the same line, run again a few seconds later, shows it.
    for prefix, shows, what in (
        (
            'curl -s "$JAEGER_QUERY_URL/api/services"',
            lists_every_service,
            "the apiserver and both kubus services",
        ),
        (
            'curl -s "$JAEGER_QUERY_URL/api/traces?service=kubus-reconciler&operation=reconcile',
            reconcile_from_a_publish,
            "a Deployment reconcile, under the watcher's publish unless a requeue",
        ),
        (
            'curl -s "$JAEGER_QUERY_URL/api/traces?service=kubus-reconciler&operation=PUT%20',
            write_into_the_apiserver_and_etcd,
            "the apiserver's span under a reconcile's write, and an etcd call",
        ),
    ):
        (first,) = output(prefix)
        if not shows(json_of(first)):
            _run_again_until(first, shows, what, rerun)


def _run_again_until(
    first: Ran, shows: Callable[[Any], bool], what: str, rerun: Callable[[str], Ran]
) -> None:
    wait_for(
        lambda: shows(json_of(rerun(first.command))),
        timeout=30,
        what=f"{first.command!r} to show {what} (it first showed: {first.output[:2000]})",
        interval=2,
    )
