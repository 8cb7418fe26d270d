"""kube-controller-manager's persistentvolume binder (``persistentvolume-binder-controller``).

Split as upstream's ``pkg/controller/volume/persistentvolume``: :mod:`.controller` (declarations
and event handlers, ``pv_controller_base.go``), :mod:`.sync` (the claim and volume syncs, binding,
reclaiming, handing claims to provisioners: ``pv_controller.go``), :mod:`.matching` (which volume
fits a claim: ``index.go`` and component-helpers' ``pv_helpers.go``), :mod:`.store` (the cache
overlaid with the binder's own writes) and :mod:`.pods` (the pods a delayed claim waits for).

Where kubus differs: it has no in-tree volume plugins, so every StorageClass provisioner that is
not ``kubernetes.io/…`` is external (as upstream treats them) and the in-tree ones fail with
upstream's ``no volume plugin matched`` event; a Recycle policy fails as upstream's does
without a recycler, and a Delete policy on a volume no external provisioner made fails as
upstream's does without a deleter. The recycler, hostPath-provisioner and flex-volume flags
are therefore not offered. CSI migration annotations are not written: no in-tree plugin is
migrated here. The controller is global (one leader per pool with the full cache of claims,
volumes and classes), as kcm's binder has a single claim worker and a single volume worker.
"""

from reconcilers.controllers.persistentvolume.controller import PersistentVolumeBinderController

__all__ = ["PersistentVolumeBinderController"]
