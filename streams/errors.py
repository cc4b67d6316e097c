"""The errors of the Kafka edge: what a client failure means for the caller, as a type.

``streams.kafka`` is the only module that sees the client library's errors; it translates every
one of them into one of these (``raise ... from exc``, the original stays the ``__cause__``).
The translation reads the library's flags (``fatal``, ``txn_requires_abort``, ``retriable``) and
error codes, never message text, and callers decide on these types the same way:

- ``RetriableKafkaError``: transient (a leader election, a coordinator moving, a timeout, the
  broker out of reach for now); the same call may succeed later. ``KafkaUnreachableError``:
  a new client got no answer at all within the connect timeout (the factories give up rather
  than let the library retry forever).
- ``AbortableTransactionError``: the open transaction cannot commit; abort it, rewind the
  inputs, and run the batch again (``streams.transactions``).
- ``FatalKafkaError``: this client can do nothing more; ``FencedError`` when another instance
  with the same ``transactional.id`` or ``group.instance.id`` took over (this one is a zombie).
- ``ProducerQueueFullError``: the local produce queue is full; serve delivery reports
  (``poll``) and produce again.
- ``DeliveryError``: the cluster did not acknowledge a produced message.

Each class has a stable ``code`` (also used as the dead-letter error type, see ``streams.dlq``);
an instance carries the library's error name (``kafka_error``, e.g. ``NOT_LEADER_FOR_PARTITION``)
for logs and metrics.
"""

from __future__ import annotations

from typing import ClassVar

from protocol.errors import OperationError


class KafkaOperationError(OperationError):
    """A Kafka operation failed; the message says which and why."""

    code: ClassVar[str] = "kafka_error"

    def __init__(self, message: str, *, kafka_error: str | None = None) -> None:
        super().__init__(message)
        self.kafka_error = kafka_error


class RetriableKafkaError(KafkaOperationError):
    """Transient: the same operation may succeed if tried again later."""

    code = "kafka_retriable"


class KafkaTimeoutError(RetriableKafkaError):
    """The operation did not complete within its timeout (the broker may be out of reach)."""

    code = "kafka_timeout"


class KafkaUnreachableError(KafkaTimeoutError):
    """A new client got no answer from the cluster within ``connect_timeout_s``; the message
    names the address and the setting that chose it."""

    code = "kafka_unreachable"


class AbortableTransactionError(KafkaOperationError):
    """The open transaction must be aborted; its batch can then be run again."""

    code = "transaction_abortable"


class FatalKafkaError(KafkaOperationError):
    """The client cannot continue; the process (or at least this client) must be recreated."""

    code = "kafka_fatal"


class FencedError(FatalKafkaError):
    """Another instance with the same transactional or static group id took over: this one is
    a zombie and must stop writing."""

    code = "fenced"


class ProducerQueueFullError(RetriableKafkaError):
    """The producer's local queue is full: serve delivery reports, then produce again."""

    code = "producer_queue_full"


class ClientStuckError(KafkaOperationError):
    """A client call did not return within its deadline; the client object must be replaced.

    librdkafka's ``send_offsets_to_transaction`` can wait for a dead group coordinator forever,
    ignoring its own timeout (librdkafka issues 5456 and 5511, open in 2.16)."""

    code = "client_stuck"


class DeliveryError(KafkaOperationError):
    """A produced message was not acknowledged by the cluster."""

    code = "delivery_failed"
