"""``qustream users``: identities, commands and reads against a running network, and the two
long-running roles (``handler`` and ``shard-writer``).

An identity file holds a user's private keys (signing seed and ML-KEM record seed, mode 0600);
record payloads are encrypted with it before they leave this process, and decrypted on ``get``.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from protocol.keys import Algorithm
from protocol.records import DecryptionError, open_record, seal_record
from protocol.users import IdentityFileError, UserIdentity
from services.shard_writer.core import (
    CommandBody,
    DeleteRecord,
    DeleteUser,
    PutRecord,
    RegisterUser,
    signed_command,
)
from streams.settings import load_settings

app = typer.Typer(help="The sharded user database: register users, put/get/delete encrypted "
                       "records, run the command handler and the shard_writer.",
                  no_args_is_help=True)
console = Console()


def _load_identity(path: Path) -> UserIdentity:
    try:
        return UserIdentity.load(path)
    except IdentityFileError as exc:
        raise typer.BadParameter(str(exc)) from exc


IDENTITY = typer.Option(Path("user.json"), "--identity", "-i", help="identity file")


def _send(identity: UserIdentity, body: CommandBody, expected: int | None = None) -> None:
    from services.shard_writer.client import UserClient

    command = signed_command(identity.signing, identity.user_id, str(uuid.uuid4()), body,
                             issued_at_ms=int(time.time() * 1000), expected_version=expected)
    reply = UserClient(load_settings()).execute(command)
    if reply.accepted:
        console.print(f"[green]accepted[/] {body.TYPE} user {reply.user_id} v{reply.version} "
                      f"(users.events[{reply.partition}]@{reply.offset})")
    else:
        console.print(f"[red]rejected[/] {body.TYPE}: {reply.code}: {reply.reason}")
        raise typer.Exit(1)


def _queries():  # type: ignore[no-untyped-def]
    from services.shard_writer.queries import UserQueries
    from services.shard_writer.store import connect

    settings = load_settings()
    cluster, session = connect(settings)
    return cluster, UserQueries(session, settings.cassandra.keyspace,
                                settings.topic("users.events"))


@app.command()
def keygen(out: Path = typer.Option(Path("user.json"), "--out", "-o"),
           algorithm: str = typer.Option("ml-dsa-65", help="ml-dsa-65 or ed25519")) -> None:
    """Create a new user identity (signing key + ML-KEM-768 record key)."""
    identity = UserIdentity.generate(Algorithm.from_option(algorithm))
    identity.save(out)
    console.print(f"user id {identity.user_id} -> {out}")


@app.command()
def register(identity_file: Path = IDENTITY) -> None:
    """Register the identity's user (its id is derived from its public key)."""
    identity = _load_identity(identity_file)
    _send(identity, RegisterUser(identity.signing.public_key.to_text(),
                                 identity.records.public_key))


@app.command()
def put(record_id: str, data: str = typer.Argument(..., help="plaintext ('@file' reads a file)"),
        identity_file: Path = IDENTITY) -> None:
    """Encrypt and store a record (the next version of ``record_id``)."""
    identity = _load_identity(identity_file)
    plaintext = Path(data[1:]).read_bytes() if data.startswith("@") else data.encode()
    cluster, queries = _queries()
    try:
        current = queries.get_record(identity.user_id, record_id)
        user = queries.get_user(identity.user_id, with_records=False)
    finally:
        cluster.shutdown()
    if user is None or user.encryption_key is None:
        console.print(f"[red]user {identity.user_id} is not registered[/]")
        raise typer.Exit(1)
    version = 1 if current is None else current.record_version + 1
    envelope = seal_record(identity.records, identity.user_id, record_id, version, plaintext,
                           key_epoch=user.key_epoch or 0)
    _send(identity, PutRecord(record_id, version, envelope), user.version)


@app.command()
def get(record_id: str | None = typer.Argument(None), identity_file: Path = IDENTITY) -> None:
    """Show the user, or decrypt one record."""
    identity = _load_identity(identity_file)
    cluster, queries = _queries()
    try:
        user = queries.get_user(identity.user_id)
    finally:
        cluster.shutdown()
    if user is None:
        console.print(f"[red]user {identity.user_id} is not registered[/]")
        raise typer.Exit(1)
    if record_id is None:
        table = Table(title=f"user {user.user_id} v{user.version}"
                      f"{' (deleted)' if user.deleted else ''}")
        for column in ("record", "version", "bytes"):
            table.add_column(column)
        for record in sorted(user.records.values(), key=lambda r: r.record_id):
            table.add_row(record.record_id, str(record.record_version), str(record.size))
        console.print(table)
        return
    record = user.records.get(record_id)
    if record is None:
        console.print(f"[red]no record {record_id!r}[/]")
        raise typer.Exit(1)
    try:
        plaintext = open_record(identity.records, user.user_id, record_id,
                                record.record_version, record.ciphertext)
    except DecryptionError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    typer.echo(plaintext.decode("utf-8", "replace"))


def _version(identity: UserIdentity) -> int:
    """The user's version in the projection: what the next command is signed for (a command
    names the version it applies to, so it can never be applied again)."""
    cluster, queries = _queries()
    try:
        user = queries.get_user(identity.user_id, with_records=False)
    finally:
        cluster.shutdown()
    if user is None:
        console.print(f"[red]user {identity.user_id} is not registered[/]")
        raise typer.Exit(1)
    return int(user.version)


@app.command()
def delete(record_id: str, identity_file: Path = IDENTITY) -> None:
    """Delete one record."""
    identity = _load_identity(identity_file)
    _send(identity, DeleteRecord(record_id), _version(identity))


@app.command("delete-user")
def delete_user(identity_file: Path = IDENTITY,
                yes: bool = typer.Option(False, "--yes", help="confirm erasure")) -> None:
    """Erase the user: every record becomes unreadable and is dropped from the projection."""
    if not yes:
        raise typer.BadParameter("erasure is final; pass --yes")
    identity = _load_identity(identity_file)
    _send(identity, DeleteUser(), _version(identity))


@app.command()
def handler(instance_id: str = typer.Option("0", help="stable id: transactional.id"),
            snapshot_every: int | None = typer.Option(
                None, help="events per partition between snapshots (at least; 0: none; "
                           "default: the handler's, 10,000)"),
            full: bool = typer.Option(
                False, "--full", help="ignore the snapshots: fold every partition from offset 0"),
            ) -> None:
    """Run the user command handler (users.commands -> users.events)."""
    from services.shard_writer.handler import main

    main(["--instance-id", instance_id,
          *([] if snapshot_every is None else ["--snapshot-every", str(snapshot_every)]),
          *(["--full"] if full else [])])


@app.command("shard-writer")
def shard_writer(instance_id: str | None = typer.Option(None)) -> None:
    """Run a shard_writer (users.events -> Cassandra)."""
    from services.shard_writer.projection import main

    main(["--instance-id", instance_id] if instance_id else [])
