"""The embedded development cluster: Kafka and Cassandra from Maven Central as JVM processes."""

from __future__ import annotations

from infra.local.cluster import STATE_HELP, ComponentStatus, LocalCluster
from infra.local.errors import (
    InfraError,
    JarResolutionError,
    JavaNotFoundError,
    MavenNotFoundError,
    PortInUseError,
    StartError,
)

__all__ = [
    "STATE_HELP",
    "ComponentStatus",
    "InfraError",
    "JarResolutionError",
    "JavaNotFoundError",
    "LocalCluster",
    "MavenNotFoundError",
    "PortInUseError",
    "StartError",
]
