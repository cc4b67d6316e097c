"""The Helm chart renders for both profiles and passes every schema and rule; deliberately
broken values make the validation fail with a message naming the object and field.

Rendering uses the pinned helm from infra/k8s/install_tools.sh (built on first use).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from infra.k8s.rules import Finding
from infra.k8s.validate import CHART, PROFILES, RenderError, render, validate_objects

Objects = list[dict[str, Any]]


@pytest.fixture(scope="module")
def rendered() -> dict[str, Objects]:
    return {profile: render([CHART / profile]) for profile in PROFILES}


def _messages(findings: list[Finding]) -> list[str]:
    return [str(f) for f in findings]


def _broken(objects: Objects, kind: str, change: Callable[[dict[str, Any]], None],
            name_part: str = "") -> Objects:
    result = copy.deepcopy(objects)
    target = next(o for o in result
                  if o["kind"] == kind and name_part in o["metadata"]["name"])
    change(target)
    return result


@pytest.mark.parametrize("profile", PROFILES)
def test_profile_renders_and_validates(rendered: dict[str, Objects], profile: str) -> None:
    objects = rendered[profile]
    assert _messages(validate_objects(objects)) == []
    kinds = {o["kind"] for o in objects}
    assert kinds >= {"Deployment", "StatefulSet", "Kafka", "KafkaNodePool", "KafkaTopic",
                     "KafkaUser", "K8ssandraCluster", "NetworkPolicy", "PodDisruptionBudget",
                     "HorizontalPodAutoscaler", "ServiceMonitor", "Ingress", "Service"}
    assert "Secret" not in kinds


def test_prod_runs_one_statefulset_per_validator(rendered: dict[str, Objects]) -> None:
    validators = [o for o in rendered["values-prod.yaml"] if o["kind"] == "StatefulSet"
                  and o["metadata"]["labels"]["app.kubernetes.io/component"] == "validator"]
    assert len(validators) == 4
    assert {v["spec"]["replicas"] for v in validators} == {1}


def test_a_typo_in_a_strimzi_field_from_values_fails() -> None:
    pools = [{"name": "dual", "replicas": 3, "roles": ["controller", "broker"],
              "storage": {"type": "persistent-claim", "sise": "5Gi"},
              "resources": {"requests": {"cpu": "1", "memory": "1Gi"},
                            "limits": {"cpu": "1", "memory": "1Gi"}}}]
    objects = render([CHART / "values-dev.yaml"], {"kafka": {"nodePools": pools}})
    messages = _messages(validate_objects(objects))
    assert any(m.startswith("KafkaNodePool/dual: spec.storage: schema:")
               and "'sise' was unexpected" in m for m in messages), messages


def test_a_typo_in_the_kafka_spec_fails(rendered: dict[str, Objects]) -> None:
    def typo(kafka: dict[str, Any]) -> None:
        kafka["spec"]["kafka"]["listners"] = kafka["spec"]["kafka"].pop("listeners")

    messages = _messages(validate_objects(_broken(rendered["values-dev.yaml"], "Kafka", typo)))
    assert any(m.startswith("Kafka/qustream-kafka: spec.kafka: schema:")
               and "'listners' was unexpected" in m for m in messages), messages


def test_a_validator_with_two_replicas_fails(rendered: dict[str, Objects]) -> None:
    def two(statefulset: dict[str, Any]) -> None:
        statefulset["spec"]["replicas"] = 2

    objects = _broken(rendered["values-prod.yaml"], "StatefulSet", two, "validator-1")
    messages = _messages(validate_objects(objects))
    assert messages == [
        "StatefulSet/qustream-validator-validator-1: spec.replicas: is 2; a validator identity "
        "runs exactly one replica (two pods with one key would double-sign)"]


def test_two_validators_sharing_a_key_fail_at_render_time() -> None:
    nodes = [{"name": "validator-0", "keySecret": "shared-key"},
             {"name": "validator-1", "keySecret": "shared-key"}]
    with pytest.raises(RenderError, match="validator-0 and validator-1 share key Secret"):
        render([CHART / "values-dev.yaml"], {"validators": {"nodes": nodes}})


def test_two_validators_sharing_a_key_fail_the_rules(rendered: dict[str, Objects]) -> None:
    def same_key(statefulset: dict[str, Any]) -> None:
        for volume in statefulset["spec"]["template"]["spec"]["volumes"]:
            if volume["name"] == "key":
                volume["secret"]["secretName"] = "qustream-validator-0-key"

    objects = _broken(rendered["values-prod.yaml"], "StatefulSet", same_key, "validator-2")
    messages = _messages(validate_objects(objects))
    assert any("validator-2" in m and "also used by" in m for m in messages), messages


def test_a_topic_with_a_different_partition_count_fails() -> None:
    objects = render([CHART / "values-dev.yaml"],
                     {"topics": {"users.events": {"partitions": 24}}})
    messages = _messages(validate_objects(objects))
    assert messages == [
        "KafkaTopic/qs-users-events: spec.partitions: is 24, the catalogue "
        "(streams/topics.py) says 12 for users.events"]


def test_a_topic_config_drift_fails(rendered: dict[str, Objects]) -> None:
    def unsafe(topic: dict[str, Any]) -> None:
        topic["spec"]["config"]["unclean.leader.election.enable"] = "true"
        topic["spec"]["config"]["min.insync.replicas"] = "1"

    objects = _broken(rendered["values-dev.yaml"], "KafkaTopic", unsafe, "chain-blocks")
    messages = _messages(validate_objects(objects))
    assert "KafkaTopic/qs-chain-blocks: spec.config.min.insync.replicas: must be 2" in messages
    assert ("KafkaTopic/qs-chain-blocks: spec.config.unclean.leader.election.enable: "
            "must be 'false'") in messages


def test_a_missing_topic_fails(rendered: dict[str, Objects]) -> None:
    objects = [o for o in rendered["values-dev.yaml"]
               if o["metadata"]["name"] != "qs-chain-evidence"]
    assert _messages(validate_objects(objects)) == [
        "chart: topics.chain.evidence: catalogue topic 'qs.chain.evidence' has no KafkaTopic"]


def test_a_service_writing_a_topic_it_does_not_own_fails(rendered: dict[str, Objects]) -> None:
    def grant(user: dict[str, Any]) -> None:
        user["spec"]["authorization"]["acls"].append({
            "type": "allow", "operations": ["Write"],
            "resource": {"type": "topic", "name": "qs.chain.blocks", "patternType": "literal"}})

    objects = _broken(rendered["values-dev.yaml"], "KafkaUser", grant, "gateway")
    messages = _messages(validate_objects(objects))
    assert messages == ["KafkaUser/qustream-gateway: spec.authorization.acls: may write "
                        "'qs.chain.blocks', but its catalogue writer is 'tally'"]


def test_a_container_without_limits_fails(rendered: dict[str, Objects]) -> None:
    with pytest.raises(RenderError, match="'/tally/resources': missing property 'limits'"):
        render([CHART / "values-dev.yaml"], {"tally": {"resources": {"limits": None}}})

    def unlimited(deployment: dict[str, Any]) -> None:
        deployment["spec"]["template"]["spec"]["containers"][0]["resources"].pop("limits")

    objects = _broken(rendered["values-dev.yaml"], "Deployment", unlimited, "tally")
    messages = _messages(validate_objects(objects))
    assert any(m.startswith("Deployment/qustream-tally: spec.template.spec.containers[0] "
                            "(tally).resources.limits.cpu: missing") for m in messages), messages


def test_a_root_or_writable_container_fails(rendered: dict[str, Objects]) -> None:
    def loosen(deployment: dict[str, Any]) -> None:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        container["securityContext"].update(
            {"runAsNonRoot": False, "readOnlyRootFilesystem": False,
             "allowPrivilegeEscalation": True})

    objects = _broken(rendered["values-dev.yaml"], "Deployment", loosen, "gateway")
    messages = _messages(validate_objects(objects))
    for field in ("runAsNonRoot", "readOnlyRootFilesystem", "allowPrivilegeEscalation"):
        assert any(f"securityContext.{field}" in m for m in messages), (field, messages)


def test_an_inlined_secret_fails(rendered: dict[str, Objects]) -> None:
    def inline(deployment: dict[str, Any]) -> None:
        env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        for entry in env:
            if entry["name"] == "QUSTREAM_KAFKA_SASL_PASSWORD":
                entry.pop("valueFrom")
                entry["value"] = "hunter2"

    objects = _broken(rendered["values-dev.yaml"], "Deployment", inline, "shard-writer")
    messages = _messages(validate_objects(objects))
    assert any("QUSTREAM_KAFKA_SASL_PASSWORD" in m and "never inlined" in m
               for m in messages), messages


def test_a_plaintext_kafka_listener_fails(rendered: dict[str, Objects]) -> None:
    def plaintext(kafka: dict[str, Any]) -> None:
        listener = kafka["spec"]["kafka"]["listeners"][0]
        listener["tls"] = False
        listener.pop("authentication")

    messages = _messages(validate_objects(_broken(rendered["values-dev.yaml"], "Kafka",
                                                  plaintext)))
    assert "Kafka/qustream-kafka: spec.kafka.listeners[0].tls: must be true" in messages
    assert ("Kafka/qustream-kafka: spec.kafka.listeners[0].authentication.type: "
            "must be scram-sha-512") in messages


def test_a_workload_outside_the_default_deny_fails(rendered: dict[str, Objects]) -> None:
    objects = [o for o in rendered["values-dev.yaml"]
               if o["metadata"]["name"] != "qustream-default-deny"]
    messages = _messages(validate_objects(objects))
    assert messages and all("no default-deny NetworkPolicy" in m for m in messages)


def test_shard_writers_must_divide_the_partitions() -> None:
    objects = render([CHART / "values-dev.yaml"], {"shardWriter": {"replicas": 5}})
    assert _messages(validate_objects(objects)) == [
        "Deployment/qustream-shard-writer: spec.replicas: is 5; it must divide the 12 "
        "partitions of users.events so each instance hosts as many shards"]


def test_a_replicas_value_for_a_validator_is_refused_by_the_values_schema() -> None:
    nodes = [{"name": "validator-0", "keySecret": "k0", "replicas": 2}]
    with pytest.raises(RenderError, match="'/validators/nodes/0': additional properties "
                                          "'replicas' not allowed"):
        render([CHART / "values-dev.yaml"], {"validators": {"nodes": nodes}})


def test_a_misspelt_value_is_refused_by_the_values_schema() -> None:
    with pytest.raises(RenderError, match="additional properties 'gatway' not allowed"):
        render([CHART / "values-dev.yaml"], {"gatway": {"replicas": 3}})


def test_the_chart_can_create_the_genesis_configmap() -> None:
    objects = render([CHART / "values-dev.yaml"],
                     {"genesis": {"create": True, "json": '{"chain_id": "qustream-dev"}'}})
    assert _messages(validate_objects(objects)) == []
    configmap = next(o for o in objects if o["kind"] == "ConfigMap"
                     and o["metadata"]["name"] == "qustream-genesis")
    assert configmap["data"]["genesis.json"] == '{"chain_id": "qustream-dev"}'


def test_the_command_line_validates_both_profiles(capsys: pytest.CaptureFixture[str]) -> None:
    from infra.k8s.validate import main

    assert main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == list(PROFILES)
    assert all(line.endswith(": ok") for line in lines)


def test_the_gateway_listens_on_every_interface_of_its_pod(rendered: dict[str, Objects]) -> None:
    """The gateway binds loopback unless told otherwise; in a pod the Service must reach it."""
    for objects in rendered.values():
        gateway = next(o for o in objects if o["kind"] == "Deployment"
                       and o["metadata"]["labels"]["app.kubernetes.io/component"] == "gateway")
        args = gateway["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[args.index("--host") + 1] == "0.0.0.0", args


def _qrng_args(objects: Objects) -> dict[str, list[str]]:
    """The ``qustream`` arguments of each QRNG StatefulSet, by its name."""
    return {o["metadata"]["name"]: o["spec"]["template"]["spec"]["containers"][0]["args"]
            for o in objects if o["kind"] == "StatefulSet"
            and o["metadata"]["labels"]["app.kubernetes.io/component"] == "qrng"}


def test_a_qrng_server_publishes_as_its_registered_source_id(
        rendered: dict[str, Objects]) -> None:
    """``qrng run`` needs the id the genesis registers: ``sourceId``, else the name. The prod
    profile's ids are those ``qustream genesis new`` writes (docs/deploy-kubernetes.md)."""
    ids = {profile: sorted(args[args.index("--source-id") + 1]
                           for args in _qrng_args(objects).values())
           for profile, objects in rendered.items()}
    assert ids == {"values-dev.yaml": ["sim-0"], "values-prod.yaml": ["qrng-0", "qrng-1"]}


def test_every_rendered_qrng_source_is_a_spec_qrng_run_accepts(
        rendered: dict[str, Objects]) -> None:
    """The chart's ``--source`` values are the command's own specs (``file:`` for a device):
    the prod profile once said ``device:/dev/qrng0``, which ``qrng run`` refuses at start."""
    from services.qrng_ingest.sources import SourceError, SourceSpecError, parse_source

    for profile, objects in rendered.items():
        for name, args in _qrng_args(objects).items():
            spec = args[args.index("--source") + 1]
            try:
                parse_source(spec).close()
            except SourceSpecError as exc:
                raise AssertionError(f"{profile} {name}: {spec!r} refused: {exc}") from exc
            except SourceError:
                assert spec.startswith("file:"), (profile, name, spec)  # no device here


def test_a_source_with_lanes_runs_one_statefulset_per_lane() -> None:
    """``lanes: 2``: two lane workloads of one device, each ``qrng run --lanes 2 --lane k``,
    with selectors of their own; the device's appliance egress still reaches every lane."""
    sources = [{"name": "sim-0", "source": "sim", "keySecret": "qustream-qrng-sim-0-key"},
               {"name": "appliance-0", "sourceId": "qrng-1", "lanes": 2,
                "source": "https://qrng.example.com/stream",
                "keySecret": "qustream-qrng-appliance-0-key", "applianceCidr": "10.0.0.9/32"}]
    objects = render([CHART / "values-dev.yaml"], {"qrng": {"sources": sources}})
    assert _messages(validate_objects(objects)) == []
    args = _qrng_args(objects)
    assert sorted(args) == ["qustream-qrng-appliance-0-lane-0", "qustream-qrng-appliance-0-lane-1",
                            "qustream-qrng-sim-0"]
    for lane in (0, 1):
        lane_args = args[f"qustream-qrng-appliance-0-lane-{lane}"]
        assert lane_args[lane_args.index("--source-id"):] == [
            "--source-id", "qrng-1", "--lanes", "2", "--lane", str(lane)]
    assert "--lanes" not in args["qustream-qrng-sim-0"]  # one lane: the source as before
    lanes = [o for o in objects if o["kind"] == "StatefulSet"
             and o["metadata"]["name"].startswith("qustream-qrng-appliance-0-lane-")]
    selectors = [o["spec"]["selector"]["matchLabels"] for o in lanes]
    assert [s["qustream.io/qrng-lane"] for s in selectors] == ["0", "1"]
    egress = next(o for o in objects if o["kind"] == "NetworkPolicy"
                  and o["metadata"]["name"] == "qustream-allow-qrng-appliance-0-appliance")
    for workload in lanes:
        pod_labels = workload["spec"]["template"]["metadata"]["labels"]
        assert pod_labels["qustream.io/qrng-source"] == "appliance-0"
        assert egress["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
