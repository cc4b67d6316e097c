"""The ``qustream`` root: any QuStreamError a command raises is one line on stderr and exit
status 2 (its traceback only with --debug), and every command has --help."""

from __future__ import annotations

import contextlib
import io
import os
from typing import Any

import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import InputError, OperationError, QuStreamError
from protocol.users import IdentityFileError
from services.shard_writer.store import StoreError
from streams import cli
from streams.errors import FatalKafkaError, KafkaUnreachableError
from streams.settings import SettingsError

ERRORS = (QuStreamError, InputError, OperationError, SettingsError, KafkaUnreachableError,
          FatalKafkaError, StoreError, IdentityFileError)


def _raising(error: BaseException) -> typer.Typer:
    application = typer.Typer()

    @application.command()
    def fail() -> None:
        raise error

    @application.command()
    def other() -> None:  # two commands: Typer then expects the command's name
        pass

    return application


def _run(application: typer.Typer, argv: list[str]) -> tuple[int, str]:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as ended:
        cli.run(application, argv)
    code = ended.value.code
    return (code if isinstance(code, int) else 1), stderr.getvalue()


@given(st.sampled_from(ERRORS), st.text(max_size=300))
@settings(max_examples=80, deadline=None)
def test_any_qustream_error_is_one_line_and_exit_2(kind: type[Exception], message: str) -> None:
    os.environ.pop("QUSTREAM_DEBUG", None)
    code, stderr = _run(_raising(kind(message)), ["fail"])
    assert code == cli.EXIT_COULD_NOT_RUN
    assert stderr.endswith("\n") and stderr.count("\n") == 1, stderr
    assert stderr.startswith("qustream: error: ")
    assert "Traceback" not in stderr
    words = message.split()
    if words:
        assert words[0] in stderr


def test_debug_shows_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUSTREAM_DEBUG", "1")
    with pytest.raises(OperationError, match="the broker is gone"):
        cli.run(_raising(OperationError("the broker is gone")), ["fail"])


def test_other_exceptions_are_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug is not a QuStreamError: it keeps its traceback."""
    monkeypatch.delenv("QUSTREAM_DEBUG", raising=False)
    with pytest.raises(ZeroDivisionError):
        cli.run(_raising(ZeroDivisionError("bug")), ["fail"])


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    if hasattr(group, "commands"):  # a group (Typer vendors its own click)
        for name, command in group.commands.items():
            found += _commands(command, (*path, name))
    return found


def test_every_command_has_help() -> None:
    cli._register()
    root = typer.main.get_command(cli.app)
    paths = _commands(root)
    assert len(paths) > 40
    for path in paths:
        code, _ = _run(cli.app, [*path, "--help"])
        assert code == 0, path


def test_every_qustream_command_the_docs_name_exists() -> None:
    """``qustream X Y`` in README.md and docs/*.md names a real command (a renamed or removed
    one, such as a separate block builder, would send a newcomer astray)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    cli._register()
    top = typer.main.get_command(cli.app)
    named = set()
    for document in (root / "README.md", *sorted((root / "docs").glob("*.md"))):
        for match in re.finditer(r"(?<!-n )(?<![\w.-])qustream((?: [a-z][a-z-]*)+)",
                                 document.read_text()):
            named.add((document.name, tuple(match.group(1).split())))
    assert len(named) > 30
    missing = []
    for document, words in sorted(named):
        command: Any = top
        for word in words:
            commands = getattr(command, "commands", None)
            if commands is None:
                break  # a command: the rest are its arguments or prose
            if word not in commands:
                missing.append(f"{document}: qustream {' '.join(words)}")
                break
            command = commands[word]
    assert not missing, missing


@pytest.mark.parametrize(("argv", "name"), [
    (["chain", "head"], "chain"),
    (["--debug", "audit", "--json"], "audit"),
    (["--config", "qustream.toml", "validator", "run"], "validator"),
    (["--config=qustream.toml", "users", "--help"], "users"),
    (["--help"], None),
    ([], None),
])
def test_the_command_a_line_names(argv: list[str], name: str | None) -> None:
    assert cli.command_name(argv) == name


def test_a_command_imports_only_its_own_part_and_help_lists_them_all() -> None:
    """A service started as ``qustream validator run`` does not pay for importing the demo, the
    gateway and the rest; ``qustream --help`` and an unknown command still see every part."""
    import subprocess
    import sys

    probe = ("import sys; from streams import cli; cli._register(cli.command_name(sys.argv[1:])); "
             "print(sorted(cli._registered)); print('services.demo' in sys.modules)")
    alone = subprocess.run([sys.executable, "-c", probe, "chain", "head"], capture_output=True,
                           text=True, check=True).stdout.split("\n")
    assert alone[:2] == ["['chain']", "False"], alone
    every = subprocess.run([sys.executable, "-c", probe, "nosuch"], capture_output=True,
                           text=True, check=True).stdout.split("\n")
    assert every[1] == "True" and every[0].count("'") == 2 * len(cli._PARTS), every
