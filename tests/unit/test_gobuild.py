"""The wrapper module that builds binaries from a Go module with replaces."""

from __future__ import annotations

from kubus.devstack.gobuild import GoModule, parse_go_mod, wrapper_go_mod

KUBERNETES_LIKE = """
module k8s.io/kubernetes

go 1.26.0

godebug default=go1.26

require (
	k8s.io/api v0.0.0
	github.com/foo/bar v1.2.3 // indirect
)

replace (
	k8s.io/api => ./staging/src/k8s.io/api
	k8s.io/client-go => ./staging/src/k8s.io/client-go // a comment
)

replace github.com/Shopify/sarama => github.com/Shopify/sarama v1.33.0
"""


def test_reads_go_godebug_and_both_replace_forms() -> None:
    facts = parse_go_mod(KUBERNETES_LIKE)
    assert facts.go == "1.26.0"
    assert facts.godebug == ["default=go1.26"]
    assert [(r.old, r.new, r.new_version, r.is_local) for r in facts.replaces] == [
        ("k8s.io/api", "./staging/src/k8s.io/api", None, True),
        ("k8s.io/client-go", "./staging/src/k8s.io/client-go", None, True),
        ("github.com/Shopify/sarama", "github.com/Shopify/sarama", "v1.33.0", False),
    ]


def test_wrapper_maps_staging_to_published_versions_and_keeps_other_replaces() -> None:
    module = GoModule("k8s.io/kubernetes", "v1.36.3", staging_version="v0.36.3")
    text = wrapper_go_mod(module, parse_go_mod(KUBERNETES_LIKE))
    assert "require k8s.io/kubernetes v1.36.3" in text
    assert "\tk8s.io/api => k8s.io/api v0.36.3" in text
    assert "\tk8s.io/client-go => k8s.io/client-go v0.36.3" in text
    assert "\tgithub.com/Shopify/sarama => github.com/Shopify/sarama v1.33.0" in text
    assert "./staging" not in text
    assert "godebug default=go1.26" in text


def test_wrapper_drops_local_replaces_without_a_published_counterpart() -> None:
    module = GoModule("example.com/tool", "v1.0.0")
    text = wrapper_go_mod(module, parse_go_mod(KUBERNETES_LIKE))
    assert "./staging" not in text
    assert "k8s.io/api =>" not in text
