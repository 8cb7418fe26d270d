"""The namespace controller, as kube-controller-manager's ``namespace-controller``.

When a namespace is deleted, the apiserver marks it (``deletionTimestamp``, phase
``Terminating``) and keeps it while ``spec.finalizers`` holds the ``kubernetes`` finalizer. This
controller deletes every object in it, of every namespaced resource the apiserver serves
(custom resources included; pods first), reports progress in the namespace's status
conditions, and then removes the ``kubernetes`` finalizer, which lets the apiserver delete the
namespace.

=================  ==================================  ======================================
module             upstream                            what
=================  ==================================  ======================================
``controller``     namespace_controller.go             declarations, requests, the sync
``deleter``        deletion/namespaced_resources_      discovery, deleting the content,
                   deleter.go                          the estimate, finalizing
``conditions``     deletion/status_condition_utils.go  the five deletion conditions
=================  ==================================  ======================================
"""

from reconcilers.controllers.namespace.controller import NamespaceController

__all__ = ["NamespaceController"]
