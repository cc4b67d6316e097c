"""The projection's Cassandra statements: the consistency level and the retry decisions that
let it ride through a node dying (decisions only; the replicated soak tests kill real nodes)."""

from __future__ import annotations

from types import SimpleNamespace

from cassandra import ConsistencyLevel, WriteType
from cassandra.policies import RetryPolicy
from hypothesis import given
from hypothesis import strategies as st

from services.shard_writer.store import (
    CONSISTENCY,
    RETRY_POLICY,
    IdempotentRetryPolicy,
    unlogged_batch,
)

QUORUM = ConsistencyLevel.LOCAL_QUORUM


def _decisions(policy: RetryPolicy, query: object, retry_num: int) -> list[tuple[int, object]]:
    return [
        policy.on_read_timeout(query, QUORUM, 2, 1, False, retry_num),
        policy.on_write_timeout(query, QUORUM, WriteType.SIMPLE, 2, 1, retry_num),
        policy.on_unavailable(query, QUORUM, 2, 1, retry_num),
        policy.on_request_error(query, QUORUM, ConnectionError("reset"), retry_num),
    ]


def test_read_your_writes_needs_quorum_reads_and_writes() -> None:
    assert CONSISTENCY == ConsistencyLevel.LOCAL_QUORUM
    batch = unlogged_batch()
    assert batch.consistency_level == QUORUM and batch.is_idempotent
    assert batch.retry_policy is RETRY_POLICY


@given(st.integers(min_value=0, max_value=2))
def test_idempotent_statements_move_to_the_next_node_at_the_same_level(retry_num: int) -> None:
    idempotent = SimpleNamespace(is_idempotent=True)
    for decision, level in _decisions(IdempotentRetryPolicy(max_retries=3), idempotent,
                                      retry_num):
        assert decision == RetryPolicy.RETRY_NEXT_HOST
        assert level == QUORUM  # never downgraded


@given(st.integers(min_value=0, max_value=5))
def test_others_get_the_driver_defaults_and_retries_are_bounded(retry_num: int) -> None:
    policy = IdempotentRetryPolicy(max_retries=3)
    other = SimpleNamespace(is_idempotent=False)
    assert _decisions(policy, other, retry_num) == _decisions(RetryPolicy(), other, retry_num)
    if retry_num >= 3:
        idempotent = SimpleNamespace(is_idempotent=True)
        assert _decisions(policy, idempotent, retry_num) == _decisions(
            RetryPolicy(), idempotent, retry_num)
