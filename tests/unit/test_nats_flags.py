"""The flags a clustered, authenticated NATS with TLS asks of kubus: ``--nats-url`` as a list of
a cluster's servers, ``--nats-tls-ca``, and the reconciler's ``--stream-replicas``.

Through the parsers and the real ``kubus`` entry point (in this process: the checks all come
before anything connects). Against real servers: tests/integration/test_nats_cluster.py.
"""

from __future__ import annotations

import argparse
import ssl
import subprocess
from pathlib import Path

import pytest

from bus.connect import nats_tls_context, nats_url
from bus.connection import ServerUrl, parse_servers
from bus.errors import BusError
from kubus.cli import build_parser, main
from kubus.startup import StartupError, read_nats_tls_ca
from reconcilers.cli import ReconcilerConfigError, _manager_config, _merged

SECRET = "s3cret-pw"


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


# --- --nats-url: one server, or a cluster's ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nats://a:4222", [ServerUrl("nats", "a", 4222)]),
        ("nats://a:4222,nats://b:4223, tls://c", [
            ServerUrl("nats", "a", 4222), ServerUrl("nats", "b", 4223), ServerUrl("tls", "c", 4222)
        ]),
        ("a:1,b:2,c", [
            ServerUrl("nats", "a", 1), ServerUrl("nats", "b", 2), ServerUrl("nats", "c", 4222)
        ]),
        (
            f"tls://watcher:{SECRET}@n0:4222,tls://watcher:{SECRET}@n1:4222",
            [
                ServerUrl("tls", "n0", 4222, "watcher", SECRET),
                ServerUrl("tls", "n1", 4222, "watcher", SECRET),
            ],
        ),
        # A comma in a password (RFC 3986 allows it unencoded) does not split the URL.
        ("nats://u:pa,ss@n0:4222,nats://u:pa,ss@n1", [
            ServerUrl("nats", "n0", 4222, "u", "pa,ss"),
            ServerUrl("nats", "n1", 4222, "u", "pa,ss"),
        ]),
    ],
)  # fmt: skip
def test_a_list_of_cluster_servers_is_parsed_in_order(text: str, expected: list[ServerUrl]) -> None:
    assert list(parse_servers(text)) == expected
    assert nats_url(text) == text


@pytest.mark.parametrize(
    ("text", "reason", "named"),
    [
        # Split where a scheme follows, the stray comma stays with the entry before it.
        (f"nats://u:{SECRET}@a:4222,,nats://u:{SECRET}@b", "Port", "'nats://***@a:4222,'"),
        ("a:4222,,b:4222", "an empty entry", "'a:4222,,b:4222'"),
        (f"nats://u:{SECRET}@a:4222,http://u:{SECRET}@b:80", "scheme", "b:80"),
        (f"nats://u:{SECRET}@a:4222,nats://u:{SECRET}@b:port", "Port", "b:port"),
    ],
)
def test_a_bad_entry_of_a_list_is_named_without_any_password(
    text: str, reason: str, named: str
) -> None:
    with pytest.raises(BusError) as raised:
        parse_servers(text)
    assert reason in str(raised.value)
    assert named in str(raised.value)
    assert SECRET not in str(raised.value)


def test_both_commands_take_a_list_and_refuse_a_bad_one_naming_the_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    good = "nats://127.0.0.1:1,nats://127.0.0.1:2"
    assert parse("watcher", f"--nats-url={good}").nats_url == good
    assert parse("reconciler", f"--nats-url={good}").nats_url == good
    for command in ("watcher", "reconciler"):
        with pytest.raises(SystemExit) as exited:
            parse(command, f"--nats-url=nats://u:{SECRET}@a:1,ftp://u:{SECRET}@b:2")
        assert exited.value.code == 2
        error = capsys.readouterr().err
        assert "argument --nats-url: bad NATS URL" in error
        assert SECRET not in error


# --- --nats-tls-ca ----------------------------------------------------------------------------


def _ca(tmp_path: Path) -> Path:
    """A real CA certificate (openssl, as an operator would make one)."""
    key, cert = tmp_path / "ca.key", tmp_path / "ca.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=test CA",
         "-addext", "basicConstraints=critical,CA:TRUE"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert


def test_a_pem_ca_file_makes_a_context_that_trusts_it_and_only_it(tmp_path: Path) -> None:
    context = nats_tls_context(_ca(tmp_path))
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert [ca["subject"] for ca in context.get_ca_certs()] == [((("commonName", "test CA"),),)]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "no such file"),
        (b"", "not a PEM CA bundle (no '-----BEGIN CERTIFICATE-----' block in its 0 bytes)"),
        (b"\x30\x82\x01\x0a binary DER-ish bytes", "not a PEM CA bundle (no '-----BEGIN"),
        (b"-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n", "not a PEM CA"),
        (b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
         "not a PEM CA bundle ("),
    ],
)  # fmt: skip
def test_a_ca_file_that_is_missing_or_no_pem_is_named(
    tmp_path: Path, content: bytes | None, reason: str
) -> None:
    path = tmp_path / "ca.crt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError) as raised:
        nats_tls_context(path)
    assert str(raised.value).startswith(f"{path}: ")
    assert reason in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_directory_is_not_a_ca_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is a directory, not a PEM file"):
        nats_tls_context(tmp_path)


def test_the_ca_file_comes_from_the_flag_else_nats_tls_ca(tmp_path: Path) -> None:
    ca = _ca(tmp_path)
    assert read_nats_tls_ca(None, {}) is None
    assert read_nats_tls_ca(None, {"NATS_TLS_CA": str(ca)}) is not None
    with pytest.raises(StartupError) as raised:
        read_nats_tls_ca(None, {"NATS_TLS_CA": str(tmp_path / "gone.crt")})
    gone = tmp_path / "gone.crt"
    assert str(raised.value) == f"--nats-tls-ca (from $NATS_TLS_CA) {gone}: no such file"
    with pytest.raises(StartupError) as raised:
        read_nats_tls_ca(tmp_path / "nope.crt", {"NATS_TLS_CA": str(ca)})  # the flag wins
    assert str(raised.value) == f"--nats-tls-ca {tmp_path / 'nope.crt'}: no such file"


def _kubeconfig(tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    return path


@pytest.mark.parametrize("command", ["watcher", "reconciler"])
def test_each_command_refuses_a_bad_ca_file_in_one_line_before_connecting(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    not_pem = tmp_path / "ca.crt"
    not_pem.write_text("this is not a certificate\n")
    common = [
        f"--kubeconfig={_kubeconfig(tmp_path)}",
        f"--nats-url=tls://{command}:{SECRET}@127.0.0.1:1",
        "--health-probe-bind-address=0",
        "--metrics-bind-address=0",
    ]
    missing = tmp_path / "missing.crt"
    cases = [
        ([f"--nats-tls-ca={missing}"], {}, f"--nats-tls-ca {missing}: no such file"),
        ([f"--nats-tls-ca={not_pem}"], {}, f"--nats-tls-ca {not_pem}: not a PEM CA bundle"),
        (
            [],
            {"NATS_TLS_CA": str(not_pem)},
            f"--nats-tls-ca (from $NATS_TLS_CA) {not_pem}: not a PEM CA bundle",
        ),
    ]
    for flags, environ, expected in cases:
        monkeypatch.delenv("NATS_TLS_CA", raising=False)
        for key, value in environ.items():
            monkeypatch.setenv(key, value)
        with pytest.raises(SystemExit) as exited:
            main([command, *common, *flags])
        assert exited.value.code == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"kubus {command}: error: {expected}")
        assert SECRET not in lines[0]


def test_the_reconciler_takes_the_ca_file_from_its_config_file(tmp_path: Path) -> None:
    ca = _ca(tmp_path)
    config = tmp_path / "reconciler.yaml"
    config.write_text(f"nats-tls-ca: {ca}\nstream-replicas: 3\n")
    values = _merged(
        parse(
            "reconciler",
            f"--config={config}",
            f"--kubeconfig={_kubeconfig(tmp_path)}",
            "--health-probe-bind-address=0",
            "--metrics-bind-address=0",
        )
    )
    manager, outside = _manager_config(values)
    assert manager.nats_tls is not None and outside.nats_tls is manager.nats_tls
    assert manager.stream_replicas == 3 and outside.stream_replicas == 3


# --- the reconciler's --stream-replicas ---------------------------------------------------------


def test_the_reconciler_keeps_its_buckets_at_one_replica_unless_told() -> None:
    assert _merged(parse("reconciler"))["stream_replicas"] == 1
    assert _merged(parse("reconciler", "--stream-replicas=3"))["stream_replicas"] == 3


@pytest.mark.parametrize("value", ["0", "6", "three", "1.5", "-1"])
def test_the_reconcilers_stream_replicas_are_checked_as_the_watchers(
    capsys: pytest.CaptureFixture[str], value: str
) -> None:
    messages = []
    for command in ("watcher", "reconciler"):
        with pytest.raises(SystemExit) as exited:
            parse(command, f"--stream-replicas={value}")
        assert exited.value.code == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        messages.append(last.partition("error: ")[2].replace(f"kubus {command} ", "kubus X "))
    expected = (
        f"argument --stream-replicas: must be a whole number between 1 and 5, not {value!r} "
        "(see 'kubus X --help')"
    )
    assert messages == [expected, expected]


@pytest.mark.parametrize(
    ("value", "shown"), [("0", "0 (int)"), ("true", "True (bool)"), ("2.0", "2.0 (float)")]
)
def test_stream_replicas_in_the_config_file_are_checked_too(
    tmp_path: Path, value: str, shown: str
) -> None:
    config = tmp_path / "reconciler.yaml"
    config.write_text(f"stream-replicas: {value}\n")
    with pytest.raises(ReconcilerConfigError) as raised:
        _merged(parse("reconciler", f"--config={config}"))
    assert str(raised.value) == (
        f"--config {config}: stream-replicas: must be a whole number between 1 and 5, not {shown}"
    )


def test_both_commands_document_the_new_flags(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("watcher", "reconciler"):
        with pytest.raises(SystemExit):
            parse(command, "--help")
        text = " ".join(capsys.readouterr().out.split())
        assert "--nats-tls-ca FILE" in text
        assert "(default $NATS_TLS_CA)" in text
        assert "comma-separated list of a cluster's servers" in text
        assert "--stream-replicas N" in text
