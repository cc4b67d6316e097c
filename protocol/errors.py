"""The root of every error QuStream raises on purpose.

Every package (protocol, streams, the services, the SDK, the embedded cluster) derives its
errors from ``QuStreamError``, so a caller can catch "anything QuStream refused" in one place and
the CLI can turn any of them into one clear line. Errors about bad input also derive from
``ValueError`` (as ``InputError``), errors about the environment from ``RuntimeError`` (as
``OperationError``), so code written against the builtin types keeps working. Decide on error
*types*, never on their text.
"""

from __future__ import annotations


class QuStreamError(Exception):
    """Base of every error QuStream raises on purpose."""


class InputError(QuStreamError, ValueError):
    """Some input (bytes, a file, a parameter, a message) is not acceptable; says which and why."""


class OperationError(QuStreamError, RuntimeError):
    """Something outside the input failed (a server, a file system, a process); says what."""
