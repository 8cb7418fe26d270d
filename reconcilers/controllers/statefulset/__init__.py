"""The StatefulSet controller, as kube-controller-manager's ``statefulset-controller``.

A StatefulSet owns pods named ``<set>-<ordinal>`` for ordinals ``spec.ordinals.start`` up to
``start + replicas - 1``, each labelled with its name (``statefulset.kubernetes.io/pod-name``),
its index (``apps.kubernetes.io/pod-index``) and its revision (``controller-revision-hash``),
with ``hostname`` = its name and ``subdomain`` = ``serviceName``, and a claim per
``volumeClaimTemplates`` entry (``<template>-<set>-<ordinal>``, created before the pod and
never deleted by this controller: the retention policy only sets their owner references, so
the garbage collector deletes them). ``OrderedReady`` creates in order and deletes in reverse,
one pod at a time, each waiting for its predecessors to be Running, Ready and available;
``Parallel`` does it all at once. Templates are recorded as ControllerRevisions
(:mod:`reconcilers.controllers.history`); ``RollingUpdate`` replaces pods highest ordinal
first down to the ``partition``, ``OnDelete`` leaves that to the user.

=================  ============================  ==============================================
module             upstream                      what
=================  ============================  ==============================================
``controller``     stateful_set.go               the class, event handlers, sync, adoption,
                                                 the status write (status_updater.go)
``control``        stateful_set_control.go       revisions, the update algorithm, history trim
``pods``           stateful_pod_control.go       pod and claim writes, their events
``utils``          stateful_set_utils.go         identity, ordinals, storage, retention, status
``consistency``    util/consistency              waiting for the cache to show our writes
=================  ============================  ==============================================
"""

from reconcilers.controllers.statefulset.controller import StatefulSetController

__all__ = ["StatefulSetController"]
