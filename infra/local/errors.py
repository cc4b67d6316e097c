"""Typed errors of the embedded cluster; the CLI prints their message, tests fail with it."""

from __future__ import annotations

from protocol.errors import OperationError


class InfraError(OperationError):
    """The embedded Kafka or Cassandra could not be prepared, started, stopped or reached."""


class JavaNotFoundError(InfraError):
    """No Java 17 runtime was found (Cassandra 5.0 and Kafka 4 both need 17)."""


class MavenNotFoundError(InfraError):
    """Maven is missing, so the server jars cannot be resolved from Maven Central."""


class JarResolutionError(InfraError):
    """Maven ran but could not resolve the server jars."""


class PortInUseError(InfraError):
    """A port the embedded cluster needs answers, but not from a process this state dir owns."""


class StartError(InfraError):
    """A server process exited or did not become ready in time."""
