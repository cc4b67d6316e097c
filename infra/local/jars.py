"""Resolving the server jars from Maven Central with a tiny pom per server."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from infra.local.errors import JarResolutionError
from infra.local.java import find_maven

POM_DIR = Path(__file__).resolve().parent
# Maven 3.8's default dependency plugin is old; pin the one whose flags we rely on.
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies"
_MARKER = ".resolved"


def resolved_version(libs: Path) -> str | None:
    """The version the jars in ``libs`` were resolved for, or None if not (fully) resolved."""
    try:
        return (libs / _MARKER).read_text().strip() or None
    except OSError:
        return None


def maven_command(mvn: Path, component: str, version: str, output: Path) -> list[str]:
    return [str(mvn), "-B", "-q", "-f", str(POM_DIR / f"{component}.pom.xml"), DEPENDENCY_PLUGIN,
            "-DincludeScope=runtime", f"-DoutputDirectory={output}",
            f"-D{component}.version={version}"]


def resolve_jars(component: str, version: str, libs: Path, java_home: Path) -> bool:
    """Make ``libs`` hold the runtime jars of ``component`` at ``version``.

    Skips the work when they already are; returns True when Maven ran. Jars are copied into a
    sibling folder first and renamed into place, so an interrupted run never leaves a partial
    folder that looks resolved.
    """
    if resolved_version(libs) == version:
        return False
    mvn = find_maven()
    staging = libs.with_name(libs.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    command = maven_command(mvn, component, version, staging)

    env = {**os.environ, "JAVA_HOME": str(java_home)}
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False,
                              cwd=staging, timeout=1800)
    except subprocess.TimeoutExpired as exc:
        raise JarResolutionError(f"Maven took over 30 minutes to resolve {component}") from exc
    if done.returncode != 0:
        detail = (done.stdout + done.stderr).strip().splitlines()[-15:]
        raise JarResolutionError(
            f"Maven could not resolve {component} {version} from Maven Central "
            f"(exit {done.returncode}):\n" + "\n".join(detail)
        )
    (staging / _MARKER).write_text(version + "\n")
    shutil.rmtree(libs, ignore_errors=True)
    staging.replace(libs)
    return True
