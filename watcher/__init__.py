"""The watcher service: apiserver watch streams into JetStream subjects (issue 3)."""
