"""`kubus watcher` flags: `--resources` as kube-controller-manager's lists plus `all`, resolved
against discovery as client-go's ServerPreferredResources picks versions; `--nats-url` checked
before anything connects."""

from __future__ import annotations

import json
import re

import pytest

from bus.subjects import ResourceType
from kubus.kube import ApiResource, Discovery
from kubus.kube.discovery import ApiGroup, parse_aggregated, select_preferred
from watcher.config import (
    DEFAULT_RESOURCES,
    SECRETS,
    ResourceSelection,
    WatcherConfigError,
    parse_layout,
    parse_nats_url,
    parse_resources,
)

LIST_WATCH = frozenset({"get", "list", "watch", "create", "delete"})


def api(group: str, version: str, name: str, verbs: frozenset[str] = LIST_WATCH) -> ApiResource:
    return ApiResource(group, version, name, name.title().rstrip("s"), True, verbs)


def discovery(*groups: ApiGroup, failed: dict[tuple[str, str], str] | None = None) -> Discovery:
    return Discovery(
        resources={
            (r.group, r.version, r.name): r
            for g in groups
            for _v, resources in g.versions
            for r in resources
        },
        preferred=select_preferred(groups),
        failed=failed or {},
    )


CORE = ApiGroup(
    "",
    "v1",
    (
        (
            "v1",
            (
                api("", "v1", "pods"),
                api("", "v1", "configmaps"),
                api("", "v1", "secrets"),
                api("", "v1", "events"),
                api("", "v1", "bindings", frozenset({"create"})),
                api("", "v1", "componentstatuses", frozenset({"get", "list"})),
            ),
        ),
    ),
)
EVENTS = ApiGroup("events.k8s.io", "v1", (("v1", (api("events.k8s.io", "v1", "events"),)),))
# A group whose preferred version (v2) does not serve every resource: gadgets are v1 only.
WIDGETS = ApiGroup(
    "example.com",
    "v2",
    (
        ("v1", (api("example.com", "v1", "widgets"), api("example.com", "v1", "gadgets"))),
        ("v2", (api("example.com", "v2", "widgets"),)),
    ),
)


def test_star_is_the_default_set_and_entries_add_and_remove() -> None:
    widgets = ResourceType("example.com", "v1", "widgets")
    chosen = parse_resources("*,example.com/v1/widgets,-v1/configmaps")
    assert widgets in chosen.listed
    assert ResourceType("", "v1", "configmaps") not in chosen.listed
    assert len(chosen.listed) == len(DEFAULT_RESOURCES)
    assert not chosen.everything


def test_all_selects_discovery_and_removals_stay_removals() -> None:
    chosen = parse_resources("all,-v1/events,-events.k8s.io/v1/events")
    assert chosen.everything
    assert chosen.listed == ()
    assert chosen.excluded == {
        ResourceType("", "v1", "events"),
        ResourceType("events.k8s.io", "v1", "events"),
    }
    both = parse_resources("*,all")
    assert both.everything
    assert both.listed == DEFAULT_RESOURCES


def test_all_resolves_to_every_listable_watchable_resource_in_its_preferred_version() -> None:
    watch = parse_resources("all").resolve(discovery(CORE, EVENTS, WIDGETS)).watch
    assert set(watch) == {
        ResourceType.parse(text)
        for text in (
            "v1/pods",
            "v1/configmaps",
            "v1/secrets",  # metadata only unless --mirror-secrets: see the watcher
            "example.com/v2/widgets",  # the group's preferred version
            "example.com/v1/gadgets",  # served in v1 only: the first version that has it
        )
    }
    assert watch[ResourceType.parse("example.com/v2/widgets")].version == "v2"


def test_all_leaves_events_out_unless_they_are_named() -> None:
    found = discovery(CORE, EVENTS, WIDGETS)
    assert not [r for r in parse_resources("all").resolve(found).watch if r.resource == "events"]
    assert not parse_resources("all").would_watch(ResourceType.parse("v1/events"))
    named = parse_resources("all,v1/events,events.k8s.io/v1/events").resolve(found).watch
    assert {ResourceType.parse("v1/events"), ResourceType.parse("events.k8s.io/v1/events")} <= set(
        named
    )


def test_removals_from_all_match_the_resource_whatever_version_discovery_prefers() -> None:
    selection = parse_resources("all,-v1/events,-events.k8s.io/v1/events,-example.com/v1/widgets")
    watch = selection.resolve(discovery(CORE, EVENTS, WIDGETS)).watch
    assert not [r for r in watch if r.resource in ("events", "widgets")]
    assert ResourceType.parse("example.com/v1/gadgets") in watch


def test_a_named_version_replaces_the_preferred_one() -> None:
    watch = parse_resources("all,example.com/v1/widgets").resolve(discovery(WIDGETS)).watch
    assert set(watch) == {
        ResourceType.parse("example.com/v1/widgets"),
        ResourceType.parse("example.com/v1/gadgets"),
    }


def test_named_resources_that_cannot_be_watched_are_reported() -> None:
    resolution = parse_resources("v1/pods,v1/podz,v1/bindings,metrics.k8s.io/v1beta1/pods").resolve(
        discovery(CORE, failed={("metrics.k8s.io", "v1beta1"): "stale"})
    )
    assert set(resolution.watch) == {ResourceType.parse("v1/pods")}
    assert resolution.unknown == (ResourceType.parse("v1/podz"),)
    assert resolution.unwatchable == (ResourceType.parse("v1/bindings"),)
    assert resolution.undiscovered == {ResourceType.parse("metrics.k8s.io/v1beta1/pods"): "stale"}


def test_secrets_may_be_named_without_the_opt_in() -> None:
    # Without --mirror-secrets they are watched and published as metadata only.
    assert SECRETS in parse_resources("*,v1/secrets").listed
    assert SECRETS not in DEFAULT_RESOURCES


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pods", "--resources: resource 'pods' is not GROUP/VERSION/RESOURCE"),
        ("-v1/pods", "selects no resource"),
        ("", "selects no resource"),
    ],
)
def test_bad_lists_name_the_flag(text: str, message: str) -> None:
    with pytest.raises(WatcherConfigError, match=message):
        parse_resources(text)


def test_a_removal_alone_with_all_is_fine() -> None:
    assert parse_resources("all,-v1/pods") == ResourceSelection(
        (), frozenset({ResourceType.parse("v1/pods")}), everything=True
    )


def test_aggregated_discovery_skips_subresources_and_reports_stale_group_versions() -> None:
    document = {
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "items": [
            {
                "metadata": {"name": "autoscaling"},
                "versions": [
                    {
                        "version": "v2",
                        "resources": [
                            {
                                "resource": "horizontalpodautoscalers",
                                "responseKind": {"group": "", "version": "", "kind": "HPA"},
                                "scope": "Namespaced",
                                "verbs": ["list", "watch"],
                                "subresources": [{"subresource": "status", "verbs": ["get"]}],
                            }
                        ],
                    },
                    {
                        "version": "v1",
                        "resources": [
                            {
                                "resource": "horizontalpodautoscalers",
                                "responseKind": {"kind": "HPA"},
                                "scope": "Namespaced",
                                "verbs": ["list", "watch"],
                            }
                        ],
                    },
                ],
            },
            {
                "metadata": {"name": "metrics.k8s.io"},
                "versions": [{"version": "v1beta1", "freshness": "Stale"}],
            },
        ],
    }
    failed: dict[tuple[str, str], str] = {}
    groups = parse_aggregated(json.dumps(document).encode(), failed)
    assert failed == {("metrics.k8s.io", "v1beta1"): "discovery reports it stale"}
    (hpa,) = select_preferred(groups)
    assert (hpa.group, hpa.version, hpa.name, hpa.kind, hpa.namespaced) == (
        "autoscaling",
        "v2",
        "horizontalpodautoscalers",
        "HPA",
        True,
    )


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
