"""What a command imports before it runs: only what its own path needs.

A new reconciler process should be ready fast, and most of its start-up is imports. Each case
runs in a fresh interpreter and checks which modules are loaded, never how long it took
(``python -X importtime -c 'import reconcilers.cli'`` measures that): the other subcommands'
modules, the controllers not chosen, cryptography without a key to sign with, and the run's
machinery while only the command line is built.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = Path(__file__).resolve().parents[2]

# What only other subcommands use.
OTHER_COMMANDS = ("bench", "kubus.devstack", "kubus.deploy", "watcher")
# What only a running reconciler uses, or a reconciler given a key or CA file.
RUN_ONLY = (
    "reconcilers.manager",
    "reconcilers.cache",
    "kubus.startup",
    "kubus.service",
    "kubus.serving",
    "kubus.kube",
    "aiohttp.web",
    "kubernetes",
    "cryptography",
    "yaml",
)
CONTROLLERS = {
    "deployment-controller": "reconcilers.controllers.deployment",
    "garbage-collector-controller": "reconcilers.controllers.garbagecollector",
    "namespace-controller": "reconcilers.controllers.namespace",
    "replicaset-controller": "reconcilers.controllers.replicaset",
    "root-ca-certificate-publisher-controller": "reconcilers.controllers.rootcacertpublisher",
    "serviceaccount-controller": "reconcilers.controllers.serviceaccount.serviceaccounts",
    "serviceaccount-token-controller": "reconcilers.controllers.serviceaccount.tokens",
}


def modules_after(code: str) -> set[str]:
    """The modules loaded once ``code`` ran in a new interpreter."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return set(json.loads(result.stdout.splitlines()[-1]))


def loaded(modules: set[str], *packages: str) -> list[str]:
    """Those of ``packages`` that are in ``modules``, themselves or by a submodule."""
    return [
        package
        for package in packages
        if any(name == package or name.startswith(f"{package}.") for name in modules)
    ]


def test_the_kubus_command_imports_no_subcommand_until_one_is_chosen() -> None:
    modules = modules_after(
        "import contextlib, io\n"
        "from kubus.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['--help'])"
    )
    assert "kubus.cli" in modules
    assert loaded(modules, *OTHER_COMMANDS, "reconcilers", "nats", "aiohttp") == []


def test_kubus_help_lists_each_command_as_its_module_does() -> None:
    """The listing comes from kubus.cli's table; a command's module, once it has added its
    parser, says the same."""
    lazy = subprocess.run(
        [sys.executable, "-m", "kubus.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    whole = subprocess.run(
        [
            sys.executable,
            "-c",
            "import argparse\n"
            "from kubus.cli import build_parser\n"
            "parser = build_parser()\n"
            "for action in parser._actions:\n"
            "    if isinstance(action, argparse._SubParsersAction):\n"
            "        dict(action.choices.items())  # each command's module adds its parser\n"
            "parser.print_help()",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert lazy == whole
    for command in ("dev", "watcher", "reconciler", "bench", "deploy"):
        assert f"    {command} " in lazy or f"    {command}\n" in lazy, command


def test_the_reconciler_command_line_imports_no_other_command_controller_or_run() -> None:
    """``kubus reconciler``'s parser lists every controller's flags from their declarations."""
    modules = modules_after(
        "from kubus.cli import build_parser\n"
        "args = build_parser().parse_args(['reconciler', '--concurrent-gc-syncs', '3',"
        " '--namespace-sync-period', '1m', '--enable-garbage-collector', 'false'])\n"
        "assert args.concurrent_gc_syncs == 3 and args.enable_garbage_collector is False"
    )
    assert "reconcilers.cli" in modules
    assert loaded(modules, *OTHER_COMMANDS, *RUN_ONLY, *CONTROLLERS.values()) == []


def test_importing_the_reconciler_command_imports_none_of_its_run() -> None:
    modules = modules_after("import reconcilers.cli")
    assert "reconcilers.registry" in modules
    assert loaded(modules, *OTHER_COMMANDS, *RUN_ONLY, *CONTROLLERS.values()) == []


@pytest.mark.parametrize(
    "chosen",
    [
        ("deployment-controller", "replicaset-controller"),
        ("garbage-collector-controller",),
        ("namespace-controller", "serviceaccount-controller"),
    ],
)
def test_a_process_imports_the_controllers_it_runs_and_no_other(chosen: tuple[str, ...]) -> None:
    modules = modules_after(
        f"from reconcilers.registry import select_controllers\nselect_controllers({list(chosen)!r})"
    )
    assert loaded(modules, *CONTROLLERS.values()) == [CONTROLLERS[name] for name in chosen]
    assert loaded(modules, "cryptography") == []


def test_cryptography_is_imported_for_a_key_to_sign_with(tmp_path: Path) -> None:
    key = tmp_path / "sa.key"
    key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    parse = (
        "from kubus.cli import build_parser\n"
        "build_parser().parse_args(['reconciler', '--service-account-private-key-file', {!r}])"
    )
    assert loaded(modules_after(parse.format(str(key))), "cryptography") == ["cryptography"]
    every = modules_after(
        "from reconcilers.registry import select_controllers\nselect_controllers(['*'])"
    )
    assert loaded(every, *CONTROLLERS.values()) == list(CONTROLLERS.values())
    assert loaded(every, "cryptography") == []
