"""The DaemonSet controller, as kube-controller-manager's ``daemonset-controller``.

A DaemonSet runs one pod on every node that should run it (its template's ``nodeName``,
``nodeSelector``, required node affinity, and the node's taints against the pod's tolerations
plus those the controller adds). The pods it creates are placed by a required node-affinity
term on the node's ``metadata.name`` and bound by the scheduler. Failed pods are deleted and
re-created with a per-node backoff; pods on nodes that should not run one, and extra pods, are
deleted. Templates are recorded as ControllerRevisions; ``RollingUpdate`` replaces pods within
``maxUnavailable`` (or surges up to ``maxSurge``), ``OnDelete`` waits for the user to delete
them. The status counts desired, current, misscheduled, ready, updated, available and
unavailable pods.

The modules follow upstream's files in ``pkg/controller/daemon/``:

================  ============================  ============================================
module            upstream                      what
================  ============================  ============================================
``controller``    daemon_controller.go          the class, event handlers, syncDaemonSet,
                                                manage, syncNodes
``predicates``    daemon_controller.go,         NodeShouldRunDaemonPod, the added
                  util/daemonset_util.go        tolerations, the node-name affinity
``update``        update.go, util               the RollingUpdate arithmetic and plan
``revisions``     update.go                     constructHistory, snapshot, cleanupHistory
``status``        daemon_controller.go          the status counts
================  ============================  ============================================

As in the Deployment package, only the class in ``controller`` has state; the other modules
are functions (pure ones in ``predicates``, ``update`` and ``status``).
"""

from reconcilers.controllers.daemonset.controller import DaemonSetController

__all__ = ["DaemonSetController"]
