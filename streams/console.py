"""Consoles for command output that read well on a terminal and in a pipe, file or log.

rich sizes its output to the terminal, and to 80 columns when there is none, so a table piped
to ``grep`` or a log line written to a file was cut or wrapped at 80 columns. Off a terminal
these consoles are wide enough for any table the commands print (tables take their natural
width, never this much) and never wrap a printed line.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rich.console import Console

WIDE = 1000  # columns off a terminal: no table or line of ours is cut or wrapped


def output_console(*, stderr: bool = False) -> Console:
    """A console for stdout (or stderr): the terminal's width on a terminal, else ``WIDE``
    (or ``COLUMNS`` when that is set wider) with soft wrapping."""
    console = Console(stderr=stderr)
    if console.is_terminal:
        return console
    columns = os.environ.get("COLUMNS", "")
    width = max(WIDE, int(columns) if columns.isdigit() else 0)
    return Console(stderr=stderr, width=width, soft_wrap=True)


def heading(console: Console, title: str) -> None:
    """A section title: a rule across a terminal, one short line elsewhere."""
    if console.is_terminal:
        console.rule(title)
    else:
        console.print(f"== {title} ==")


def shell_command(*args: str) -> str:
    """A ``qustream`` command line as a reader can type it here: this installation's script,
    relative to the current directory when it is below it (``.venv/bin/qustream ...``)."""
    script = Path(sys.executable).parent / "qustream"
    try:
        shown = str(script.relative_to(Path.cwd()))
    except ValueError:
        shown = str(script)
    return " ".join([shown, *args])
