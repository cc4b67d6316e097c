"""Benchmark: how fast ``qustream audit`` re-verifies a chain, and rebuilds + diffs the users.

Input, made here: a chain of ``--blocks`` blocks finalized by 4 ML-DSA-65 validators (every
certificate carries 4 signatures, every block after the first also the previous certificate),
two entropy references and one signed transfer per block, built by ``sdk.testing.make_local_chain``
(the pure core, encoded as the tally would); and ``--users`` x ``--events-per-user`` user events.

- ``blocks_per_s``: ``replay.audit_chain`` over the encoded records (decode, hash links,
  randomness derivation, transactions, certificate against the set recomputed from the ledger,
  re-execution, state hash). Reading comes from memory, so the figure is the verifier's cost.
  Signatures are verified on ``--workers`` processes ahead of re-execution (default: one per
  core beyond the first), as ``qustream audit`` does; ``--workers 0`` measures one core.
- baseline: raw ML-DSA-65 verification of the same certificates' signatures and nothing else,
  on one core; ``ratio`` = ours / baseline. Ours does more (every transaction signature too,
  and the re-execution) but on all cores, so the ratio can exceed 1 on a larger machine.
- ``user_events_per_s``: ``replay.audit_users`` — decode the events, check the log, rebuild
  the projection into a fresh keyspace, scan both keyspaces and diff every row — on the
  configured Cassandra, against a live keyspace projected beforehand;
  ``user_events_per_s_in_memory``: the same with the in-memory rebuild of offline audits.

    python -m bench.audit [--blocks 1500] [--workers N] [--users 400] [--events-per-user 20]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import emit
from protocol.chain import ChainState
from protocol.commit import CommitCertificate
from protocol.keys import Algorithm, PublicKey, SigningKey
from protocol.messages import VoteType, vote_sign_bytes
from sdk.testing import make_local_chain
from services.audit.core.findings import AuditReport
from services.audit.replay import AuditOptions, audit_chain, audit_users, rebuild_projection
from services.audit.sources import LogRecord, MemorySource
from services.ledger.core import Transfer, encode_signed_tx, sign_tx
from streams.chain_wire import decode_finalized
from streams.settings import load_settings
from streams.signature_pool import default_workers

CHAIN_ID = "bench-audit"


def make_chain(directory: Path, heights: int
               ) -> tuple[Path, list[bytes], list[CommitCertificate], dict[bytes, PublicKey]]:
    """A genesis file and ``heights`` encoded ``BlockFinalized`` records (see module doc)."""

    def transfer(height: int, chain: ChainState, accounts: tuple[SigningKey, ...]  # type: ignore[type-arg]
                 ) -> tuple[bytes, ...]:
        to = chain.validators.validators[0].address
        return (encode_signed_tx(sign_tx(accounts[0], CHAIN_ID, height - 1, 10_000,
                                         Transfer(to, 1))),)

    chain = make_local_chain(directory, heights, accounts=1, sources=2, chain_id=CHAIN_ID,
                             algorithm=Algorithm.ML_DSA_65, txs=transfer)
    commits = [decode_finalized(record).commit for record in chain.records]
    return (chain.genesis, list(chain.records), commits,
            {key.address: key.public_key for key in chain.validator_keys})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--blocks", type=int, default=1500)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--events-per-user", type=int, default=20)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        genesis, records, commits, public_keys = make_chain(Path(tmp), args.blocks)
        print(f"built {args.blocks} blocks with 4 ML-DSA-65 validators in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        source = MemorySource({"chain.blocks": [
            LogRecord("chain.blocks", 0, i, 0, None, r) for i, r in enumerate(records)]})
        started = time.perf_counter()
        _, auditor = audit_chain(source, AuditOptions(genesis, workers=args.workers))
        chain_s = time.perf_counter() - started
        assert not auditor.findings and auditor.applied_height == args.blocks, auditor.findings
        blocks_per_s = args.blocks / chain_s
        print(f"ours: audited {args.blocks} blocks in {chain_s:.2f} s = {blocks_per_s:,.0f} "
              f"blocks/s ({auditor.counts.get('signature_checks', 0)} signatures)", flush=True)

    # baseline: the same certificates' signatures, verified raw with their public keys
    started = time.perf_counter()
    for commit in commits:
        for sig in commit.signatures:
            message = vote_sign_bytes(CHAIN_ID, VoteType.PRECOMMIT, commit.height, 0,
                                      commit.block_hash, sig.validator_address)
            assert public_keys[sig.validator_address].verify(message, sig.signature)
    baseline_s = time.perf_counter() - started
    baseline = len(commits) / baseline_s
    print(f"baseline: raw verification of the same {4 * len(commits)} signatures: "
          f"{baseline:,.0f} blocks/s", flush=True)

    users = _users(args.users, args.events_per_user)
    emit({"bench": "audit", "blocks_per_s": round(blocks_per_s),
          "user_events_per_s": round(users["cassandra"]),
          "user_events_per_s_in_memory": round(users["memory"]), "unit": "blocks/s",
          "ours": round(blocks_per_s), "baseline": round(baseline),
          "ratio": round(blocks_per_s / baseline, 3), "blocks": args.blocks,
          "validators": 4, "algorithm": "ml-dsa-65", "workers": default_workers()
          if args.workers is None else args.workers, "load_avg_1m": round(os.getloadavg()[0], 2),
          "user_events": args.users * args.events_per_user})


def _users(users: int, per_user: int) -> dict[str, float]:
    from bench.shard_writer import make_events
    from services.shard_writer.core import event_to_record
    from streams.codec import default_codec

    settings = load_settings()
    events = make_events(users, per_user, 300)
    codec = default_codec()
    encoded = [LogRecord("users.events", hash(e.user_id) % 12, i, 0, e.user_id.encode(),
                         codec.encode("UserEventRecorded", event_to_record(e)))
               for i, e in enumerate(events)]
    live = f"bench_live_{uuid.uuid4().hex[:8]}"
    from services.shard_writer.consistency import LoggedEvent

    logged = [LoggedEvent(r.partition, r.offset, e) for r, e in zip(encoded, events, strict=True)]
    rebuild_projection(settings, logged, keep=True, keyspace=live)
    live_settings = settings.model_copy(deep=True)
    live_settings.cassandra.keyspace = live
    from services.audit.replay import live_projection_rows
    from services.shard_writer.store import connect, drop_keyspace

    rates: dict[str, float] = {}
    try:
        for rebuild in ("cassandra", "memory"):
            report = AuditReport()
            started = time.perf_counter()
            audit_users(MemorySource({"users.events": encoded}), settings,
                        lambda: live_projection_rows(live_settings), report, rebuild=rebuild)
            seconds = time.perf_counter() - started
            assert report.ok and report.checked["user_rows_records"], report.failures[:3]
            rates[rebuild] = len(events) / seconds
            print(f"users ({rebuild} rebuild): {len(events)} events decoded, rebuilt, "
                  f"scanned and diffed in {seconds:.2f} s = {rates[rebuild]:,.0f} events/s",
                  flush=True)
    finally:
        cluster, session = connect(settings)
        drop_keyspace(session, live)
        cluster.shutdown()
    return rates


if __name__ == "__main__":
    main()
