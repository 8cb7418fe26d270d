"""In-cluster deployment: manifests generated from what the components declare."""
