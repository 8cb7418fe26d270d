"""The disruption controller, as kube-controller-manager's ``disruption-controller``.

Keeps every PodDisruptionBudget's status true to its pods, which is what the apiserver's
eviction subresource decides on (``disruptionsAllowed`` 0: 429 Too Many Requests):

- the pods are those of the namespace its selector matches (``{}``: every pod, none without a
  selector); ``currentHealthy`` counts the Ready ones not being deleted and not recently
  evicted (listed in ``disruptedPods`` for less than :data:`DELETION_TIMEOUT`);
- ``minAvailable`` as a number: ``desiredHealthy`` is it and ``expectedPods`` the pods found.
  ``minAvailable`` as a percentage, and ``maxUnavailable`` in both forms, need the pods'
  controllers: ``expectedPods`` is the sum of their scales (a ReplicationController, a
  ReplicaSet or the Deployment owning it, a StatefulSet, from the cache; any other controller
  through a GET of its ``/scale`` subresource), percentages rounded up. Pods without a
  controller are left out of that sum (event ``UnmanagedPods``); a controller that cannot be
  found or has no scale fails the sync;
- ``disruptionsAllowed`` = currentHealthy - desiredHealthy, never below 0 and 0 while no pod is
  expected; the ``DisruptionAllowed`` condition says SufficientPods or InsufficientPods;
- a sync that fails (other than a write conflict, retried) writes disruptionsAllowed 0 with the
  condition False/SyncFailed and the error, and waits for the next change, as upstream;
- ``disruptedPods`` (written by the eviction subresource) keeps only pods still there, not yet
  being deleted, within the timeout; the PDB is synced again when its next entry expires;
- a pod carrying ``DisruptionTarget=True`` that is not being deleted (and not finished, and not
  marked by the kubelet) for 2 minutes (kubus's ``--stale-pod-disruption-timeout``; kcm
  hard-codes it) gets the condition set to False; such pods are requests of their own
  (``Request.resource`` = pods), queued again for the time they are due, never polled.

Events (NoPods, CalculateExpectedPodCountFailed, UnmanagedPods, NotDeleted on a pod whose
eviction entry expired, MultiplePodDisruptionBudgets on a pod two budgets select) come from
``controllermanager``, upstream's source for this controller.

``unhealthyPodEvictionPolicy`` changes only what the eviction subresource allows; this
controller, as upstream's, never reads it.

Requests name PDBs, or pods for the DisruptionTarget clean-up. A pod's change queues every
PDB of its namespace whose selector matches it now or matched it before (upstream queues one
of the current ones, chosen arbitrarily).
"""

from reconcilers.controllers.disruption.controller import DisruptionController

__all__ = ["DisruptionController"]
