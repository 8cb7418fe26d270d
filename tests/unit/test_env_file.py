"""The dev stack's ``env`` file, as a shell and as kubus's own reader see it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kubus.devstack.state import StateDir, read_env_file

VALUES = {
    "KUBECONFIG": "/state dir/kubeconfig",
    "NATS_URL": "nats://127.0.0.1:4222",
    "ODD": "it's $HOME and `ls`",
}


def shell_env(script: str, *, shell: str = "bash") -> dict[str, str]:
    """The environment a child process of ``shell`` sees after ``script``."""
    result = subprocess.run(
        [shell, "-c", f"{script}\nenv -0"],
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
        capture_output=True,
        check=True,
    )
    entries = (entry.decode() for entry in result.stdout.split(b"\0") if entry)
    return dict(entry.split("=", 1) for entry in entries)


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    state = StateDir(tmp_path / "state")
    state.prepare()
    return state


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_sourcing_the_env_file_exports_every_value(state: StateDir, shell: str) -> None:
    state.write_env(VALUES)
    # `.` is `source` in POSIX sh; the variables must reach child processes (kubectl).
    seen = shell_env(f". {state.env_file}", shell=shell)
    assert {key: seen.get(key) for key in VALUES} == VALUES


def test_sourcing_with_allexport_as_the_e2e_tools_do_still_works(state: StateDir) -> None:
    state.write_env(VALUES)
    seen = shell_env(f"set -a; . {state.env_file}; set +a")
    assert {key: seen.get(key) for key in VALUES} == VALUES


def test_the_path_line_puts_the_linked_tools_first(state: StateDir, tmp_path: Path) -> None:
    tool = tmp_path / "venv" / "bin" / "kubectl"
    tool.parent.mkdir(parents=True)
    tool.write_text("#!/bin/sh\necho kubus-kubectl\n")
    tool.chmod(0o755)
    assert state.link_tools([tool, tmp_path / "venv" / "bin" / "missing"])
    assert sorted(p.name for p in state.bin_dir.iterdir()) == ["kubectl"]
    state.write_env(VALUES, path_dir=state.bin_dir)

    seen = shell_env(f". {state.env_file}")
    assert seen["PATH"] == f"{state.bin_dir}:/usr/bin:/bin"
    found = subprocess.run(
        ["bash", "-c", f". {state.env_file}; kubectl"],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert found.stdout == "kubus-kubectl\n"


def test_no_tools_no_bin_dir(state: StateDir, tmp_path: Path) -> None:
    assert not state.link_tools([tmp_path / "absent"])
    assert not state.bin_dir.exists()


def test_the_reader_returns_the_values_and_leaves_out_path(state: StateDir) -> None:
    state.write_env(VALUES, path_dir=state.bin_dir)
    assert read_env_file(state.env_file) == VALUES


def test_the_reader_takes_plain_key_value_lines_too(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# a stack elsewhere\nKUBECONFIG='/a b/kubeconfig'\nEMPTY=\n\n")
    assert read_env_file(env_file) == {"KUBECONFIG": "/a b/kubeconfig", "EMPTY": ""}


def test_down_removes_the_links(state: StateDir, tmp_path: Path) -> None:
    tool = tmp_path / "kubus"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    state.link_tools([tool])
    state.write_env(VALUES, path_dir=state.bin_dir)
    state.clear()
    assert not state.bin_dir.exists()
    assert not state.env_file.exists()


def test_kubus_dev_env_prints_what_the_file_says(state: StateDir, tmp_path: Path) -> None:
    tool = tmp_path / "kubectl"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    state.link_tools([tool])
    state.write_env(VALUES, path_dir=state.bin_dir)
    printed = subprocess.run(
        [sys.executable, "-m", "kubus.cli", "dev", "env", "--state-dir", str(state.path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert printed == state.env_file.read_text()
