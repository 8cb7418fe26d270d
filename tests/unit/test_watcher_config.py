"""`kubus watcher` flags: `--resources` as kube-controller-manager's lists, Secrets refused;
`--nats-url` checked before anything connects."""

from __future__ import annotations

import re

import pytest

from bus.subjects import ResourceType
from watcher.config import (
    DEFAULT_RESOURCES,
    SECRETS,
    WatcherConfigError,
    parse_layout,
    parse_nats_url,
    parse_resources,
)


def test_star_is_the_default_set_and_entries_add_and_remove() -> None:
    widgets = ResourceType("example.com", "v1", "widgets")
    chosen = parse_resources("*,example.com/v1/widgets,-v1/configmaps", mirror_secrets=False)
    assert widgets in chosen
    assert ResourceType("", "v1", "configmaps") not in chosen
    assert len(chosen) == len(DEFAULT_RESOURCES)


def test_secrets_need_the_opt_in() -> None:
    with pytest.raises(WatcherConfigError, match="--mirror-secrets"):
        parse_resources("*,v1/secrets", mirror_secrets=False)
    assert SECRETS in parse_resources("*,v1/secrets", mirror_secrets=True)
    assert SECRETS not in DEFAULT_RESOURCES


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pods", "--resources: resource 'pods' is not GROUP/VERSION/RESOURCE"),
        ("-v1/pods", "selects no resource"),
    ],
)
def test_bad_lists_name_the_flag(text: str, message: str) -> None:
    with pytest.raises(WatcherConfigError, match=message):
        parse_resources(text, mirror_secrets=False)


@pytest.mark.parametrize(
    "url", ["nats://127.0.0.1:4222", "tls://nats.example:4443", "nats://u:p@host", "host:4222"]
)
def test_nats_urls_the_watcher_can_use_pass_unchanged(url: str) -> None:
    assert parse_nats_url(url) == url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ws://host:8080", "the scheme must be nats:// or tls://"),
        ("nats://u:hunter2@host:99999", "Port out of range"),
        ("nats://host:4222/path", "no path"),
    ],
)
def test_a_bad_nats_url_names_the_flag_and_keeps_the_password_out(url: str, reason: str) -> None:
    with pytest.raises(WatcherConfigError, match="--nats-url") as raised:
        parse_nats_url(url)
    assert reason in str(raised.value)
    assert "hunter2" not in str(raised.value)


def test_a_bad_nats_url_from_the_environment_names_its_source() -> None:
    with pytest.raises(WatcherConfigError) as raised:
        parse_nats_url("http://u:hunter2@host", source="--nats-url (from $NATS_URL)")
    assert str(raised.value).startswith("--nats-url (from $NATS_URL): bad NATS URL")
    assert "hunter2" not in str(raised.value)


@pytest.mark.parametrize(
    ("prefix", "partitions", "message"),
    [
        ("Kubus", 32, "--bus-prefix: bus prefix 'Kubus' must be"),
        ("a.b", 32, "--bus-prefix: bus prefix 'a.b' must be"),
        ("kubus", 2000, "--partitions: partitions must be between 1 and 1024, not 2000"),
    ],
)
def test_the_layout_flags_are_named(prefix: str, partitions: int, message: str) -> None:
    with pytest.raises(WatcherConfigError, match=re.escape(message)):
        parse_layout(prefix, partitions)
    assert parse_layout("kubus", 7).partitions == 7
