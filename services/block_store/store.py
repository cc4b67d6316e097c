"""Cassandra for the block store: tables, prepared statements, the writes of a batch of blocks.

The tables live in the user projection's keyspace (``settings.cassandra.keyspace``: one
keyspace per network to operate, the gateway already reads it) and are named ``chain_*``; their
keys are described in ``services.block_store.core.rows``. Connection, consistency (LOCAL_QUORUM
on every statement), retries of idempotent statements and concurrent writes are the user
projection's (``services.shard_writer.store`` and ``.projection``).

Idempotence: every row of block ``h`` is written ``USING TIMESTAMP h`` with values that are a
function of the verified chain, so writing a height again (a replay after a crash) writes the
same cells with the same timestamp and changes nothing. The position row is written ``USING
TIMESTAMP`` = the next chain.blocks offset, so a late write of an older position never wins.
Driver errors become ``BlockStoreError``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from cassandra.cluster import Session
from cassandra.query import PreparedStatement

from protocol.errors import OperationError
from protocol.validators import validator_set_to_json
from services.block_store.core import StoredBlock, height_bucket, time_bucket
from services.shard_writer.projection import Row, write_rows
from services.shard_writer.store import (
    CASSANDRA_ERRORS,
    StoreError,
    checked_keyspace,
    create_keyspace_statement,
    prepare_idempotent,
)


class BlockStoreError(OperationError):
    """A Cassandra operation of the block store failed, or the store does not match the chain
    it is asked about; says which and why."""


def create_tables(session: Session, keyspace: str, *, replication_factor: int = 1,
                  datacenter: str = "datacenter1") -> None:
    """Create the keyspace and the block store's tables if missing (idempotent)."""
    ks = checked_keyspace(keyspace)
    statements = [
        create_keyspace_statement(ks, replication_factor=replication_factor,
                                  datacenter=datacenter),
        f"""CREATE TABLE IF NOT EXISTS {ks}.chain_blocks (
            chain text, bucket bigint, height bigint, block_hash blob, record blob,
            kafka_offset bigint, written_at_ms bigint, time_ms bigint, randomness blob,
            status int, random boolean, fresh_sources int, registered_sources int,
            validators_hash blob, PRIMARY KEY ((chain, bucket), height))""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.chain_block_times (
            chain text, bucket bigint, time_ms bigint, height bigint,
            PRIMARY KEY ((chain, bucket), time_ms))""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.chain_time_buckets (
            chain text, bucket bigint, PRIMARY KEY ((chain), bucket))""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.chain_validator_sets (
            chain text, set_hash blob, validators text, PRIMARY KEY ((chain, set_hash)))""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.chain_set_changes (
            chain text, first_height bigint, set_hash blob,
            PRIMARY KEY ((chain), first_height))""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.chain_store_positions (
            chain text PRIMARY KEY, height bigint, next_offset bigint)""",
    ]
    try:
        for statement in statements:
            session.execute(statement, timeout=60)
    except CASSANDRA_ERRORS as exc:
        raise BlockStoreError(f"cannot create the block store's tables in {ks}: {exc}") \
            from exc


@dataclass(frozen=True, slots=True)
class BlockStatements:
    """The prepared statements of the block store (writes and reads)."""

    insert_block: PreparedStatement
    insert_time: PreparedStatement
    insert_time_bucket: PreparedStatement
    insert_set: PreparedStatement
    insert_set_change: PreparedStatement
    save_position: PreparedStatement
    select_position: PreparedStatement
    select_blocks: PreparedStatement
    select_time_bucket: PreparedStatement
    select_time: PreparedStatement
    select_set: PreparedStatement
    select_set_changes: PreparedStatement

    @classmethod
    def prepare(cls, session: Session, keyspace: str) -> BlockStatements:
        """``BlockStoreError`` while the tables do not exist (the projector makes them)."""
        ks = checked_keyspace(keyspace)
        cql = {
            "insert_block": f"INSERT INTO {ks}.chain_blocks (chain, bucket, height, block_hash, "
                            "record, kafka_offset, written_at_ms, time_ms, randomness, status, "
                            "random, fresh_sources, registered_sources, validators_hash) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                            "USING TIMESTAMP ?",
            "insert_time": f"INSERT INTO {ks}.chain_block_times (chain, bucket, time_ms, "
                           "height) VALUES (?, ?, ?, ?) USING TIMESTAMP ?",
            "insert_time_bucket": f"INSERT INTO {ks}.chain_time_buckets (chain, bucket) "
                                  "VALUES (?, ?) USING TIMESTAMP ?",
            "insert_set": f"INSERT INTO {ks}.chain_validator_sets (chain, set_hash, validators) "
                          "VALUES (?, ?, ?) USING TIMESTAMP ?",
            "insert_set_change": f"INSERT INTO {ks}.chain_set_changes (chain, first_height, "
                                 "set_hash) VALUES (?, ?, ?) USING TIMESTAMP ?",
            "save_position": f"UPDATE {ks}.chain_store_positions USING TIMESTAMP ? "
                             "SET height = ?, next_offset = ? WHERE chain = ?",
            "select_position": f"SELECT height, next_offset FROM {ks}.chain_store_positions "
                               "WHERE chain = ?",
            "select_blocks": f"SELECT height, record, kafka_offset, written_at_ms "
                             f"FROM {ks}.chain_blocks WHERE chain = ? AND bucket = ? "
                             "AND height >= ? AND height <= ?",
            "select_time_bucket": f"SELECT bucket FROM {ks}.chain_time_buckets "
                                  "WHERE chain = ? AND bucket >= ? LIMIT 1",
            "select_time": f"SELECT height FROM {ks}.chain_block_times WHERE chain = ? "
                           "AND bucket = ? AND time_ms >= ? LIMIT 1",
            "select_set": f"SELECT validators FROM {ks}.chain_validator_sets "
                          "WHERE chain = ? AND set_hash = ?",
            "select_set_changes": f"SELECT first_height, set_hash FROM {ks}.chain_set_changes "
                                  "WHERE chain = ? AND first_height > ? AND first_height <= ?",
        }
        try:
            return cls(**prepare_idempotent(session, cql, f"the block store's statements "
                                                          f"for {ks}"))
        except StoreError as exc:
            raise BlockStoreError(str(exc)) from exc


def block_writes(statements: BlockStatements, chain: str, block: StoredBlock) -> Iterator[Row]:
    """The statements that store ``block`` of ``chain`` (module doc: stamped with its height)."""
    s, row = statements, block.row
    height = row.height
    yield (s.insert_block, (chain, height_bucket(height), height, row.block_hash, row.record,
                            row.kafka_offset, row.written_at_ms, row.time_ms, row.randomness,
                            row.status, row.random, row.fresh_sources, row.registered_sources,
                            row.validators_hash, height))
    bucket = time_bucket(row.time_ms)
    yield (s.insert_time, (chain, bucket, row.time_ms, height, height))
    yield (s.insert_time_bucket, (chain, bucket, height))
    if block.change is not None:
        validators = block.change.validators
        text = json.dumps(validator_set_to_json(validators), separators=(",", ":"))
        yield (s.insert_set, (chain, validators.hash(), text, height))
        yield (s.insert_set_change, (chain, height, validators.hash(), height))


def write_blocks(session: Session, statements: BlockStatements, chain: str,
                 blocks: Iterable[StoredBlock]) -> int:
    """Write every row of ``blocks``, concurrently, and wait for all (each statement on its
    own: rows of one block go to different partitions, and records are too large to batch);
    returns the statements written."""
    try:
        return write_rows(session, ([row] for block in blocks
                                    for row in block_writes(statements, chain, block)))
    except StoreError as exc:
        raise BlockStoreError(f"block store write failed: {exc}") from exc


def save_position(session: Session, statements: BlockStatements, chain: str, height: int,
                  next_offset: int) -> None:
    """Record that every block up to ``height`` is stored and chain.blocks is read up to
    ``next_offset``: written after the rows it covers."""
    try:
        session.execute(statements.save_position, (next_offset, height, next_offset, chain))
    except CASSANDRA_ERRORS as exc:
        raise BlockStoreError(f"cannot save the block store's position: {exc}") from exc
