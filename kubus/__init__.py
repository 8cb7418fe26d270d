"""kubus: the Kubernetes controller manager as event-sourced controllers on NATS JetStream.

This package holds what the services share outside the bus: the ``kubus`` command line and the
local development stack. The services themselves live in ``bus``, ``watcher`` and
``reconcilers``.
"""

__all__: list[str] = []
