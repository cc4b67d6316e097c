"""Claimed key payments in Cassandra, shared by every gateway (``payments.SpentPayments``).

One row per claimed payment, partition key (payer address, nonce). A claim is a lightweight
transaction, ``INSERT ... IF NOT EXISTS`` at SERIAL consistency (Paxos among the replicas of
that partition, committed at QUORUM): of any number of concurrent claims of one payment, from
any number of gateways, exactly one reads ``[applied] = true``. A release is the conditional
``DELETE ... IF claimant = ?``, so a gateway only ever gives back its own claim. Rows are kept
(the table grows by one small row per key delivered); nothing ever updates them.

A driver error or timeout on the claim raises ``SpentStoreError`` and the request answers 503:
with an LWT whose outcome is unknown, the payment may or may not be claimed, so nothing is
delivered (at most once). The client's retry then reads the claim's real state.
"""

from __future__ import annotations

import re
import time
from typing import Any

from protocol.errors import OperationError

_KEYSPACE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


class SpentStoreError(OperationError):
    """The claim store cannot answer now (Cassandra unavailable, LWT timeout)."""


class CassandraSpentPayments:
    TABLE = "key_payments_claimed"

    def __init__(self, session: Any, keyspace: str, *, replication_factor: int = 1,
                 datacenter: str = "datacenter1") -> None:
        from cassandra import ConsistencyLevel, DriverException

        if not _KEYSPACE_NAME.match(keyspace):
            raise SpentStoreError(f"bad keyspace name {keyspace!r} (lowercase letters, digits, _)")
        ks = keyspace
        self.session = session
        try:
            session.execute(
                f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {{'class': "
                f"'NetworkTopologyStrategy', '{datacenter}': {int(replication_factor)}}}",
                timeout=60)
            session.execute(
                f"CREATE TABLE IF NOT EXISTS {ks}.{self.TABLE} (sender blob, nonce bigint, "
                "tx_hash blob, claimant text, claimed_at_ms bigint, "
                "PRIMARY KEY ((sender, nonce)))", timeout=60)
            self._claim = session.prepare(
                f"INSERT INTO {ks}.{self.TABLE} (sender, nonce, tx_hash, claimant, "
                "claimed_at_ms) VALUES (?, ?, ?, ?, ?) IF NOT EXISTS")
            self._release = session.prepare(
                f"DELETE FROM {ks}.{self.TABLE} WHERE sender = ? AND nonce = ? "
                "IF claimant = ?")
        except DriverException as exc:
            raise SpentStoreError(f"cannot prepare the key payment claims in {ks}: {exc}") \
                from exc
        for statement in (self._claim, self._release):
            statement.consistency_level = ConsistencyLevel.QUORUM
            statement.serial_consistency_level = ConsistencyLevel.SERIAL
        self._errors: tuple[type[BaseException], ...] = (DriverException, OSError)

    def claim(self, sender: bytes, nonce: int, tx_hash: bytes, claimant: str) -> bool:
        try:
            row = self.session.execute(self._claim, (sender, nonce, tx_hash, claimant,
                                                     int(time.time() * 1000))).one()
        except self._errors as exc:
            raise SpentStoreError(f"claiming payment {sender.hex()}#{nonce}: "
                                  f"{type(exc).__name__}: {exc}") from exc
        return bool(row is not None and row[0])

    def release(self, sender: bytes, nonce: int, claimant: str) -> None:
        try:
            self.session.execute(self._release, (sender, nonce, claimant))
        except self._errors as exc:
            raise SpentStoreError(f"releasing payment {sender.hex()}#{nonce}: "
                                  f"{type(exc).__name__}: {exc}") from exc
