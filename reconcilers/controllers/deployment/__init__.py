"""The Deployment controller, as kube-controller-manager's ``deployment-controller``.

A Deployment owns ReplicaSets named ``<deployment>-<pod-template-hash>``; the one whose
template equals the Deployment's (hash label aside) is the *new* one, all others are *old*.
Each sync, in upstream's order: adopt/release ReplicaSets; honour pause (scale only), the
deprecated rollback annotation, and scaling events (proportional scaling across ReplicaSets);
otherwise roll out (RollingUpdate: surge the new up to ``replicas + maxSurge``, scale old down
while ``replicas - maxUnavailable`` stay available; Recreate: old to zero, wait for their pods,
then the new up); prune old ReplicaSets past ``revisionHistoryLimit`` once complete; and write
status with the ``Progressing`` and ``Available`` conditions and upstream's reasons.

The modules follow upstream's files in ``pkg/controller/deployment/``, so the two can be read
side by side:

=================  =========================  ================================================
module             upstream                   what
=================  =========================  ================================================
``controller``     deployment_controller.go   the class, event handlers, syncDeployment
``sync``           sync.go                    new/old ReplicaSets, scaling, cleanup, status
``rolling``        rolling.go                 the RollingUpdate strategy
``recreate``       recreate.go                the Recreate strategy
``rollback``       rollback.go                the deprecated rollback annotation
``progress``       progress.go                the Progressing condition and its deadline
``util``           util/deployment_util.go    pure arithmetic, revisions, conditions
=================  =========================  ================================================

How the controller spans files: upstream's are methods of ``*DeploymentController`` spread over
the package, which Go allows. Here only the class in ``controller`` has state (the
:class:`~reconcilers.controller.Context`, nothing else), so the other modules are functions
that take that context first: ``rolling.rollout_rolling(ctx, d, rs_list)`` reads as upstream's
``dc.rolloutRolling(ctx, d, rsList)``, says at the call which file the code is in, and keeps
the imports one-way (controller -> strategies -> sync/progress -> util). Mixins were the other
choice; they would make every cross-file call go through an MRO that mypy can only check with
each mixin re-declaring what the others provide.

The pod-template-hash (``reconcilers.controllers.podtemplatehash``) stays outside this package:
upstream's ComputeHash lives in pkg/controller's controller_utils.go, and the DaemonSet
controller hashes its template with it too (its ControllerRevisions' names and labels).
"""

from reconcilers.controllers.deployment.controller import DeploymentController

__all__ = ["DeploymentController"]
