"""What a metadata-only Secret becomes on the bus, whatever the watcher was handed: the
apiserver's PartialObjectMetadata, or a full Secret (a tombstone's last state, left on the bus
by a watcher that ran with --mirror-secrets)."""

from __future__ import annotations

import json

from bus.envelope import EventType, Header, header_block
from bus.layout import BusLayout
from bus.subjects import ResourceType
from kubus.kube import ApiResource
from watcher.events import LAST_APPLIED, MetadataOnlyEventFactory

SECRET_API = ApiResource("", "v1", "secrets", "Secret", True, frozenset({"list", "watch"}))


def factory() -> MetadataOnlyEventFactory:
    return MetadataOnlyEventFactory(
        api=SECRET_API,
        resource=ResourceType("", "v1", "secrets"),
        layout=BusLayout(),
        max_payload=1024 * 1024,
        known=lambda _subject: None,
    )


def test_a_full_secret_keeps_its_metadata_and_nothing_else() -> None:
    full = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": "db",
            "namespace": "shop",
            "uid": "u-1",
            "resourceVersion": "42",
            "labels": {"app": "db"},
            "annotations": {LAST_APPLIED: '{"stringData":{"password":"s3cr3t"}}', "note": "x"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "o", "uid": "u-0"}],
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:data": {"f:password": {}}}}],
        },
        "data": {"password": "czNjcjN0"},
        "stringData": {"token": "s3cr3t"},
    }
    event = factory()(json.dumps(full).encode(), EventType.ADDED)
    published = json.loads(event.payload)
    assert published == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "db",
            "namespace": "shop",
            "uid": "u-1",
            "resourceVersion": "42",
            "labels": {"app": "db"},
            "annotations": {"note": "x"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "o", "uid": "u-0"}],
        },
    }
    assert event.metadata_only
    assert b"s3cr3t" not in event.payload and b"czNjcjN0" not in event.payload
    assert b"password" not in event.payload


def test_the_apiserver_partial_object_metadata_is_published_as_a_secret() -> None:
    partial = {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {
            "name": "db",
            "namespace": "shop",
            "uid": "u-1",
            "resourceVersion": "7",
            "annotations": {LAST_APPLIED: "{}"},
        },
    }
    event = factory()(json.dumps(partial).encode(), None)
    assert json.loads(event.payload) == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db", "namespace": "shop", "uid": "u-1", "resourceVersion": "7"},
    }
    assert event.event is EventType.ADDED
    assert event.resource_version == 7


def test_the_header_says_metadata_only_and_the_msg_id_differs_from_the_full_one() -> None:
    block = header_block(EventType.ADDED, "7", "u-1", 0, metadata_only=True).decode()
    assert f"{Header.METADATA_ONLY}: true\r\n" in block
    assert f"{Header.MSG_ID}: u-1:7:METADATA\r\n" in block
    assert Header.METADATA_ONLY not in header_block(EventType.ADDED, "7", "u-1", 0).decode()


def test_an_empty_metadata_only_list_decodes_as_no_items() -> None:
    """The apiserver answers a metadata-only list of nothing with ``"items": null`` (found
    when no Secret existed yet: the Secrets watcher crashed on it and never got ready)."""
    from kubus.kube.client import decode_list_page

    page = decode_list_page(
        b'{"kind":"PartialObjectMetadataList","apiVersion":"meta.k8s.io/v1",'
        b'"metadata":{"resourceVersion":"512"},"items":null}'
    )
    assert page.items == []
    assert page.metadata.resource_version == "512"
