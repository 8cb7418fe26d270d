"""The pods waiting on a claim, for the WaitForPodScheduled event of a delayed binding.

Upstream indexes its pod informer by claim. The binder is a global controller here, and a
full pod cache in its leader would cost more than it saves: this event is the only use, and it
fires only while a WaitForFirstConsumer claim waits. So it lists the claim's namespace's
unscheduled pods (``spec.nodeName=``) from the apiserver when it needs them.
"""

from __future__ import annotations

from typing import Final

import msgspec

from kubus.kube import ApiResource, KubeClient
from reconcilers.kinds import Object

__all__ = ["claim_names", "unscheduled_pods_using"]

_PAGE: Final = 500
_TERMINATED: Final = ("Succeeded", "Failed")


def claim_names(pod: Object) -> set[str]:
    """The claims a pod's volumes use: named ones, and generic ephemeral ``<pod>-<volume>``."""
    names: set[str] = set()
    for volume in pod.get("spec", {}).get("volumes") or ():
        source = volume.get("persistentVolumeClaim")
        if source and source.get("claimName"):
            names.add(source["claimName"])
        elif volume.get("ephemeral") is not None:
            names.add(f"{pod['metadata']['name']}-{volume.get('name', '')}")
    return names


async def unscheduled_pods_using(kube: KubeClient, pods: ApiResource, claim: Object) -> list[str]:
    namespace, name = claim["metadata"].get("namespace"), claim["metadata"]["name"]
    found: list[str] = []
    token: str | None = None
    while True:
        page = await kube.list_page(
            pods,
            limit=_PAGE,
            continue_token=token,
            namespace=namespace,
            field_selector="spec.nodeName=",
        )
        for raw in page.items:
            pod: Object = msgspec.json.decode(raw)
            if pod.get("status", {}).get("phase") in _TERMINATED:
                continue
            if name in claim_names(pod):
                found.append(pod["metadata"]["name"])
        token = page.metadata.continue_
        if not token:
            return sorted(found)
