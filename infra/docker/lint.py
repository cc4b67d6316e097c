"""A text lint of the Dockerfile (no Docker engine on the build machines): ``python -m
infra.docker.lint [Dockerfile]``.

Rules: every FROM names a fixed tag or digest (never ``latest`` or no tag); the final stage
switches to a non-root USER; no ADD of a URL (use a package registry or COPY); a HEALTHCHECK
and an ENTRYPOINT running ``qustream`` exist.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parent / "Dockerfile"


@dataclass(frozen=True, slots=True)
class DockerfileProblem:
    line: int
    message: str

    def __str__(self) -> str:
        return f"Dockerfile:{self.line}: {self.message}"


def instructions(text: str) -> list[tuple[int, str, str]]:
    """(line number, INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    result: list[tuple[int, str, str]] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        keyword, _, arguments = pending.partition(" ")
        result.append((start, keyword.upper(), arguments.strip()))
        pending = ""
    return result


def _image_is_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name = image.rsplit("/", 1)[-1]
    tag = name.partition(":")[2]
    return bool(tag) and tag != "latest"


def lint(text: str) -> list[DockerfileProblem]:
    problems: list[DockerfileProblem] = []
    parsed = instructions(text)
    stages: set[str] = set()
    last_from = 0
    for number, keyword, arguments in parsed:
        if keyword == "FROM":
            last_from = number
            words = arguments.split()
            image = next((w for w in words if not w.startswith("--")), "")
            if image not in stages and not _image_is_pinned(image):
                problems.append(DockerfileProblem(number, f"FROM {image}: pin a tag or digest "
                                                  "(not 'latest', not empty)"))
            if len(words) >= 3 and words[-2].upper() == "AS":
                stages.add(words[-1])
        if keyword == "ADD" and re.search(r"\b(https?|ftp)://", arguments):
            problems.append(DockerfileProblem(number, "ADD of a URL: fetch through a package "
                                              "registry in a RUN step, or COPY"))
    final_stage = [(n, k, a) for n, k, a in parsed if n >= last_from]
    users = [(n, a) for n, k, a in final_stage if k == "USER"]
    if not users:
        problems.append(DockerfileProblem(last_from, "the final stage sets no USER (runs as "
                                          "root)"))
    else:
        number, user = users[-1]
        name = user.split(":")[0]
        if name in ("root", "0", ""):
            problems.append(DockerfileProblem(number, f"USER {user}: must not be root"))
    if not any(k == "HEALTHCHECK" and not a.upper().startswith("NONE") for _, k, a in parsed):
        problems.append(DockerfileProblem(1, "no HEALTHCHECK"))
    entrypoints = [(n, a) for n, k, a in final_stage if k == "ENTRYPOINT"]
    if not entrypoints:
        problems.append(DockerfileProblem(last_from, "no ENTRYPOINT"))
    else:
        number, entrypoint = entrypoints[-1]
        try:
            command = json.loads(entrypoint)
        except json.JSONDecodeError:
            command = entrypoint.split()
        if not command or Path(str(command[0])).name != "qustream":
            problems.append(DockerfileProblem(number, "ENTRYPOINT must run the qustream "
                                              "command (exec form)"))
    return problems


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else DOCKERFILE
    problems = lint(path.read_text())
    for problem in problems:
        print(f"{path}:{problem.line}: {problem.message}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
