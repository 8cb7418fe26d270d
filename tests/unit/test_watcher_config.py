"""`kubus watcher --resources`: kube-controller-manager-style lists, Secrets refused."""

from __future__ import annotations

import pytest

from bus.subjects import ResourceType
from watcher.config import DEFAULT_RESOURCES, SECRETS, WatcherConfigError, parse_resources


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
