"""Deployment and development infrastructure: the embedded local cluster, Helm chart, compose."""
