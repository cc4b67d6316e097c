"""Offline JSON schemas for every kind the chart renders, and validation against them.

- Core Kubernetes kinds: the strict (unknown fields rejected) schemas that the PyPI package
  ``kubernetes-validate`` ships for each Kubernetes minor version.
- Strimzi (Kafka, KafkaNodePool, KafkaTopic, KafkaUser), K8ssandra (K8ssandraCluster) and the
  Prometheus Operator (ServiceMonitor, PrometheusRule): the ``openAPIV3Schema`` of each CRD in
  ``CRD_DIR`` (``infra/k8s/crds/``, vendored with their source and version in its README, so a
  bare clone validates with nothing beside it), closed so that an unknown field is an error, as
  the API server's pruning would otherwise drop it silently.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import referencing
import referencing.jsonschema
import yaml

CRD_DIR = Path(__file__).resolve().parent / "crds"
KUBE_VERSION = "1.33.0"

# kind -> CRD file in CRD_DIR
CRD_FILES: dict[tuple[str, str], str] = {
    ("kafka.strimzi.io/v1", "Kafka"): "strimzi-040-Crd-kafka.yaml",
    ("kafka.strimzi.io/v1", "KafkaTopic"): "strimzi-043-Crd-kafkatopic.yaml",
    ("kafka.strimzi.io/v1", "KafkaUser"): "strimzi-044-Crd-kafkauser.yaml",
    ("kafka.strimzi.io/v1", "KafkaNodePool"): "strimzi-045-Crd-kafkanodepool.yaml",
    ("k8ssandra.io/v1alpha1", "K8ssandraCluster"): "k8ssandra.io_k8ssandraclusters.yaml",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.yaml",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_podmonitors.yaml",
}
# Fields the API server fills in or accepts on every object; CRD schemas leave them open.
_OBJECT_META_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
                 "maxLength": 253},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


class SchemaMissingError(LookupError):
    """No offline schema exists for an object's apiVersion and kind."""


@dataclass(frozen=True, slots=True)
class SchemaViolation:
    """One schema error, located by the field path inside the object."""

    path: str
    message: str


def close_schema(schema: Any) -> Any:
    """A copy of an OpenAPI v3 schema in which every object with ``properties`` and no
    ``additionalProperties`` / ``x-kubernetes-preserve-unknown-fields`` rejects unknown fields."""
    if isinstance(schema, list):
        return [close_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: close_schema(value) for key, value in schema.items()}
    if (
        "properties" in closed
        and "additionalProperties" not in closed
        and not closed.get("x-kubernetes-preserve-unknown-fields", False)
    ):
        closed["additionalProperties"] = False
    return closed


def _nullable_to_jsonschema(schema: Any) -> Any:
    """OpenAPI ``nullable: true`` means ``null`` is allowed too."""
    if isinstance(schema, list):
        return [_nullable_to_jsonschema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted = {key: _nullable_to_jsonschema(value) for key, value in schema.items()}
    if converted.get("nullable") is True and isinstance(converted.get("type"), str):
        converted["type"] = [converted["type"], "null"]
    return converted


def crd_schema(path: Path, api_version: str) -> dict[str, Any]:
    """The closed ``openAPIV3Schema`` of ``api_version`` from the CRD file at ``path``."""
    group, _, version = api_version.partition("/")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 10x faster on 2.5 MB
    for document in yaml.load_all(path.read_text(), Loader=loader):
        if not document or document.get("kind") != "CustomResourceDefinition":
            continue
        if document["spec"]["group"] != group:
            continue
        for entry in document["spec"]["versions"]:
            if entry["name"] == version:
                schema = close_schema(_nullable_to_jsonschema(entry["schema"]["openAPIV3Schema"]))
                schema["properties"]["metadata"] = _OBJECT_META_SCHEMA
                schema["required"] = sorted({*schema.get("required", ()), "spec"})
                return dict(schema)
    raise SchemaMissingError(f"{path}: no version {api_version} in the CRD")


def _kube_schema_dir(kube_version: str) -> Any:
    minor = ".".join(kube_version.split(".")[:2])
    try:
        package = resources.files("kubernetes_validate")
    except ModuleNotFoundError as exc:
        raise SchemaMissingError(
            "the Kubernetes schemas come from the kubernetes-validate package: "
            "pip install -e '.[dev]'"
        ) from exc
    directory = package / "kubernetes-json-schema" / f"v{minor}.0-local-strict"
    if not directory.is_dir():
        raise SchemaMissingError(
            f"kubernetes-validate ships no strict schemas for Kubernetes {minor}; "
            "pin the version named in pyproject.toml"
        )
    return directory


@cache
def _kube_registry(kube_version: str) -> referencing.Registry[Any]:
    definitions = json.loads((_kube_schema_dir(kube_version) / "_definitions.json").read_text())
    resource = referencing.Resource.from_contents(
        definitions, default_specification=referencing.jsonschema.DRAFT202012
    )
    # The per-kind files refer to "_definitions.json#/definitions/..."
    return referencing.Registry().with_resource("_definitions.json", resource).crawl()


def _core_schema_file(api_version: str, kind: str) -> str:
    group_version = api_version.split("/")
    if len(group_version) == 1:
        group, version = "", group_version[0]
    else:
        group, version = group_version
    short_group = group.split(".")[0]
    suffix = f"{short_group}-{version}" if short_group else version
    return f"{kind.lower()}-{suffix}.json"


@cache
def validator_for(api_version: str, kind: str, kube_version: str = KUBE_VERSION,
                  crd_dir: Path = CRD_DIR) -> jsonschema.protocols.Validator:
    """A compiled validator for one apiVersion/kind (cached: building one costs milliseconds)."""
    key = (api_version, kind)
    if key in CRD_FILES:
        path = crd_dir / CRD_FILES[key]
        if not path.is_file():
            raise SchemaMissingError(
                f"{kind}: CRD file {path} not found (the CRDs are vendored in infra/k8s/crds/)"
            )
        return jsonschema.Draft7Validator(crd_schema(path, api_version))
    schema_file = _kube_schema_dir(kube_version) / _core_schema_file(api_version, kind)
    if not schema_file.is_file():
        raise SchemaMissingError(
            f"{kind} ({api_version}): no schema for Kubernetes {kube_version}; "
            "the chart may only render kinds this validator knows"
        )
    schema = json.loads(schema_file.read_text())
    return jsonschema.Draft202012Validator(schema, registry=_kube_registry(kube_version))


def _path(error: jsonschema.ValidationError) -> str:
    parts = [f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path]
    return "".join(parts).lstrip(".") or "(object)"


def _best(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """For oneOf/anyOf failures, the most specific underlying error."""
    if error.context:
        return jsonschema.exceptions.best_match(error.context) or error
    return error


def schema_violations(obj: dict[str, Any], kube_version: str = KUBE_VERSION,
                      crd_dir: Path = CRD_DIR) -> Iterator[SchemaViolation]:
    """Every schema error of ``obj``, deepest first per branch, as (field path, message)."""
    validator = validator_for(obj.get("apiVersion", ""), obj.get("kind", ""), kube_version,
                              crd_dir)
    for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.path))):
        best = _best(error)
        yield SchemaViolation(_path(best), best.message)
