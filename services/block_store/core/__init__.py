"""The block store's pure core: what is stored for a verified block, and the checks a reader
runs on what it reads back (no Kafka, Cassandra or Avro here; an import-linter contract keeps
it so). The shells are ``services.block_store.store`` (tables), ``.projector`` (the writer) and
``services.gateway.store_archive`` (the gateway's reader)."""

from __future__ import annotations

from services.block_store.core.checks import SetHistory, certified, first_at_or_after, linked
from services.block_store.core.rows import (
    HEIGHTS_PER_PARTITION,
    TIME_BUCKET_MS,
    BlockRow,
    SetChange,
    StoredBlock,
    chain_key,
    height_bucket,
    height_buckets,
    stored_block,
    time_bucket,
)

__all__ = [
    "HEIGHTS_PER_PARTITION",
    "TIME_BUCKET_MS",
    "BlockRow",
    "SetChange",
    "SetHistory",
    "StoredBlock",
    "certified",
    "chain_key",
    "first_at_or_after",
    "height_bucket",
    "height_buckets",
    "linked",
    "stored_block",
    "time_bucket",
]
