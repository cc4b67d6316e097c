"""The gateway and the SDK against a real network, over real HTTP.

One network per module (4 validators, the tally, a public QRNG server and one that also feeds
the private pool, the user command handler and a shard_writer) and one gateway process started
with ``qustream gateway run``, its API keys made with ``qustream gateway api-key create``.
Every endpoint is called with httpx; what the gateway serves is checked with the SDK, which
trusts neither the gateway nor Kafka.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import hmac
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
import httpx
import pytest
from cassandra.cluster import Session

from protocol.commit import CommitFlag, CommitSig
from protocol.keys import SigningKey
from sdk.errors import (
    BlockRejectedError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    UnauthorizedError,
    UnavailableError,
)
from sdk.keys import DeliveredKey, KeyClient
from sdk.subscriber import BlockSubscriber, KafkaBlockSource, SseBlockSource, parse_sse
from sdk.testing import flip_bit, tamper
from sdk.users import RecordDecryptionError, UserIdentity, UserStore, command_json
from services.ledger.core.chain_spec import ChainSpec
from services.ledger.core.tx import PayForService, decode_signed_tx
from services.shard_writer.core import (
    DeleteRecord,
    PutRecord,
    RegisterUser,
    command_to_record,
    signed_command,
)
from services.shard_writer.store import create_schema, drop_keyspace
from streams.admin import ensure_topics
from streams.codec import SCHEMA_DIR, default_codec
from streams.kafka import read_to_end
from streams.settings import Settings
from streams.supervisor import ServiceSpec, Supervisor
from streams.topics import CATALOGUE
from tests.integration.test_chain_e2e import CLI, PacedFifo
from tests.interop import java_client
from tests.unit.test_partitioning import java_partition

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stack_env(settings: Settings) -> dict[str, str]:
    return {**settings.to_env(), "PYTHONPATH": str(ROOT)}


@dataclass
class Stack:
    settings: Settings
    root: Path
    supervisor: Supervisor
    url: str
    api_key: str  # read, keys, users
    read_key: str  # read only

    @property
    def genesis(self) -> Path:
        return self.root / "net" / "genesis.json"

    @property
    def keys_dir(self) -> Path:
        return self.root / "net" / "keys"

    @property
    def chain_id(self) -> str:
        return ChainSpec.load(self.genesis).chain_id

    @property
    def gateway_key(self) -> str:
        """The gateway's delivery key (it writes the public half on start), to pin."""
        return self.gateway_key_file.read_text().strip()

    @property
    def gateway_key_file(self) -> Path:
        return self.root / "gateway" / "delivery-key.pub"

    def http(self, key: str | None = None) -> httpx.Client:
        headers = {"X-API-Key": key} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def log(self, name: str) -> str:
        path = self.supervisor.log_path(name)
        return path.read_text()[-3000:] if path.exists() else ""

    def _poll(self, path: str, timeout_s: float,
              done: Callable[[httpx.Response], bool]) -> httpx.Response | None:
        """GET ``path`` every 0.5 s (the supervisor ticked) until an answer 200 is ``done``;
        the last answer 200 (None if there was none)."""
        deadline = time.monotonic() + timeout_s
        last = None
        with self.http(self.api_key) as http:
            while time.monotonic() < deadline:
                self.supervisor.tick()
                with contextlib.suppress(httpx.HTTPError):
                    answer = http.get(path)
                    if answer.status_code == 200:
                        last = answer
                        if done(answer):
                            return answer
                time.sleep(0.5)
        return last

    def wait_head(self, height: int, timeout_s: float) -> int:
        answer = self._poll("/v1/chain/head", timeout_s,
                            lambda answer: int(answer.json()["height"]) >= height)
        return 0 if answer is None else int(answer.json()["height"])

    def wait_random_pulse(self, timeout_s: float) -> bool:
        return self._poll("/v1/beacon/latest", timeout_s, lambda answer: True) is not None


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env}, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def stack(_base_settings: Settings, kafka_bootstrap: str, cassandra_contact: tuple[str, int],
          cassandra_session: Session, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("gateway-e2e")
    tag = os.urandom(4).hex()
    host, cport = cassandra_contact
    settings = _base_settings.model_copy(update={
        "state_dir": root, "topic_prefix": f"t{tag}.",
        "kafka": _base_settings.kafka.model_copy(update={"bootstrap_servers": kafka_bootstrap}),
        "cassandra": _base_settings.cassandra.model_copy(update={
            "contact_points": host, "port": cport, "keyspace": f"ks_{tag}"}),
    })
    env = stack_env(settings)
    net = root / "net"
    _cli(env, "genesis", "new", "--validators", "4", "--accounts", "3", "--sources", "2",
         "--out", str(net))
    ensure_topics(settings)
    create_schema(cassandra_session, settings.cassandra.keyspace)
    keys_file = root / "gateway" / "api-keys.json"
    api_key = _cli(env, "gateway", "api-key", "create", "--scopes", "read,keys,users",
                   "--label", "e2e", "--rate", "500", "--burst", "1000", "--keys-file",
                   str(keys_file)).strip().splitlines()[-1]
    read_key = _cli(env, "gateway", "api-key", "create", "--scopes", "read", "--label",
                    "reader", "--keys-file", str(keys_file)).strip().splitlines()[-1]
    fifo = PacedFifo(root / "qrng-0.fifo")
    qrng = ("--chunk-size", "4KiB", "--checkpoint-chunks", "8", "--checkpoint-ms", "300",
            "--quiet")
    port = _free_port()
    specs = [
        ServiceSpec("qrng-0", (*CLI, "qrng", "run", "--source", f"file:{fifo.path}", "--key",
                               str(net / "keys" / "qrng-0.json"), "--source-id", "qrng-0",
                               *qrng), env=env),
        ServiceSpec("qrng-1", (*CLI, "qrng", "run", "--source", "sim,rate=64KiB", "--key",
                               str(net / "keys" / "qrng-1.json"), "--source-id", "qrng-1",
                               "--private-share", "0.5", *qrng), env=env),
        *(ServiceSpec(f"validator-{i}", (
            *CLI, "validator", "run", "--key", str(net / "keys" / f"validator-{i}.json"),
            "--genesis", str(net / "genesis.json"), "--block-interval-ms", "1000"), env=env)
          for i in range(4)),
        ServiceSpec("tally", (*CLI, "tally", "run", "--genesis", str(net / "genesis.json")),
                    env=env),
        ServiceSpec("users-handler", (*CLI, "users", "handler"), env=env),
        ServiceSpec("shard-writer", (*CLI, "users", "shard-writer"), env=env),
        ServiceSpec("gateway", (*CLI, "gateway", "run", "--host", "127.0.0.1", "--port",
                                str(port), "--genesis", str(net / "genesis.json"),
                                "--keys-file", str(keys_file)), env=env),
    ]
    supervisor = Supervisor(specs, root / "logs", max_restarts=3)
    stack = Stack(settings, root, supervisor, f"http://127.0.0.1:{port}", api_key, read_key)
    supervisor.start()
    try:
        reached = stack.wait_head(4, 150)
        assert reached >= 4, f"head {reached}\n{stack.log('gateway')}{stack.log('tally')}"
        # The tests read the latest random pulse: wait for the first one (fresh entropy from
        # two sources can follow the first blocks by seconds on a loaded machine).
        assert stack.wait_random_pulse(60), f"no random pulse\n{stack.log('gateway')}"
        _wait_users_pipeline(stack)
        yield stack
    finally:
        supervisor.stop(grace_s=5)
        fifo.close()
        drop_keyspace(cassandra_session, settings.cassandra.keyspace)


def _wait_users_pipeline(stack: Stack, timeout_s: float = 90) -> None:
    """Until the handler has joined its group a command may time out: register a throwaway
    user until that works (the retried command is the same, so it applies once)."""
    deadline = time.monotonic() + timeout_s
    with UserStore(stack.url, stack.api_key, UserIdentity.generate(), retries=0) as store:
        while True:
            try:
                store.register()
                return
            except (UnavailableError, ConflictError) as exc:
                if isinstance(exc, ConflictError):
                    return  # the first attempt went through after all
                if time.monotonic() > deadline:
                    raise AssertionError(f"users pipeline not ready: {exc}\n"
                                         f"{stack.log('users-handler')}") from exc
                stack.supervisor.tick()


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status and problem["title"] and problem["detail"]
    assert problem["type"].startswith(("http", "about:"))
    return problem


class _ListSource:
    def __init__(self, records: list[tuple[int, bytes]]) -> None:
        self._records = records

    def records(self, after: int | None) -> Iterator[tuple[int, bytes]]:
        yield from self._records


def _verify_all(genesis: Path, raws: list[bytes]) -> list[int]:
    """Heights of ``raws`` (from height 1 on), each verified by a full subscriber."""
    subscriber = BlockSubscriber(_ListSource(list(enumerate(raws))), genesis=genesis)
    return [block.height for block in subscriber]


# ------------------------------------------------------------------------- operations, auth


def test_operations_endpoints(stack: Stack) -> None:
    with stack.http() as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "ready" and ready.json()["head"] >= 1
        assert ready.json()["private_pool"]["healthy"] is True
        metrics = http.get("/metrics")
        assert metrics.status_code == 200
        assert "qustream_gateway_chain_head" in metrics.text
        assert "qustream_gateway_requests_total" in metrics.text


def test_requests_without_or_with_a_wrong_key_or_scope_are_refused(stack: Stack) -> None:
    user = "a" * 40
    with stack.http() as anonymous, stack.http("qs_not-a-key") as wrong, \
            stack.http(stack.read_key) as reader:
        for client in (anonymous, wrong):
            for method, path in (("POST", "/v1/keys"), ("GET", f"/v1/users/{user}")):
                problem = assert_problem(client.request(method, path), 401)
                assert "API key" in problem["detail"]
        for path in ("/v1/chain/head", "/v1/beacon/latest", "/v1/blocks/1"):
            assert anonymous.get(path).status_code == 200, path  # public reads need no key
            assert_problem(wrong.get(path), 401)  # a wrong key is refused, not downgraded
        assert reader.get("/v1/chain/head").status_code == 200
        assert_problem(reader.post("/v1/keys", json={
            "x25519_public_key": "", "mlkem768_public_key": "", "payment_tx": ""}), 403)
        assert_problem(reader.get(f"/v1/users/{user}"), 403)
    with pytest.raises(UnauthorizedError):
        KeyClient(stack.url, "qs_wrong", SigningKey.load(stack.keys_dir / "account-0.json"),
                  stack.chain_id, gateway_keys=stack.gateway_key).request(32)
    with pytest.raises(ForbiddenError):
        UserStore(stack.url, stack.read_key, UserIdentity.generate()).user()


# ------------------------------------------------------------------------- chain and beacon


def test_chain_blocks_and_beacon(stack: Stack) -> None:
    with stack.http(stack.api_key) as http:
        head = http.get("/v1/chain/head").json()
        assert head["chain_id"] == stack.chain_id and head["height"] >= 4
        height = int(head["height"])
        singles = [http.get(f"/v1/blocks/{h}") for h in range(1, height + 1)]
        assert all(r.status_code == 200 for r in singles)
        raws = [base64.b64decode(r.json()["record"]) for r in singles]
        assert _verify_all(stack.genesis, raws) == list(range(1, height + 1))
        assert singles[-1].json()["hash"] == head["hash"]
        assert singles[0].json()["commit"]["signed_power"] * 3 > \
            singles[0].json()["commit"]["total_power"] * 2

        # Ranges: bounded pages that link to the next one.
        page = http.get("/v1/blocks", params={"from": 1, "to": height, "limit": 2}).json()
        heights = [b["height"] for b in page["blocks"]]
        while page["next"]:
            page = http.get(page["next"]).json()
            heights += [b["height"] for b in page["blocks"]]
        assert heights == list(range(1, height + 1))
        assert_problem(http.get("/v1/blocks", params={"from": 5, "to": 2}), 400)
        assert_problem(http.get(f"/v1/blocks/{height + 10_000}"), 404)

        # Beacon: the proof lets a client re-derive the randomness and tie it to the block.
        latest = http.get("/v1/beacon/latest").json()
        assert latest["height"] >= height
        for pulse in (latest, http.get(f"/v1/beacon/{height}").json()):
            proof = pulse["proof"]
            derived = hmac.new(bytes.fromhex(proof["previous_randomness"]),
                               base64.b64decode(proof["randomness_input"]),
                               hashlib.sha512).digest()
            assert derived.hex() == pulse["randomness"]
            header = base64.b64decode(proof["header"])
            assert bytes.fromhex(pulse["randomness"]) in header
            block = http.get(f"/v1/blocks/{pulse['height']}").json()
            assert block["hash"] == pulse["block_hash"]
            assert block["header"]["randomness"] == pulse["randomness"]
            validators = http.get(f"/v1/validators/{pulse['height']}").json()
            assert validators["hash"] == proof["validators_hash"]
        assert_problem(http.get(f"/v1/beacon/{height + 10_000}"), 404)


def _read_sse(stack: Stack, headers: dict[str, str], params: dict[str, str],
              count: int) -> list[tuple[int, bytes]]:
    """``count`` events of one SSE connection, then hang up."""
    out: list[tuple[int, bytes]] = []
    with httpx.stream("GET", f"{stack.url}/v1/stream/blocks", params=params, timeout=60,
                      headers={"X-API-Key": stack.api_key, **headers}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for event_id, data in parse_sse(response.iter_lines()):
            assert event_id is not None
            out.append((int(event_id), base64.b64decode(json.loads(data)["record"])))
            if len(out) == count:
                break
    return out


def test_sse_stream_resumes_with_last_event_id_without_missing_a_block(stack: Stack) -> None:
    first = _read_sse(stack, {}, {"from": "1"}, 3)
    assert [h for h, _ in first] == [1, 2, 3]
    # Disconnected; blocks keep coming. Resume where we stopped and read past the head.
    head = stack.wait_head(6, 60)
    resumed = _read_sse(stack, {"Last-Event-ID": "3"}, {}, head - 3 + 1)
    heights = [h for h, _ in first + resumed]
    assert heights == list(range(1, head + 2)), "a gap or a repeat across the reconnect"
    assert _verify_all(stack.genesis, [raw for _, raw in first + resumed]) == heights

    # The SDK's SSE source does the same itself and verifies every block.
    subscriber = BlockSubscriber(SseBlockSource(stack.url, stack.api_key, stop_after=4),
                                 genesis=stack.genesis)
    assert [b.height for b in subscriber] == [1, 2, 3, 4]


# ------------------------------------------------------------------------- key delivery


def _pool_served(stack: Stack) -> int:
    with stack.http() as http:
        return int(http.get("/readyz").json()["private_pool"]["served_bytes"])


def _wait_pool(stack: Stack, wanted: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    available = 0
    with stack.http() as http:
        while time.monotonic() < deadline:
            answer = http.get("/readyz")
            if answer.status_code == 200:
                available = int(answer.json()["private_pool"]["available_bytes"])
                if available >= wanted:
                    return
            time.sleep(0.5)
    raise AssertionError(f"private pool holds {available} bytes\n{stack.log('gateway')}")


def _ledger_payments(settings: Settings) -> dict[bytes, PayForService]:
    """tx hash -> PayForService body of every payment on ``ledger.tx``."""
    from services.ledger.core.tx import tx_hash

    codec = default_codec()
    out: dict[bytes, PayForService] = {}
    for message in read_to_end(settings, settings.topic("ledger.tx"),
                               f"ledger-check-{time.time_ns()}"):
        schema, record = codec.decode(message.value)
        if schema != "TransactionSubmitted":
            continue
        body = decode_signed_tx(record["tx"]).tx.body
        if isinstance(body, PayForService):
            out[tx_hash(record["tx"])] = body
    return out


def test_key_delivery_from_the_private_pool(stack: Stack) -> None:
    _wait_pool(stack, 4096)
    clients = [KeyClient.from_key_file(stack.url, stack.api_key,
                                       stack.keys_dir / f"account-{i}.json", stack.chain_id,
                                       gateway_keys=stack.gateway_key)
               for i in range(3)]
    try:
        single = clients[0].request(64)
        assert len(single.key) == 64 and single.sources == ("qrng-1",)

        # Two concurrent requests: the pool hands out disjoint bytes (it serves exactly the sum
        # of both draws, under one lock) and the keys, commitments and payments all differ.
        before = _pool_served(stack)
        results: dict[int, DeliveredKey] = {}
        errors: list[BaseException] = []

        def ask(index: int) -> None:
            try:
                results[index] = clients[index].request(32)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=ask, args=(i,)) for i in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        assert _pool_served(stack) - before == 2 * 32
        one, two = results[1], results[2]
        assert one.key != two.key and len(one.key) == len(two.key) == 32
        assert one.commitment != two.commitment and one.tx_hash != two.tx_hash

        # Each fee transaction, carrying the request commitment, is on ledger.tx.
        payments = _ledger_payments(stack.settings)
        for delivered in (single, one, two):
            assert payments[delivered.tx_hash].commitment == delivered.commitment
    finally:
        for client in clients:
            client.close()


# ------------------------------------------------------------------------- user records


def test_user_records_over_http_read_your_writes(stack: Stack) -> None:
    identity = UserIdentity.generate()
    user = identity.user_id

    def command(body: Any, version: int | None = None) -> dict[str, Any]:
        return command_json(signed_command(identity.signing, user, os.urandom(8).hex(), body,
                                           issued_at_ms=int(time.time() * 1000),
                                           expected_version=version))

    with stack.http(stack.api_key) as http:
        registered = http.post(f"/v1/users/{user}", json=command(RegisterUser(
            identity.signing.public_key.to_text(), identity.records.public_key)))
        assert registered.status_code == 202, registered.text
        position = registered.json()["position"]
        document = http.get(f"/v1/users/{user}", params={"min_offset": position}).json()
        assert document["user_id"] == user and document["records"] == []

        from protocol.records import open_record, seal_record

        envelope = seal_record(identity.records, user, "r1", 1, b"secret")
        put = http.post(f"/v1/users/{user}/records/r1", json=command(PutRecord("r1", 1,
                                                                               envelope), 1))
        assert put.status_code == 202, put.text
        record = http.get(f"/v1/users/{user}/records/r1",
                          params={"min_offset": put.json()["position"]})
        assert record.status_code == 200, record.text
        stored = base64.b64decode(record.json()["ciphertext"])
        assert stored == envelope and b"secret" not in stored
        assert open_record(identity.records, user, "r1", 1, stored) == b"secret"

        again = http.put(f"/v1/users/{user}/records/r1", json=command(PutRecord(
            "r1", 3, seal_record(identity.records, user, "r1", 3, b"x")), 2))
        assert_problem(again, 409)  # version 3 is not the next one
        blind = http.request("DELETE", f"/v1/users/{user}/records/r1",
                             json=command(DeleteRecord("r1")))
        assert assert_problem(blind, 409)["code"] == "expected_version_required"

        deleted = http.request("DELETE", f"/v1/users/{user}/records/r1",
                               json=command(DeleteRecord("r1"), 2))
        assert deleted.status_code == 202, deleted.text
        assert_problem(http.get(f"/v1/users/{user}/records/r1",
                                params={"min_offset": deleted.json()["position"]}), 404)
        assert_problem(http.post(f"/v1/users/{user}/records/r2",
                                 json=command(PutRecord("r1", 1, envelope), 3)), 422)


def test_user_store_encrypts_and_reads_its_own_writes(stack: Stack) -> None:
    identity = UserIdentity.generate()
    with UserStore(stack.url, stack.api_key, identity) as store:
        assert store.register().version == 1
        store.put("notes", b"first")
        assert store.get("notes").plaintext == b"first"
        written = store.put("notes", b"second")
        record = store.get("notes")
        assert (record.plaintext, record.record_version) == (b"second", 2)
        assert written.position == store.last_position
        assert [r["record_id"] for r in store.user()["records"]] == ["notes"]
        store.delete("notes")
        with pytest.raises(NotFoundError):
            store.get("notes")
    # Another identity claiming the same user id cannot read the records.
    with UserStore(stack.url, stack.api_key, identity) as owner:
        owner.put("diary", b"dear diary")
    thief = dataclasses.replace(identity, records=UserIdentity.generate().records)
    with UserStore(stack.url, stack.api_key, thief) as store:
        store.last_position = owner.last_position
        with pytest.raises(RecordDecryptionError):
            store.get("diary")


# ------------------------------------------------------------------------- BlockSubscriber


def test_block_subscriber_on_kafka_verifies_and_rejects_tampered_blocks(stack: Stack) -> None:
    head = stack.wait_head(5, 60)
    # The chain keeps growing, so read up to the head we saw (the topic never goes idle).
    source = KafkaBlockSource(stack.settings, follow=True)
    blocks = []
    for block in BlockSubscriber(source, genesis=stack.genesis):
        blocks.append(block)
        if block.height >= head:
            break
    heights = [b.height for b in blocks]
    assert len(heights) >= 4 and heights == list(range(1, len(heights) + 1))
    raw = [b.raw for b in blocks]

    def rejected(bad: bytes) -> str:
        subscriber = BlockSubscriber(_ListSource([(0, raw[0]), (1, bad)]),
                                     genesis=stack.genesis)
        seen: list[int] = []
        with pytest.raises(BlockRejectedError) as caught:
            seen.extend(b.height for b in subscriber)
        assert seen == [1], "nothing after the bad block is yielded"
        return caught.value.reason

    flipped = tamper(raw[1], header=lambda h: dataclasses.replace(
        h, randomness=flip_bit(h.randomness, 7, 2)))
    assert "randomness" in rejected(flipped)

    def strip(cert: Any) -> Any:
        signatures = list(cert.signatures)
        index = next(i for i, s in enumerate(signatures) if s.flag is CommitFlag.COMMIT)
        signatures[index] = CommitSig(CommitFlag.COMMIT, signatures[index].validator_address,
                                      b"")
        return dataclasses.replace(cert, signatures=tuple(signatures))

    assert "signature" in rejected(tamper(raw[1], commit=strip))

    def drop_to_minority(cert: Any) -> Any:
        kept = 0
        signatures = []
        for sig in cert.signatures:
            if sig.flag is CommitFlag.COMMIT and kept < 2:
                kept += 1
                signatures.append(sig)
            else:
                signatures.append(CommitSig(CommitFlag.ABSENT, sig.validator_address, b""))
        return dataclasses.replace(cert, signatures=tuple(signatures))

    assert "2/3" in rejected(tamper(raw[1], commit=drop_to_minority))
    wrong_set = tamper(raw[1], header=lambda h: dataclasses.replace(
        h, validators_hash=bytes(32)))
    assert "validators" in rejected(wrong_set)


# ------------------------------------------------------------------------- examples


def _example(stack: Stack, name: str, *args: str) -> list[dict[str, Any]]:
    done = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args],
                          capture_output=True, text=True, timeout=120, cwd=stack.root,
                          env={**os.environ, **stack_env(stack.settings)})
    assert done.returncode == 0, done.stdout + done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def test_examples_run_against_the_gateway(stack: Stack) -> None:
    common = ("--url", stack.url, "--api-key", stack.api_key)
    (key,) = _example(stack, "get_key.py", *common, "--account",
                      str(stack.keys_dir / "account-0.json"), "--length", "48",
                      "--gateway-key-file", str(stack.gateway_key_file))
    assert key["length"] == 48 and len(bytes.fromhex(key["key"])) == 48

    for source in (common, ("--kafka",)):
        blocks = _example(stack, "subscribe.py", *source, "--genesis", str(stack.genesis),
                          "--count", "3")
        assert [b["height"] for b in blocks] == [1, 2, 3]
        assert all(b["verified"] for b in blocks)

    identity = stack.root / "example-user.json"
    (first,) = _example(stack, "store_record.py", *common, "--identity", str(identity),
                        "--text", "one")
    assert first["plaintext"] == "one" and first["record_version"] == 1
    (second,) = _example(stack, "store_record.py", *common, "--identity", str(identity),
                         "--text", "two", "--delete")
    assert second["plaintext"] == "two" and second["record_version"] == 2
    assert second["deleted_at"]


# ------------------------------------------------------------------------- Java interop


def test_java_clients_read_and_write_our_topics(stack: Stack) -> None:
    """What an enterprise Java user runs (issue 14), on this network's topics: Avro's
    ``BinaryMessageDecoder`` over every schema decodes every message of every topic and
    re-encodes it to the same bytes; Java's default partitioner agrees with the partition of
    every keyed record; a command sent by a plain Java producer for a user registered through
    our gateway reaches the handler that holds that user's state, and is applied."""
    from protocol.records import seal_record

    classpath = java_client.build()
    common = ("--url", stack.url, "--api-key", stack.api_key)
    _example(stack, "get_key.py", *common, "--account", str(stack.keys_dir / "account-0.json"),
             "--gateway-key-file", str(stack.gateway_key_file))
    identity = UserIdentity.generate()
    user = identity.user_id
    with UserStore(stack.url, stack.api_key, identity) as store:
        store.register()  # through our gateway and producer (503s are retried, idempotently)
    envelope = seal_record(identity.records, user, "from-java", 1, b"hello")
    command = signed_command(identity.signing, user, "from-java", PutRecord(
        "from-java", 1, envelope), issued_at_ms=int(time.time() * 1000), expected_version=1)
    record_json = io.StringIO()
    fastavro.json_writer(record_json, default_codec().parsed_schema("UserCommandIssued"),
                         [command_to_record(command)])
    settings = stack.settings
    config = {"bootstrap": settings.kafka_bootstrap(), "schemas": str(SCHEMA_DIR),
              "history": str(SCHEMA_DIR / "history")}
    sent = java_client.run(classpath, "produce", {
        **config, "topic": settings.topic("users.commands"), "schema": "UserCommandIssued",
        "key": user, "record_json": record_json.getvalue()})
    assert sent["partition"] == java_partition(user.encode(), sent["partitions"])
    assert sent["header_hex"] == default_codec().encode(
        "UserCommandIssued", command_to_record(command))[:10].hex()
    with stack.http(stack.api_key) as http:
        deadline = time.monotonic() + 120
        while (answer := http.get(f"/v1/users/{user}/records/from-java")).status_code != 200:
            assert time.monotonic() < deadline, f"Java's command not applied: {answer.text}\n" \
                f"{stack.log('users-handler')}"
            time.sleep(0.5)
        assert base64.b64decode(answer.json()["ciphertext"]) == envelope

    topics = {settings.topic(t.name): list(t.schemas) for t in CATALOGUE}
    result = java_client.run(classpath, "decode", {**config, "topics": topics}, timeout_s=600)
    history = list((SCHEMA_DIR / "history").glob("*.avsc"))
    assert result["schemas_in_store"] == len(list(SCHEMA_DIR.glob("*.avsc"))) + len(history)
    counts = {name.removeprefix(settings.topic_prefix): stats
              for name, stats in result["topics"].items()}
    for name in ("chain.blocks", "chain.consensus", "entropy.raw", "ledger.tx", "users.events",
                 "qrng.status", "users.commands", "users.replies"):
        assert counts[name]["messages"] > 0, (name, counts[name])
    for name, stats in counts.items():
        assert stats["caught_up"], (name, stats)
        assert stats["decoded"] == stats["messages"], (name, stats)  # 100%, per topic
        assert stats["reencoded_identical"] == stats["decoded"], (name, stats)
        assert stats["on_java_partition"] == stats["keyed"], (name, stats)
    assert counts["users.commands"]["keyed"] > 0 and counts["entropy.raw"]["keyed"] > 0
    print(json.dumps({"java_decoded": {n: s["decoded"] for n, s in counts.items()}}))
