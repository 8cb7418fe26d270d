"""kube-controller-manager's service-account controllers: ``serviceaccount-controller``
(a ``default`` ServiceAccount per namespace) and ``serviceaccount-token-controller`` (legacy
token Secrets)."""
