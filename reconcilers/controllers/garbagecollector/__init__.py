"""kube-controller-manager's garbage collector (``garbage-collector-controller``) on the bus.

Split as upstream's ``pkg/controller/garbagecollector``: :mod:`.controller` (declarations, the
event handler, the reconcile of one object), :mod:`.graph` (the dependency graph over the
cache's indexes, and which changes matter), :mod:`.owners` (resolving a reference to its owner
by uid), :mod:`.deletion` (attemptToDelete's decisions), :mod:`.operations` (the writes) and
:mod:`.restmapper` (kinds to resources, from discovery refreshed every 30 s).

Partitions. The namespaced objects of a partition are cached only by the process that owns it,
cluster-scoped ones by every process. A namespaced owner and its (valid) dependents share a
namespace, so one process sees them all and behaves as upstream. A cluster-scoped owner (a
ClusterRole, a Node, a cluster-scoped custom resource) has dependents in every partition, and
every process sees the owner: each process handles the dependents it holds (collects them when
the owner is gone or deleting in the foreground, drops the reference when it orphans them).
What only the owner's process can do is remove the owner's ``foregroundDeletion`` or ``orphan``
finalizer, and its cache cannot tell whether dependents remain in other partitions. It asks the
apiserver instead: a metadata-only list of the namespaced deletable resources, every namespace,
before removing the finalizer, and while some remain it looks again with a backoff (1 s
doubling to 30 s). The list costs one request per resource per look, for owners that are rare;
the alternative, a bus message from every process for every dependent it let go of, would cost
on every deletion.
"""

from reconcilers.controllers.garbagecollector.controller import GarbageCollectorController

__all__ = ["GarbageCollectorController"]
