"""kube-controller-manager's ``job-controller``: the sync (:mod:`.controller`), pod management
(:mod:`.manage`), finished-pod accounting through the tracking finalizer (:mod:`.tracking`),
Indexed Jobs (:mod:`.indexed`), the pod failure backoff (:mod:`.backoff`), the pod failure
policy (:mod:`.pod_failure_policy`) and the success policy (:mod:`.success_policy`)."""

from reconcilers.controllers.job.controller import JobController

__all__ = ["JobController"]
