"""Finding the tools the embedded cluster needs: a Java 17 runtime and Maven."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from infra.local.errors import JavaNotFoundError, MavenNotFoundError

REQUIRED_JAVA_MAJOR = 17
JVM_ROOT = Path("/usr/lib/jvm")

_INSTALL_JAVA = "install it with `apt-get install openjdk-17-jre-headless`"
_INSTALL_MAVEN = "install it with `apt-get install maven`"


def java_major_version(java_home: Path) -> int | None:
    """The major version of the JDK/JRE at ``java_home``, or None when it is not a Java home."""
    if not (java_home / "bin" / "java").is_file():
        return None
    release = java_home / "release"
    text = ""
    if release.is_file():
        text = release.read_text(errors="replace")
    else:
        # Some distributions ship no `release` file; `java -version` always answers (on stderr).
        try:
            done = subprocess.run([str(java_home / "bin" / "java"), "-version"],
                                  capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        text = done.stderr
    match = re.search(r'version[=\s]+"(\d+)(?:\.(\d+))?', text, re.IGNORECASE)
    if not match:
        return None
    major = int(match.group(1))
    # Java 8 and older report "1.8"; nothing that old runs these servers anyway.
    return int(match.group(2) or 0) if major == 1 else major


def _candidates(configured: str | None, environ: Mapping[str, str],
                jvm_root: Path) -> Iterable[tuple[str, Path]]:
    if configured:
        yield "settings.infra.java_home", Path(configured)
    if environ.get("JAVA_HOME"):
        yield "JAVA_HOME", Path(environ["JAVA_HOME"])
    if jvm_root.is_dir():
        for home in sorted(jvm_root.glob(f"*{REQUIRED_JAVA_MAJOR}*")):
            yield str(jvm_root), home


def find_java_home(configured: str | None = None, environ: Mapping[str, str] | None = None,
                   jvm_root: Path = JVM_ROOT) -> Path:
    """The Java 17 home to run the servers with.

    Order: the configured ``java_home`` (which must be 17: a wrong explicit choice is an error,
    not something to silently override), then ``JAVA_HOME`` if it is 17, then ``/usr/lib/jvm``.
    Newer JDKs are skipped on purpose: Cassandra 5.0 fails on Java 24+.
    """
    environ = os.environ if environ is None else environ
    for source, home in _candidates(configured, environ, jvm_root):
        major = java_major_version(home)
        if major == REQUIRED_JAVA_MAJOR:
            return home.resolve()
        if source == "settings.infra.java_home":
            raise JavaNotFoundError(
                f"{source} is {home}, which is Java {major or 'not a Java home'}; "
                f"the embedded cluster needs Java {REQUIRED_JAVA_MAJOR} ({_INSTALL_JAVA})"
            )
    raise JavaNotFoundError(
        f"no Java {REQUIRED_JAVA_MAJOR} found (looked at QUSTREAM_INFRA_JAVA_HOME, JAVA_HOME and "
        f"{jvm_root}/*{REQUIRED_JAVA_MAJOR}*); {_INSTALL_JAVA}"
    )


def find_maven() -> Path:
    """The `mvn` executable on PATH."""
    found = shutil.which("mvn")
    if not found:
        raise MavenNotFoundError(f"Maven (`mvn`) is not on PATH; {_INSTALL_MAVEN}")
    return Path(found)
