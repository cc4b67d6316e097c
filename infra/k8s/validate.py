"""Render the Helm chart offline and validate every object: ``python -m infra.k8s.validate``.

For each values profile (values-dev.yaml, values-prod.yaml) the chart is rendered with the pinned
``helm template`` (installed by infra/k8s/install_tools.sh into .qustream/tools/bin, or into
``QUSTREAM_TOOLS_BIN`` when set: the script and this module read the same variable), every
object is checked against its schema (infra/k8s/schemas.py, unknown fields rejected) and against
QuStream's rules (infra/k8s/rules.py). The chart's topics block must also match the catalogue,
and its alertRules block the monitor's rules.
Exit status 0 when all is well, 1 with one line per problem otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from infra.helm import generate_rules, generate_topics
from infra.k8s.rules import Finding, check_rules, name_of
from infra.k8s.schemas import CRD_DIR, KUBE_VERSION, SchemaMissingError, schema_violations
from protocol.errors import OperationError

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "infra" / "helm" / "qustream"
PROFILES: tuple[str, ...] = ("values-dev.yaml", "values-prod.yaml")
TOOLS_BIN = REPO_ROOT / ".qustream" / "tools" / "bin"
INSTALL_SCRIPT = Path(__file__).resolve().parent / "install_tools.sh"
RELEASE = "qustream"
NAMESPACE = "qustream"


class RenderError(OperationError):
    """``helm template`` refused the chart with these values."""


def tools_bin() -> Path:
    """Where install_tools.sh puts helm: ``QUSTREAM_TOOLS_BIN``, else .qustream/tools/bin."""
    return Path(os.environ.get("QUSTREAM_TOOLS_BIN") or TOOLS_BIN)


def helm_binary() -> Path:
    """The pinned helm, built on first use (see install_tools.sh)."""
    subprocess.run(["bash", str(INSTALL_SCRIPT)], check=True)
    return tools_bin() / "helm"


def _helm_env(scratch: Path) -> dict[str, str]:
    """Helm's cache/config/data homes in a scratch folder: nothing is read from or left in ~."""
    homes = ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME")
    return {**os.environ, **{name: str(scratch / name.lower()) for name in homes}}


def render(values_files: Sequence[Path], extra_values: dict[str, Any] | None = None,
           chart: Path = CHART) -> list[dict[str, Any]]:
    """Every object ``helm template`` renders for the given values files (in order), then
    ``extra_values`` on top."""
    helm = helm_binary()
    with tempfile.TemporaryDirectory(prefix="qustream-helm-") as scratch:
        command = [str(helm), "template", RELEASE, str(chart), "--namespace", NAMESPACE,
                   "--kube-version", KUBE_VERSION]
        for values in values_files:
            command += ["--values", str(values)]
        if extra_values:
            extra = Path(scratch) / "extra-values.yaml"
            extra.write_text(yaml.safe_dump(extra_values))
            command += ["--values", str(extra)]
        env = _helm_env(Path(scratch))
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise RenderError(result.stderr.strip() or result.stdout.strip())
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [obj for obj in yaml.load_all(result.stdout, Loader=loader) if obj]


def lint(values_file: Path, chart: Path = CHART) -> str | None:
    """``helm lint --strict`` of the chart with one values file: its complaint, or None."""
    with tempfile.TemporaryDirectory(prefix="qustream-helm-") as scratch:
        env = _helm_env(Path(scratch))
        result = subprocess.run(
            [str(helm_binary()), "lint", "--strict", str(chart), "--values", str(values_file),
             "--kube-version", KUBE_VERSION, "--quiet"],
            capture_output=True, text=True, env=env, check=False)
    return None if result.returncode == 0 else (result.stdout + result.stderr).strip()


def validate_objects(objects: list[dict[str, Any]], crd_dir: Path = CRD_DIR) -> list[Finding]:
    """Schema violations of every object, then QuStream's rules over all of them."""
    findings: list[Finding] = []
    for obj in objects:
        try:
            violations = list(schema_violations(obj, crd_dir=crd_dir))
        except SchemaMissingError as exc:
            findings.append(Finding(name_of(obj), "apiVersion/kind", str(exc)))
            continue
        findings += [Finding(name_of(obj), v.path, f"schema: {v.message}") for v in violations]
    findings += check_rules(objects)
    return findings


def validate_profile(profile: str, extra_values: dict[str, Any] | None = None) -> list[Finding]:
    """Render the chart with one values profile (plus ``extra_values``) and validate it."""
    try:
        objects = render([CHART / profile], extra_values)
    except RenderError as exc:
        return [Finding(f"helm template ({profile})", "values", str(exc))]
    return validate_objects(objects)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profiles", nargs="*", default=list(PROFILES),
                        help="values files inside the chart (default: dev and prod)")
    parser.add_argument("--output-dir", type=Path,
                        help="also write each rendered profile to DIR/<profile>.yaml")
    args = parser.parse_args(argv)
    if not shutil.which("bash"):
        print("bash is required to install helm", file=sys.stderr)
        return 2
    failures = 0
    if generate_topics.main(["--check"]) != 0:
        failures += 1
    if generate_rules.main(["--check"]) != 0:
        failures += 1
    for profile in args.profiles:
        complaint = lint(CHART / profile)
        if complaint:
            print(f"FAIL {profile}: helm lint --strict:\n{complaint}")
            failures += 1
        try:
            objects = render([CHART / profile])
        except RenderError as exc:
            print(f"FAIL {profile}: helm template: {exc}")
            failures += 1
            continue
        if args.output_dir:
            args.output_dir.mkdir(parents=True, exist_ok=True)
            (args.output_dir / f"{profile}.rendered.yaml").write_text(
                yaml.safe_dump_all(objects, sort_keys=False))
        findings = validate_objects(objects)
        for finding in findings:
            print(f"FAIL {profile}: {finding}")
        failures += len(findings)
        kinds = sorted({o["kind"] for o in objects})
        status = "ok" if not findings else f"{len(findings)} problem(s)"
        print(f"{profile}: {len(objects)} objects ({', '.join(kinds)}): {status}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
