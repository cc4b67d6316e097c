"""The audit run: read each topic from a ``LogSource``, feed the pure auditors, collect a report.

Order (each step needs the one before):

0. ``chain.snapshots``: the complete snapshots, compared while step 1 folds the chain with the
   snapshot the audit itself would write at their height (``core.snapshots``).
1. ``chain.blocks`` -> ``ChainAuditor`` (hash links, certificates, randomness, transactions,
   evidence, re-execution and state hashes). Its final ledger state gives the QRNG registry and
   who is tombstoned; its per-height validator sets serve step 2.
2. ``chain.consensus`` -> ``EquivocationScanner``: every proven double vote is accounted for.
3. ``entropy.raw`` -> ``EntropyAuditor`` with the registry of genesis and of the final state;
   then every entropy reference of every applied block is matched against verified chunks.
4. ``ledger.tx``: every submission decodes with a valid signature (else a warning); included
   transactions never seen there are noted (retention may have removed them).
5. ``users.events``: the live projection is read first (``live_projection``: positions, then
   rows), then the log; the log's own consistency (``consistency.check_log``), then the
   projection rebuilt into a fresh keyspace (``rebuild_projection``) and diffed row by row with
   the live one, for every user the live one had fully applied (``core.rows``).

Nothing here writes to Kafka; the only write anywhere is the throw-away audit keyspace, dropped
at the end unless ``keep_rebuild``.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.codec import WireError, decode_block, decode_commit
from protocol.commit import CommitFlag, record_sign_bytes
from protocol.keys import PublicKey, SignatureCheck, default_signature_check
from protocol.messages import Vote
from protocol.validators import ValidatorSet
from services.audit.core.chain import AppliedBlock, BlockInput, ChainAuditor
from services.audit.core.entropy import EntropyAuditor
from services.audit.core.equivocation import EquivocationScanner
from services.audit.core.findings import AuditReport, Finding, Severity
from services.audit.core.rows import (
    LiveProjection,
    Tables,
    diff_tables,
    unsettled_users,
    without_users,
)
from services.audit.core.snapshots import SnapshotAuditor
from services.audit.sources import LogRecord, LogSource
from services.ledger.core import LedgerApp
from services.ledger.core.chain_spec import ChainSpec, source_registry
from services.ledger.core.errors import LedgerError
from services.ledger.core.tx import decode_signed_tx
from streams.chain_wire import assemble_snapshots, decode_consensus, decode_snapshot_chunk
from streams.codec import CodecError, default_codec
from streams.kafka import compacted
from streams.settings import Settings
from streams.signature_pool import SignaturePool

TABLE_KEYS = {"users": ("user_id",), "records": ("user_id", "record_id"),
              "devices": ("user_id", "device_id")}

Progress = Callable[[str, int | None], Callable[[int], None]]  # (topic, total) -> advance


def no_progress(topic: str, total: int | None) -> Callable[[int], None]:
    return lambda n: None


@dataclass(frozen=True, slots=True)
class AuditOptions:
    genesis: Path
    from_height: int = 1
    to_height: int | None = None
    at_time_ms: int | None = None
    users: bool = True
    keep_rebuild: bool = False
    # Where to rebuild the user projection: "cassandra" (a fresh keyspace, the shard_writer's
    # own writes), "memory" (``core.projection``: no Cassandra needed), or "auto": memory for
    # an export (an offline auditor may have no Cassandra), Cassandra otherwise.
    rebuild: str = "auto"
    check: SignatureCheck = default_signature_check
    workers: int | None = None  # signature-verifying processes; None: one per spare core


def decode_block_record(record: LogRecord) -> BlockInput:
    """A ``BlockFinalized`` record as the chain auditor wants it (decoding errors included)."""
    try:
        _, fields = default_codec().decode(record.value, "BlockFinalized")
        block = decode_block(fields["block"])
        commit = decode_commit(fields["commit"])
    except (CodecError, WireError, KeyError) as exc:
        return BlockInput(record.offset, None, None, error=str(exc))
    claimed = {k: fields[k] for k in ("height", "block_hash", "randomness", "round", "chain_id")}
    return BlockInput(record.offset, block, commit, fields["state_hash"], claimed,
                      record.timestamp_ms)


def audit_chain(
    source: LogSource, options: AuditOptions, progress: Progress = no_progress,
    on_block: Callable[[AppliedBlock], None] | None = None,
    pool: SignaturePool | None = None,
) -> tuple[ChainSpec, ChainAuditor]:
    """Step 1 of the module doc; stops reading once the auditor is done (halt or range end).

    Records are decoded ``LOOKAHEAD`` blocks ahead of re-execution, and the signatures they
    carry go to a ``SignaturePool`` meanwhile: ``pool`` if given (start it before any other
    thread, see ``signatures``), else one of ``options.workers`` processes; 0 verifies inline,
    and so does a custom ``options.check``."""
    spec = ChainSpec.load(options.genesis)
    if options.check is not default_signature_check:
        pool = SignaturePool(0)
    with contextlib.nullcontext(pool) if pool is not None else SignaturePool(
            options.workers) as pool:
        check = pool.check if pool.active else options.check
        app = LedgerApp(signature_check=pool.check) if pool.active else spec.app
        auditor = ChainAuditor(spec.initial, app, check, options.from_height,
                               options.to_height, options.at_time_ms)
        advance = progress("chain.blocks", source.size("chain.blocks"))
        keys = _KnownKeys()
        window: deque[BlockInput] = deque()

        def step(item: BlockInput) -> bool:
            applied = auditor.feed(item)
            advance(1)
            if applied is not None:
                if on_block is not None:
                    on_block(applied)
                if applied.height % LOOKAHEAD == 0:
                    pool.forget_before(applied.height)
            return not auditor.done()

        going = True
        for record in source.read("chain.blocks"):
            item = decode_block_record(record)
            if pool.active:
                keys.learn(auditor.chain.validators, auditor.chain.next_validators)
                pool.expect(_signatures(spec.chain_id, item, keys, options.from_height),
                            tag=item.block.height if item.block is not None else 0)
            window.append(item)
            if len(window) > LOOKAHEAD and not step(window.popleft()):
                going = False
                break
        pool.flush()
        while going and window:
            going = step(window.popleft())
        if pool.prefetched or pool.stolen:
            auditor.counts["signatures_verified_ahead"] = pool.prefetched + pool.stolen
    return spec, auditor


LOOKAHEAD = 64  # records decoded ahead of re-execution (their signatures verified meanwhile)


class _KnownKeys:
    """Address -> public key of every validator seen in a set so far (addresses are key
    hashes, so an address never changes key)."""

    def __init__(self) -> None:
        self.by_address: dict[bytes, PublicKey] = {}
        self._last: tuple[ValidatorSet, ...] = ()

    def learn(self, *sets: ValidatorSet) -> None:
        if len(sets) == len(self._last) and all(a is b for a, b in zip(sets, self._last,
                                                                        strict=True)):
            return  # the same set objects as for the previous record
        self._last = sets
        for validator_set in sets:
            self.by_address.update((v.address, v.public_key) for v in validator_set.validators)


def _signatures(chain_id: str, item: BlockInput, keys: _KnownKeys, verify_from: int
                ) -> list[tuple[PublicKey, bytes, bytes]]:
    """The (key, message, signature) triples the auditor will ask about for this record: its
    certificate's (keys guessed from the sets known now) and its transactions'."""
    block, commit = item.block, item.commit
    if block is None or commit is None:
        return []
    triples: list[tuple[PublicKey, bytes, bytes]] = []
    if block.height >= verify_from and commit.block_hash == block.hash:
        for record in commit.signatures:
            key = keys.by_address.get(record.validator_address)
            if record.flag is not CommitFlag.ABSENT and key is not None:
                triples.append((key, record_sign_bytes(chain_id, commit, record),
                                record.signature))
    for tx in block.body.txs:
        try:
            signed = decode_signed_tx(tx)
        except LedgerError:
            continue
        triples.append((signed.tx.sender, signed.tx.sign_bytes(), signed.signature))
    return triples


def _consensus(source: LogSource, chain_id: str, progress: Progress, report: AuditReport
               ) -> EquivocationScanner:
    scanner = EquivocationScanner()
    codec = default_codec()
    advance = progress("chain.consensus", source.size("chain.consensus"))
    undecodable = 0
    for record in source.read("chain.consensus"):
        advance(1)
        try:
            message = decode_consensus(record.value, chain_id, codec)
        except WireError:
            undecodable += 1
            continue
        if isinstance(message, Vote):
            scanner.feed_vote(message, record.offset)
        else:
            scanner.proposals += 1
    if undecodable:
        report.add(Finding("consensus_record", f"{undecodable} records on chain.consensus do "
                           "not decode (ignored: the topic is not trusted)", "chain.consensus",
                           severity=Severity.WARNING))
    return scanner


def _entropy(source: LogSource, registry: Any, progress: Progress) -> EntropyAuditor:
    auditor = EntropyAuditor(registry)
    codec = default_codec()
    advance = progress("entropy.raw", source.size("entropy.raw"))
    for record in source.read("entropy.raw"):
        advance(1)
        try:
            schema, fields = codec.decode(record.value)
        except CodecError as exc:
            auditor.warnings.append(Finding("entropy_record", f"undecodable: {exc}",
                                            "entropy.raw", record.offset, record.partition,
                                            None, Severity.WARNING))
            continue
        auditor.feed(schema, fields, record.partition, record.offset)
    return auditor


def _ledger_tx(source: LogSource, included: Iterable[bytes], progress: Progress,
               report: AuditReport) -> None:
    from services.ledger.submit import SubmissionError, decode_submitted

    submitted: set[bytes] = set()
    advance = progress("ledger.tx", source.size("ledger.tx"))
    for record in source.read("ledger.tx"):
        advance(1)
        try:
            submitted.add(decode_submitted(record.value).hash)
        except SubmissionError as exc:
            report.add(Finding("ledger_tx_record", f"rejected submission: {exc}", "ledger.tx",
                               record.offset, record.partition, None, Severity.WARNING))
    report.checked["ledger_tx_submissions"] = len(submitted)
    unseen = [h for h in included if h not in submitted]
    if unseen:
        report.notes.append(f"{len(unseen)} included transactions are no longer on ledger.tx "
                            "(retention); they were checked by re-execution only")


def run_audit(
    source: LogSource,
    options: AuditOptions,
    *,
    settings: Settings | None = None,
    live_rows: Callable[[], LiveProjection | Tables | None] | None = None,
    progress: Progress = no_progress,
    pool: SignaturePool | None = None,
) -> AuditReport:
    """The whole audit (module doc). ``settings`` gives the Cassandra to rebuild the projection
    in; ``live_rows`` returns the live projection (its rows alone: positions not known; None:
    not available); ``pool`` verifies the chain's signatures (``audit_chain``)."""
    started = time.monotonic()
    report = AuditReport()
    report.facts["source"] = source.describe()
    snapshots, incomplete = _snapshot_auditor(source, options)
    spec, chain = audit_chain(source, options, progress, pool=pool,
                              on_block=lambda applied: snapshots.applied(applied.height,
                                                                         applied.chain))
    report.extend(chain.findings)
    report.extend(snapshots.findings)
    report.checked["snapshots_verified"] = snapshots.verified
    report.notes.extend(snapshots.finish(chain.applied_height, incomplete))
    for name, count in chain.counts.items():
        report.checked[f"chain_{name}"] = count
    head = chain.chain
    report.facts.update({
        "chain_id": spec.chain_id, "head_height": chain.applied_height,
        "head_block_hash": head.tip.previous_block_hash.hex(),
        "head_randomness": head.tip.previous_randomness.hex(),
        "state_hash": head.tip.app_hash.hex(), "halted_at": chain.halted_at,
        "records_not_verified": chain.unverified,
    })
    if pool is not None:
        report.facts["signature_workers"] = f"{pool.workers} ({pool.start_method or 'inline'})"
    if chain.halted_at is not None and chain.unverified:
        report.notes.append(f"chain verification stopped at height {chain.halted_at}; "
                            f"{chain.unverified} later records were not verified")

    final_state = head.app_state
    scanner = _consensus(source, spec.chain_id, progress, report)
    _, equivocation = scanner.resolve(
        spec.chain_id, chain.validator_sets, chain.evidence_included,
        lambda who: bool(getattr(final_state.validators.get(who), "tombstoned", False)),
        chain.applied_height)
    report.extend(equivocation)
    report.checked["consensus_votes"] = scanner.votes
    report.checked["consensus_proposals"] = scanner.proposals
    report.checked["double_votes_found"] = len(scanner.candidates)

    registry = {**source_registry(spec.initial.app_state), **source_registry(final_state)}
    entropy = _entropy(source, registry, progress)
    failures, by_commitment = entropy.match(chain.entropy_refs)
    report.extend(failures)
    report.extend(entropy.warnings[:100])
    if len(entropy.warnings) > 100:
        report.notes.append(f"{len(entropy.warnings) - 100} more entropy.raw warnings omitted")
    report.checked["entropy_records"] = entropy.counts.get("records", 0)
    report.checked["entropy_checkpoints_verified"] = entropy.counts.get("checkpoints", 0)
    report.checked["entropy_refs_checked"] = entropy.counts.get("refs_checked", 0)
    report.facts["heights_checked_by_commitment_only"] = _ranges(by_commitment)
    if by_commitment:
        report.notes.append(f"{len(by_commitment)} heights reference chunks no longer on "
                            f"entropy.raw; their entropy was checked by commitment only: "
                            f"{_ranges(by_commitment)}")

    _ledger_tx(source, chain.included_txs(), progress, report)

    if options.users:
        rebuild = options.rebuild
        if rebuild == "auto":
            rebuild = "memory" if getattr(source, "offline", False) else "cassandra"
        audit_users(source, settings, live_rows, report, progress, keep=options.keep_rebuild,
                    rebuild=rebuild)
    else:
        report.notes.append("user database not audited (--no-users)")
    report.facts["seconds"] = round(time.monotonic() - started, 3)
    return report


def _snapshot_auditor(source: LogSource, options: AuditOptions
                      ) -> tuple[SnapshotAuditor, int]:
    """Step 0 of the module doc: the snapshots on ``chain.snapshots`` (the latest record of
    each key, as compaction keeps it), to be compared while the chain is folded; and how many
    are incomplete."""
    spec = ChainSpec.load(options.genesis)
    chunks = []
    for record in compacted(source.read("chain.snapshots")):
        with contextlib.suppress(WireError):
            chunks.append(decode_snapshot_chunk(record.value))
    complete = assemble_snapshots(chunks, spec.chain_id)
    groups = {(c.height, c.snapshot_hash) for c in chunks if c.chain_id == spec.chain_id}
    return (SnapshotAuditor.start(spec.initial, spec.app, spec.app, complete),
            len(groups) - len(complete))


def _ranges(heights: list[int]) -> list[str]:
    out: list[str] = []
    for height in heights:
        if out and int(out[-1].split("-")[-1]) == height - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{height}"
        else:
            out.append(str(height))
    return out


# -- users ------------------------------------------------------------------------------------


def audit_users(
    source: LogSource,
    settings: Settings | None,
    live_rows: Callable[[], LiveProjection | Tables | None] | None,
    report: AuditReport,
    progress: Progress = no_progress,
    *,
    keep: bool = False,
    rebuild: str = "cassandra",
) -> None:
    """Step 5. The live projection is read first, then the log: every event the projection had
    applied when its rows were read is then in what is read (``core.rows``: users with events
    past its positions are not compared, and counted in a note)."""
    from services.shard_writer.consistency import LoggedEvent, check_log
    from services.shard_writer.core import MalformedEventError, event_from_record

    taken = live_rows() if live_rows is not None else None
    live = LiveProjection(taken) if isinstance(taken, Mapping) else taken
    codec = default_codec()
    logged: list[LoggedEvent] = []
    advance = progress("users.events", source.size("users.events"))
    for record in source.read("users.events"):
        advance(1)
        try:
            fields = codec.decode(record.value, expected="UserEventRecorded").record
            logged.append(LoggedEvent(record.partition, record.offset,
                                      event_from_record(fields)))
        except (CodecError, MalformedEventError, KeyError, TypeError) as exc:
            report.add(Finding("users_log", f"undecodable event (the projection skips it): "
                               f"{exc}", "users.events", record.offset, record.partition,
                               severity=Severity.WARNING))
    report.checked["user_events"] = len(logged)
    for problem in check_log(logged):
        report.add(Finding("users_log", problem, "users.events"))
    if live is None:
        report.notes.append("no live projection available: user rows not compared")
        return
    live_tables, logged = _settled(live, logged, report)
    if rebuild == "memory":
        rebuilt = rebuild_in_memory(logged)
        report.facts["user_rebuild"] = "in memory (core.projection)"
    elif settings is None:
        report.notes.append("no Cassandra settings to rebuild the projection in: user rows "
                            "not compared (use the in-memory rebuild)")
        return
    else:
        rebuilt = rebuild_projection(settings, logged, keep=keep)
        report.facts["user_rebuild"] = "fresh Cassandra keyspace"
    last_event = {item.event.user_id: (item.partition, item.offset) for item in logged}
    findings, compared = diff_tables(_keyed(rebuilt), _keyed(live_tables), last_event)
    report.extend(findings)
    for table, count in compared.items():
        report.checked[f"user_rows_{table}"] = count


def _settled(live: LiveProjection, logged: list[Any], report: AuditReport
             ) -> tuple[Tables, list[Any]]:
    """The live rows and the logged events of the users the projection had fully applied."""
    if live.positions is None:
        report.notes.append("the live projection's positions are not known: every user's rows "
                            "compared with the whole log")
        return live.rows, logged
    positions = live.positions
    unsettled = unsettled_users(((item.partition, item.offset, item.event.user_id)
                                 for item in logged), positions)
    ends: dict[int, int] = {}
    for item in logged:
        ends[item.partition] = max(ends.get(item.partition, 0), item.offset + 1)
    behind = {p: (positions.get(p, 0), end) for p, end in sorted(ends.items())
              if positions.get(p, 0) < end}
    report.facts["user_projection_positions"] = {str(p): o for p, o in sorted(positions.items())}
    report.checked["users_not_settled"] = len(unsettled)
    if behind:
        report.add(Finding(
            "users_lag", f"the live projection had not applied every event read "
            f"(partition: (applied up to, log end) {behind}); the rows of the "
            f"{len(unsettled)} users those events touch are not compared",
            "users.events", severity=Severity.WARNING))
    elif unsettled:
        report.notes.append(f"{len(unsettled)} users received events while their rows were "
                            "read; their rows are not compared")
    if not unsettled:
        return live.rows, logged
    return (without_users(live.rows, unsettled),
            [item for item in logged if item.event.user_id not in unsettled])


def _keyed(tables: Tables) -> dict[str, dict[tuple[Any, ...], dict[str, Any]]]:
    return {table: {tuple(row[k] for k in TABLE_KEYS[table]): row for row in rows}
            for table, rows in tables.items() if table in TABLE_KEYS}


def scan_rows(session: Any, keyspace: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of the projection tables of ``keyspace`` (positions excluded)."""
    from cassandra import DriverException

    from services.shard_writer.store import StoreError

    tables: dict[str, list[dict[str, Any]]] = {}
    try:
        for table in TABLE_KEYS:
            tables[table] = [row._asdict() for row in session.execute(
                f"SELECT * FROM {keyspace}.{table}", timeout=120)]
    except DriverException as exc:
        raise StoreError(f"cannot scan {keyspace}: {exc}") from exc
    return tables


def live_projection_rows(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    """The live projection's rows alone (no positions: see ``live_projection``)."""
    from services.shard_writer.store import connect

    cluster, session = connect(settings)
    try:
        return scan_rows(session, settings.cassandra.keyspace)
    finally:
        cluster.shutdown()


def live_projection(settings: Settings, *, catch_up_s: float = 30.0) -> LiveProjection:
    """The live projection: first, up to ``catch_up_s``, wait until it has applied the
    ``users.events`` records the topic holds now (so a live audit usually compares every user;
    a projection still behind then is reported by ``audit_users``, not waited for forever);
    then its positions, then its rows (module doc of ``core.rows`` for why in this order)."""
    from services.audit.sources import KafkaSource
    from services.shard_writer.queries import ProjectionTimeoutError, UserQueries
    from services.shard_writer.store import connect

    source = KafkaSource(settings)
    ends = {p: high for p, (_, high) in source.bounds("users.events").items()}
    cluster, session = connect(settings)
    try:
        queries = UserQueries(session, settings.cassandra.keyspace,
                              settings.topic("users.events"), poll_interval_s=0.2)
        applied = queries.positions()
        # Waited for: the records, not the high watermark (the handler writes in transactions,
        # and the commit marker after its last records is an offset the projection never
        # applies, so a caught-up projection would be waited for the whole catch_up_s).
        targets = source.record_ends("users.events", {
            p: applied.get(p, 0) for p, high in ends.items() if applied.get(p, 0) < high})
        with contextlib.suppress(ProjectionTimeoutError):
            queries.wait_for_positions(targets, timeout_s=catch_up_s)
        positions = queries.positions()
        return LiveProjection(scan_rows(session, settings.cassandra.keyspace), positions)
    finally:
        cluster.shutdown()


def rebuild_in_memory(logged: list[Any]) -> dict[str, list[dict[str, Any]]]:
    """The projection of ``logged`` events as Cassandra would hold it, computed in memory: the
    shard_writer's own ``rows_for`` run with ``core.projection.OPERATIONS`` for statements."""
    from types import SimpleNamespace

    from services.audit.core.projection import OPERATIONS, Operation, fold
    from services.shard_writer.projection import group_by_user, rows_for

    statements: Any = SimpleNamespace(**OPERATIONS)
    writes: list[tuple[Operation, Any]] = []
    for events in group_by_user(item.event for item in logged).values():
        writes.extend(rows_for(statements, events))  # type: ignore[arg-type]
    return fold(writes)


def rebuild_projection(settings: Settings, logged: list[Any], *, keep: bool = False,
                       keyspace: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Project ``logged`` events into a fresh keyspace with the shard_writer's own writes
    (``rows_for``/``write_rows``: same statements, same timestamps) and return its rows."""
    from services.shard_writer.projection import group_by_user, rows_for, write_rows
    from services.shard_writer.store import Statements, connect, create_schema, drop_keyspace

    name = keyspace or f"audit_{uuid.uuid4().hex[:12]}"
    cluster, session = connect(settings)
    try:
        create_schema(session, name, replication_factor=settings.cassandra.replication_factor,
                      datacenter=settings.cassandra.local_datacenter)
        statements = Statements.prepare(session, name)
        users = group_by_user(item.event for item in logged)
        write_rows(session, (rows_for(statements, events) for events in users.values()))
        rows = scan_rows(session, name)
        if not keep:
            drop_keyspace(session, name)
        return rows
    finally:
        cluster.shutdown()
