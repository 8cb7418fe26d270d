"""Flag values are checked as kube-controller-manager's are, before anything connects.

The parsers of kubus/cliutil.py (durations in Go's form, whole numbers, rates), pflag's habits
(no abbreviations, ``--flag -value``), and the reconciler's ``--config`` checked with the same
parsers as the flags. Through the real CLI against real servers: tests/integration/
test_bad_input.py.
"""

from __future__ import annotations

import argparse
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubus.cli import build_parser
from kubus.cliutil import (
    check_bindable,
    duration,
    format_duration,
    klog_level,
    parse_duration,
    positive_number,
    whole_number,
)
from kubus.startup import StartupError, read_kubeconfig
from reconcilers.cli import ReconcilerConfigError, _manager_config, _merged


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("15s", 15.0),
        ("2m", 120.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("1h", 3600.0),
        ("1.5h", 5400.0),
        ("1h2m3.5s", 3723.5),
        ("250us", 250e-6),
        ("250µs", 250e-6),
        ("10ns", 10e-9),
        ("+5s", 5.0),
        ("-5s", -5.0),
        ("0", 0.0),
        ("10", 10.0),
        ("2.5", 2.5),
        (" 7 ", 7.0),
        (10, 10.0),
        (0.25, 0.25),
    ],
)
def test_durations_in_go_form_or_seconds(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    ["nan", "inf", "-inf", "Infinity", "", "s", "15x", "1m30", "m5", "1e3", "1 m", "--5s",
     True, None, float("nan"), float("inf"), [1]],
)  # fmt: skip
def test_what_is_not_a_duration(value: object) -> None:
    with pytest.raises(ValueError, match="must be a duration such as 15s"):
        parse_duration(value)


def test_a_duration_flag_has_a_bound() -> None:
    positive = duration(minimum=0)
    assert positive("1m") == 60.0
    for bad in ("0", "0s", "-1s", "-10"):
        with pytest.raises(ValueError, match=r"must be a duration > 0s"):
            positive(bad)
    at_least_a_second = duration(minimum=1, inclusive=True)
    assert at_least_a_second("1s") == 1.0
    with pytest.raises(ValueError, match=r">= 1s, not '500ms'"):
        at_least_a_second("500ms")


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0s"), (0.5, "500ms"), (10, "10s"), (90, "1m30s"), (86400, "24h0m0s"),
     (3723.5, "1h2m3.5s")],
)  # fmt: skip
def test_durations_print_as_go_prints_them(seconds: float, shown: str) -> None:
    assert format_duration(seconds) == shown
    assert parse_duration(shown) == pytest.approx(seconds)


def test_whole_numbers_refuse_booleans_floats_and_out_of_range() -> None:
    replicas = whole_number(minimum=1, maximum=5)
    assert replicas("3") == 3
    assert replicas(5) == 5
    for bad in ("0", "6", "-1", "3.0", 3.0, True, "three", None):
        with pytest.raises(ValueError, match="must be a whole number between 1 and 5"):
            replicas(bad)
    assert klog_level("0") == 0
    with pytest.raises(ValueError, match=">= 0"):
        klog_level("-1")


def test_rates_are_finite_and_positive() -> None:
    assert positive_number("20") == 20.0
    assert positive_number(0.5) == 0.5
    for bad in ("0", "-5", "nan", "inf", True, "ten", 0):
        with pytest.raises(ValueError, match="must be a number > 0"):
            positive_number(bad)


# --- pflag's habits ------------------------------------------------------------------------------


def test_no_abbreviations(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["reconciler", "--verbose"], ["reconciler", "--kube-api-q=5"]):
        with pytest.raises(SystemExit) as exited:
            parse(*argv)
        assert exited.value.code == 2
        assert "unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["-v", "2"], ["-v=2"], ["-v2"], ["--v=2"], ["--v", "2"]])
def test_v_takes_a_klog_level_in_every_spelling(argv: list[str]) -> None:
    assert parse("reconciler", *argv).v == 2
    assert parse("watcher", *argv).v == 2


def test_a_flag_takes_the_next_argument_even_with_a_leading_dash() -> None:
    assert parse("reconciler", "--controllers", "-deployment").controllers == "-deployment"
    assert parse("watcher", "--resources", "-v1/pods").resources == "-v1/pods"
    # Still an option where it is one, and an unknown option stays unknown.
    args = parse("reconciler", "--controllers", "*,-deployment", "-v", "3")
    assert (args.controllers, args.v) == ("*,-deployment", 3)


def _subparsers() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


@pytest.mark.parametrize("command", ["reconciler", "watcher"])
def test_every_flag_has_help(command: str) -> None:
    parser = dict(_subparsers())[command]
    flags = [action for action in parser._actions if action.option_strings]
    assert len(flags) > 10
    missing = [action.option_strings[-1] for action in flags if not (action.help or "").strip()]
    assert missing == []


# --- the reconciler's values, alone and together ----------------------------------------------


def _config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "reconciler.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kube-api-qps: ten\n", "kube-api-qps: must be a number > 0, not 'ten'"),
        ("kube-api-burst: 0\n", "kube-api-burst: must be a whole number >= 1, not 0 (int)"),
        ("concurrent-deployment-syncs: true\n", "must be a whole number >= 1, not True (bool)"),
        ("nats-url: 12345\n", "nats-url: must be a string, not 12345 (int)"),
        ("partition-lease-duration: nan\n", "partition-lease-duration: must be a duration"),
        ("pool: a.b\n", "pool: must be 1-63 letters"),
        ("v: -1\n", "v: must be a whole number >= 0"),
        ("logging-format: xml\n", "logging-format: must be one of text, json"),
        ("verbose: true\n", "unknown setting 'verbose'"),
        ("- a\n- b\n", "expected a mapping of flag names"),
        ("kube-api-qps: [1\n", "not YAML at line 2, column 1"),
    ],
)
def test_a_bad_config_value_names_the_file_and_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    config = _config_file(tmp_path, text)
    with pytest.raises(ReconcilerConfigError) as raised:
        _merged(parse("reconciler", f"--config={config}"))
    assert str(raised.value).startswith(f"--config {config}: ")
    assert message in str(raised.value)


def test_every_flag_is_a_config_key(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    config = _config_file(
        tmp_path,
        f"v: 4\nlogging-format: json\nreconcile-audit-log: {audit}\n"
        "partition-lease-duration: 1m30s\npartition-renew-deadline: 1m\n"
        "partition-retry-period: 500ms\nconnect-timeout: 5s\n"
        "feature-gates: {DeploymentReplicaSetTerminatingReplicas: false}\n",
    )
    values = _merged(parse("reconciler", f"--config={config}", "-v", "2"))
    assert values["v"] == 2  # the flag wins
    assert values["logging_format"] == "json"
    assert values["reconcile_audit_log"] == audit
    assert values["partition_lease_duration"] == 90.0
    assert values["partition_retry_period"] == 0.5
    assert values["connect_timeout"] == 5.0
    assert values["feature_gates"] == "DeploymentReplicaSetTerminatingReplicas=false"


def test_start_up_waits_30s_by_default() -> None:
    assert _merged(parse("reconciler"))["connect_timeout"] == 30.0
    assert parse("watcher").connect_timeout == 30.0
    assert parse("watcher", "--connect-timeout=1m").connect_timeout == 60.0


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ReconcilerConfigError, match=r"--config .*nope.yaml: no such file"):
        _merged(parse("reconciler", f"--config={tmp_path / 'nope.yaml'}"))


def test_a_bad_nats_url_from_the_environment_says_so_without_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NATS_URL", "http://kubus:hunter2@127.0.0.1:4222")
    with pytest.raises(ReconcilerConfigError) as raised:
        _merged(parse("reconciler"))
    assert str(raised.value).startswith("--nats-url (from $NATS_URL): bad NATS URL")
    assert "hunter2" not in str(raised.value)


def _kubeconfig(tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    return path


def _values(tmp_path: Path, *argv: str) -> dict[str, object]:
    return _merged(
        parse(
            "reconciler",
            f"--kubeconfig={_kubeconfig(tmp_path)}",
            "--health-probe-bind-address=127.0.0.1:0",
            "--metrics-bind-address=0",
            *argv,
        )
    )


def test_lease_timings_are_checked_together(tmp_path: Path) -> None:
    with pytest.raises(
        ReconcilerConfigError,
        match=re.escape(
            "--partition-retry-period (2s) < --partition-renew-deadline (15s) < "
            "--partition-lease-duration (10s) is needed"
        ),
    ):
        _manager_config(_values(tmp_path, "--partition-renew-deadline=15s"))
    config, _kube = _manager_config(
        _values(tmp_path, "--partition-lease-duration=1m", "--partition-renew-deadline=40s")
    )
    assert (config.timing.lease_duration, config.timing.renew_deadline) == (60.0, 40.0)


def test_a_taken_probe_port_names_the_flag(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        values = _merged(
            parse(
                "reconciler",
                f"--kubeconfig={_kubeconfig(tmp_path)}",
                f"--metrics-bind-address=127.0.0.1:{port}",
                "--health-probe-bind-address=0",
            )
        )
        with pytest.raises(StartupError) as raised:
            _manager_config(values)
    assert str(raised.value) == (
        f"--metrics-bind-address: 127.0.0.1:{port}: cannot listen there (Address already in use)"
    )


def test_probe_addresses_that_collide_are_found(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    values = _merged(
        parse(
            "reconciler",
            f"--kubeconfig={_kubeconfig(tmp_path)}",
            f"--metrics-bind-address=127.0.0.1:{port}",
            f"--health-probe-bind-address=:{port}",
        )
    )
    with pytest.raises(StartupError, match="collide"):
        _manager_config(values)


def test_an_unresolvable_bind_host_is_named() -> None:
    with pytest.raises(ValueError, match=r"no-such-host\.invalid:8080: cannot resolve"):
        check_bindable([("no-such-host.invalid", 8080)])


def test_an_audit_log_that_cannot_be_written_is_named(tmp_path: Path) -> None:
    target = tmp_path / "missing-dir" / "audit.jsonl"
    with pytest.raises(ReconcilerConfigError, match=r"--reconcile-audit-log .*missing-dir"):
        _manager_config(_values(tmp_path, f"--reconcile-audit-log={target}"))


def test_a_kubeconfig_problem_names_the_flag_or_the_variable(tmp_path: Path) -> None:
    missing = tmp_path / "missing.kubeconfig"
    with pytest.raises(StartupError, match=rf"^--kubeconfig {missing}: no such file$"):
        read_kubeconfig(missing, environ={})
    with pytest.raises(StartupError, match=rf"^--kubeconfig \(from \$KUBECONFIG\) {missing}: "):
        read_kubeconfig(None, environ={"KUBECONFIG": str(missing)})
    not_yaml = tmp_path / "bad.kubeconfig"
    not_yaml.write_text("clusters: [")
    with pytest.raises(StartupError, match=r"bad.kubeconfig: not YAML at line 1, column 12"):
        read_kubeconfig(not_yaml, environ={})
    no_context = tmp_path / "empty.kubeconfig"
    no_context.write_text("apiVersion: v1\nkind: Config\n")
    with pytest.raises(StartupError, match=r"empty.kubeconfig: .*current-context"):
        read_kubeconfig(no_context, environ={})
    good = _kubeconfig(tmp_path)
    path, config, source = read_kubeconfig(good, environ={})
    assert (path, config.server, source) == (good, "http://127.0.0.1:9", f"--kubeconfig {good}")


def test_no_kubeconfig_at_all_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubernetes import config

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "none"))
    with pytest.raises(StartupError, match=r"^no kubeconfig: none given .*/none$"):
        read_kubeconfig(None, environ={})
