"""Reconciler pools: partition ownership, caches, workqueues and controllers (issue 4)."""
