"""docker-compose.yml, checked without a Docker engine.

The file is validated against the Compose specification's own JSON schema (compose-spec's
``schema/compose-spec.json``, as the check-jsonschema package vendors it for its
``--builtin-schema vendor.compose-spec``); then everything it hands kubus is checked against
kubus itself: each flag against ``kubus <command> --help``, each environment variable against
the variables that help names (``$NATS_URL``) and those kubus/telemetry.py reads (``OTEL_*``).
The rest are the properties `docker compose up` and `--scale` rely on and no schema knows.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from check_jsonschema.builtin_schemas import get_builtin_schema

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
TELEMETRY_SOURCE = ROOT / "kubus" / "telemetry.py"


def load_compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    return document


def schema_errors(document: object) -> list[str]:
    schema = get_builtin_schema("vendor.compose-spec")
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    return sorted(
        f"{'/'.join(str(part) for part in error.absolute_path) or '(top)'}: {error.message}"
        for error in validator.iter_errors(document)
    )


@functools.cache
def kubus_help(*command: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "kubus.cli", *command, "--help"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0, f"kubus {' '.join(command)} --help: {result.stderr}"
    return result.stdout


def help_flags(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", text))


def file_flags(text: str) -> set[str]:
    """The flags whose value is a file (metavar FILE in the help)."""
    return set(re.findall(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*) FILE\b", text))


def kubus_services(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the image built from this checkout."""
    services = {name: s for name, s in document["services"].items() if "build" in s}
    assert services, "no service builds the kubus image"
    return services


def command_of(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    assert isinstance(command, list), "kubus commands are lists (no shell word splitting)"
    return [str(word) for word in command]


def flag_values(command: list[str]) -> dict[str, str]:
    return dict(word.split("=", 1) for word in command[1:] if "=" in word)


def mount_targets(service: dict[str, Any]) -> list[PurePosixPath]:
    targets = []
    for volume in service.get("volumes", []):
        target = volume.split(":")[1] if isinstance(volume, str) else volume["target"]
        targets.append(PurePosixPath(target))
    return targets


def published_host_ports(service: dict[str, Any]) -> list[str]:
    """The fixed host ports of a service's ``ports`` (none for ``127.0.0.1::8080``)."""
    fixed = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            published = str(port.get("published", ""))
        else:
            parts = str(port).split("/")[0].split(":")
            published = parts[-2] if len(parts) > 1 else ""
        if published:
            fixed.append(published)
    return fixed


def test_the_compose_file_is_valid_against_the_compose_specification() -> None:
    assert schema_errors(load_compose()) == []


def test_the_schema_refuses_what_compose_would_refuse() -> None:
    # The check above is only worth something if the schema is strict: a misspelt key, a
    # wrong type and an unknown depends_on condition are each an error.
    document = load_compose()
    misspelt = copy.deepcopy(document)
    misspelt["services"]["reconciler"]["deploy"] = {"replica": 3}
    wrong_type = copy.deepcopy(document)
    wrong_type["services"]["reconciler"]["healthcheck"] = {"retries": [3]}
    bad_condition = copy.deepcopy(document)
    bad_condition["services"]["watcher"]["depends_on"]["nats"]["condition"] = "service_up"
    for broken in (misspelt, wrong_type, bad_condition):
        assert schema_errors(broken) != []


def test_every_kubus_command_line_is_one_kubus_accepts() -> None:
    for name, service in kubus_services(load_compose()).items():
        command = command_of(service)
        subcommand, arguments = command[0], command[1:]
        text = kubus_help(subcommand)
        assert text.startswith(f"usage: kubus {subcommand} "), f"{name}: {subcommand}?"
        known = help_flags(text)
        for word in arguments:
            # --flag=value throughout: a word that is not a flag would be a positional
            # argument, which neither service takes.
            assert word.startswith("--"), f"{name}: {word!r} is not a --flag=value"
            flag = word.split("=", 1)[0]
            assert flag in known, f"{name}: kubus {subcommand} has no {flag}"


def test_every_variable_set_for_kubus_is_one_kubus_reads() -> None:
    telemetry = set(re.findall(r"\bOTEL_[A-Z0-9_]+", TELEMETRY_SOURCE.read_text()))
    for name, service in kubus_services(load_compose()).items():
        text = kubus_help(command_of(service)[0])
        read = set(re.findall(r"\$([A-Z][A-Z0-9_]*)", text)) | telemetry
        environment = service.get("environment", {})
        assert isinstance(environment, dict), f"{name}: environment as a mapping"
        assert environment, f"{name}: sets no variables"
        for variable in environment:
            assert variable in read, f"{name}: kubus reads no ${variable}"


def test_kubus_services_reach_the_other_services_and_their_files() -> None:
    document = load_compose()
    services = document["services"]
    for name, service in kubus_services(document).items():
        environment = service["environment"]
        for variable, port in (("NATS_URL", 4222), ("OTEL_EXPORTER_OTLP_ENDPOINT", 4317)):
            url = urlsplit(environment[variable])
            assert url.hostname in services, f"{name}: ${variable} names no compose service"
            assert url.port == port, f"{name}: ${variable}"
        assert environment["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
        # Every file kubus is given lies in a volume mounted into the service.
        command = command_of(service)
        files = {
            flag: value
            for flag, value in flag_values(command).items()
            if flag in file_flags(kubus_help(command[0]))
        }
        files["$KUBECONFIG"] = environment["KUBECONFIG"]
        mounts = mount_targets(service)
        for given, path in files.items():
            inside = [m for m in mounts if PurePosixPath(path).is_relative_to(m)]
            assert inside, f"{name}: {given}={path} is in no volume of the service"


def test_kubus_healthchecks_probe_readyz_on_the_probe_address() -> None:
    for name, service in kubus_services(load_compose()).items():
        probe = flag_values(command_of(service))["--health-probe-bind-address"]
        port = int(probe.rsplit(":", 1)[1])
        test = " ".join(service["healthcheck"]["test"])
        assert "curl" not in test and "wget" not in test, f"{name}: the image has neither"
        assert re.search(rf"http://127\.0\.0\.1:{port}/readyz\b", test), f"{name}: {test}"


def test_start_order_follows_health() -> None:
    services = load_compose()["services"]
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on no service {dependency}"
            condition = rule["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency}: no healthcheck"
            else:
                assert condition == "service_completed_successfully", f"{name}: {condition}"
                assert services[dependency].get("restart") == "no", f"{dependency}: one-shot"
        if service.get("restart") != "no":
            assert "healthcheck" in service, f"{name}: nothing can wait for it without one"
    for name in kubus_services({"services": services}):
        needs = services[name]["depends_on"]
        assert needs["nats"]["condition"] == "service_healthy", name
        assert needs["jaeger"]["condition"] == "service_healthy", name
        assert needs["k3s-setup"]["condition"] == "service_completed_successfully", name


def test_the_reconciler_pool_scales() -> None:
    reconciler = load_compose()["services"]["reconciler"]
    assert reconciler["deploy"]["replicas"] == 3
    # `--scale reconciler=5` needs replicas that do not collide: no fixed name, hostname or
    # host port (kubus makes each member's name from its hostname, unique per container).
    assert "container_name" not in reconciler
    assert "hostname" not in reconciler
    assert published_host_ports(reconciler) == []
    assert command_of(reconciler)[0] == "reconciler"


def test_the_kubeconfig_inside_the_network_names_what_k3s_serves() -> None:
    services = load_compose()["services"]
    k3s = services["k3s"]
    assert "--disable-controller-manager" in k3s["command"]
    sans = {word.split("=", 1)[1] for word in k3s["command"] if word.startswith("--tls-san=")}
    script = services["k3s-setup"]["command"][0]
    servers = re.findall(r"--server=(https://\S+)", script)
    assert servers, "k3s-setup rewrites no server"
    for server in servers:
        url = urlsplit(server)
        assert url.hostname == "k3s" and url.hostname in sans, server
        assert url.port == 6443
    # The host keeps k3s's own kubeconfig, for its published 127.0.0.1:6443.
    assert k3s["environment"]["K3S_KUBECONFIG_OUTPUT"].startswith("/output/")
    assert "127.0.0.1:6443:6443" in k3s["ports"]


def strings_in(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for key, item in value.items() for s in (*strings_in(key), *strings_in(item))]
    if isinstance(value, list):
        return [s for item in value for s in strings_in(item)]
    return []


def test_no_value_is_left_to_compose_interpolation() -> None:
    # Compose replaces $NAME and ${NAME} in every value from the caller's shell (empty when
    # unset): the file means none, and its shell script writes $$ for a literal $.
    for text in strings_in(load_compose()):
        assert "$" not in text.replace("$$", ""), text


@pytest.mark.parametrize("service", ["watcher", "reconciler"])
def test_both_services_run_the_one_image(service: str) -> None:
    services = load_compose()["services"]
    assert services[service]["build"] == "."
    assert services[service]["image"] == services["watcher"]["image"]
