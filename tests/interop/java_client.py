"""Build and run the Java interoperability program (``tests/interop/java``).

The program is a project file, not fetched code: a pom depending on ``org.apache.avro:avro`` and
``org.apache.kafka:kafka-clients`` from Maven Central (cached in ``~/.m2`` after the first build)
and one class. It is built with ``mvn -B -q`` into ``.qustream/interop-java`` and run with the
Java 17 that runs the embedded cluster. Each run takes a JSON config and prints one JSON object.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from infra.local.java import find_java_home, find_maven

ROOT = Path(__file__).resolve().parents[2]
PROJECT = Path(__file__).resolve().parent / "java"
BUILD = ROOT / ".qustream" / "interop-java"
MAIN_CLASS = "io.qustream.interop.Interop"


def build(timeout_s: float = 900) -> str:
    """Compile the program (the first build downloads its jars); returns its classpath."""
    java_home = find_java_home()
    if not (java_home / "bin" / "javac").is_file():
        raise RuntimeError(f"{java_home} is a Java runtime without a compiler: the interop test "
                           "needs a JDK (apt-get install openjdk-17-jdk-headless)")
    done = subprocess.run(
        [str(find_maven()), "-B", "-q", "-f", str(PROJECT / "pom.xml"),
         f"-Dinterop.target={BUILD}", "compile"],
        capture_output=True, text=True, timeout=timeout_s,
        env={**os.environ, "JAVA_HOME": str(java_home)}, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"mvn could not build {PROJECT}:\n{done.stdout[-4000:]}"
                           f"{done.stderr[-4000:]}")
    return f"{BUILD / 'classes'}{os.pathsep}{BUILD / 'lib' / '*'}"


def run(classpath: str, mode: str, config: dict[str, Any], timeout_s: float = 300) -> Any:
    """Run ``Interop <mode> <config>``; returns its JSON result."""
    java = find_java_home() / "bin" / "java"
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(config, handle)
    try:
        done = subprocess.run([str(java), "-cp", classpath, MAIN_CLASS, mode, handle.name],
                              capture_output=True, text=True, timeout=timeout_s, check=False)
    finally:
        os.unlink(handle.name)
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"java {mode} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
