"""One module per controller, each faithful to its kube-controller-manager counterpart."""
