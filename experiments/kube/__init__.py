"""Kubernetes with Chaos Mesh: manifests, the API conversation, node and GPU faults, safety."""
