"""Pieces of the offline Kubernetes validation that need no helm: schema closing, the topics
block, the writer mapping and the Dockerfile lint."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.docker.lint import lint
from infra.helm import generate_topics
from infra.helm.access import WRITER_ROLES, UnmappedWriterError, writer_roles
from infra.helm.values_block import VALUES_FILE
from infra.k8s.schemas import CRD_DIR, close_schema, crd_schema, schema_violations
from streams.topics import CATALOGUE, TopicSpec

DOCKERFILE = Path(__file__).resolve().parents[2] / "infra" / "docker" / "Dockerfile"


def test_close_schema_rejects_unknown_fields_only_where_the_crd_does_not_allow_them() -> None:
    schema = {
        "type": "object",
        "properties": {
            "spec": {"type": "object", "properties": {"a": {"type": "string"}}},
            "config": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                       "properties": {"b": {"type": "string"}}},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    closed = close_schema(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["spec"]["additionalProperties"] is False
    assert "additionalProperties" not in closed["properties"]["config"]
    assert closed["properties"]["labels"]["additionalProperties"] == {"type": "string"}
    assert "additionalProperties" not in schema  # the input is not modified


def test_every_vendored_crd_is_readable() -> None:
    for name, version in (("strimzi-040-Crd-kafka.yaml", "kafka.strimzi.io/v1"),
                          ("k8ssandra.io_k8ssandraclusters.yaml", "k8ssandra.io/v1alpha1")):
        schema = crd_schema(CRD_DIR / name, version)
        assert schema["properties"]["spec"]["additionalProperties"] is False


def test_a_strimzi_typo_is_named_with_its_path() -> None:
    topic = {"apiVersion": "kafka.strimzi.io/v1", "kind": "KafkaTopic",
             "metadata": {"name": "qs-chain-blocks", "labels": {"strimzi.io/cluster": "k"}},
             "spec": {"topicName": "qs.chain.blocks", "partitons": 1, "replicas": 3}}
    violations = list(schema_violations(topic))
    assert [(v.path, "'partitons' was unexpected" in v.message) for v in violations] == [
        ("spec", True)]


def test_a_missing_crd_directory_is_a_clear_error(tmp_path: Path) -> None:
    from infra.k8s.schemas import SchemaMissingError
    kafka = {"apiVersion": "kafka.strimzi.io/v1", "kind": "Kafka", "metadata": {"name": "k"},
             "spec": {}}
    with pytest.raises(SchemaMissingError, match="vendored in infra/k8s/crds"):
        list(schema_violations(kafka, crd_dir=tmp_path))


def test_values_topics_block_is_generated_from_the_catalogue() -> None:
    assert generate_topics.main(["--check"]) == 0, "run: python -m infra.helm.generate_topics"


def test_a_stale_topics_block_is_detected(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    stale = VALUES_FILE.read_text().replace("partitions: 12", "partitions: 24")
    values.write_text(stale)
    assert generate_topics.main(["--check", "--values", str(values)]) == 1


def test_every_catalogue_writer_has_chart_roles() -> None:
    for topic in CATALOGUE:
        assert writer_roles(topic), topic.name
    assert set(WRITER_ROLES) >= {t.writer for t in CATALOGUE}


def test_an_unknown_writer_is_refused() -> None:
    topic = TopicSpec("new.topic", 1, "k", "somebody new", ())
    with pytest.raises(UnmappedWriterError, match="somebody new"):
        writer_roles(topic)


def test_the_dockerfile_passes_its_lint() -> None:
    assert [str(p) for p in lint(DOCKERFILE.read_text())] == []


@pytest.mark.parametrize(("change", "expected"), [
    (("USER 10001:10001", "USER root"), "must not be root"),
    (("USER 10001:10001\n", ""), "sets no USER"),
    (("FROM python:3.11-slim-bookworm\nARG", "FROM python:latest\nARG"), "pin a tag"),
    (("FROM python:3.11-slim-bookworm AS build", "FROM python AS build"), "pin a tag"),
    (("COPY infra/docker/healthcheck.py", "ADD https://example.com/x.py"), "ADD of a URL"),
    (('CMD ["python", "/opt/qustream/healthcheck.py"]', "NONE"), "no HEALTHCHECK"),
    (('ENTRYPOINT ["qustream"]', 'ENTRYPOINT ["bash"]'), "ENTRYPOINT must run the qustream"),
])
def test_the_dockerfile_lint_catches(change: tuple[str, str], expected: str) -> None:
    old, new = change
    text = DOCKERFILE.read_text()
    assert old in text
    broken = text.replace(old, new)
    if new == "NONE":
        broken = broken.replace("HEALTHCHECK --interval", "HEALTHCHECK NONE #")
    assert any(expected in str(p) for p in lint(broken)), lint(broken)


def test_the_crds_are_vendored_with_their_source_noted() -> None:
    from infra.k8s.schemas import CRD_FILES

    readme = (CRD_DIR / "README.md").read_text()
    assert CRD_DIR.is_relative_to(Path(__file__).resolve().parents[2])  # inside the repository
    for name in sorted(set(CRD_FILES.values())):
        assert (CRD_DIR / name).is_file(), name
        assert name in readme, f"{name}: say its source project and version in the README"
    assert "Apache" in readme
