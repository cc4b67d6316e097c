"""QuStream's own rules for the rendered chart, on top of the schemas.

Each rule takes every rendered object and yields ``Finding``s naming the object and field. The
expectations come from code, not from the chart: topics and their writers from the catalogue
(streams/topics.py, infra/helm/access.py), the security posture from DESIGN.md and issue 9.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from infra.helm.access import ROLES, topics_written_by
from infra.k8s.metrics import is_exported, query_metrics
from services.monitor.core.rules import RULES as MONITOR_RULES
from streams.topics import BY_NAME, CATALOGUE

Object = dict[str, Any]
REPLICATION_FACTOR = 3
MIN_INSYNC_REPLICAS = "2"
COMPONENT = "app.kubernetes.io/component"
WORKLOAD_KINDS = ("Deployment", "StatefulSet")
SECRET_LIKE = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL|PRIVATE|_KEY$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Finding:
    """A broken rule: which object, which field, what is wrong."""

    obj: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.obj}: {self.field}: {self.message}"


def name_of(obj: Mapping[str, Any]) -> str:
    return f"{obj.get('kind', '?')}/{obj.get('metadata', {}).get('name', '?')}"


def _of_kind(objects: Iterable[Object], *kinds: str) -> list[Object]:
    return [o for o in objects if o.get("kind") in kinds]


def _pod_spec(workload: Object) -> Object:
    spec: Object = workload.get("spec", {}).get("template", {}).get("spec", {})
    return spec


def _pod_labels(workload: Object) -> dict[str, str]:
    labels: dict[str, str] = workload.get("spec", {}).get("template", {}).get(
        "metadata", {}).get("labels", {})
    return labels


def _component(workload: Object) -> str:
    return _pod_labels(workload).get(COMPONENT, "")


def _containers(pod: Object) -> Iterator[tuple[str, Object]]:
    for field in ("initContainers", "containers"):
        for index, container in enumerate(pod.get(field, [])):
            yield f"spec.template.spec.{field}[{index}]", container


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get(
            "values", [])
        present = key in labels
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _env(container: Object) -> dict[str, Object]:
    return {entry["name"]: entry for entry in container.get("env", [])}


# --- containers -----------------------------------------------------------------------------


def containers_are_hardened(objects: list[Object]) -> Iterator[Finding]:
    """Limits and requests, non-root, read-only root filesystem, no privilege escalation,
    a pinned image, and no secret passed as a literal environment value."""
    for workload in _of_kind(objects, *WORKLOAD_KINDS):
        pod = _pod_spec(workload)
        pod_context = pod.get("securityContext", {})
        for field, container in _containers(pod):
            where = f"{field} ({container.get('name')})"
            resources = container.get("resources", {})
            for part in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in resources.get(part, {}):
                        yield Finding(name_of(workload), f"{where}.resources.{part}.{resource}",
                                      "missing: every container needs requests and limits")
            context = container.get("securityContext", {})
            non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
            user = context.get("runAsUser", pod_context.get("runAsUser"))
            if non_root is not True or user == 0:
                yield Finding(name_of(workload), f"{where}.securityContext.runAsNonRoot",
                              "must be true (and runAsUser not 0)")
            if context.get("readOnlyRootFilesystem") is not True:
                yield Finding(name_of(workload), f"{where}.securityContext.readOnlyRootFilesystem",
                              "must be true")
            if context.get("allowPrivilegeEscalation") is not False:
                yield Finding(name_of(workload),
                              f"{where}.securityContext.allowPrivilegeEscalation",
                              "must be false")
            if context.get("privileged") is True:
                yield Finding(name_of(workload), f"{where}.securityContext.privileged",
                              "must not be true")
            image = str(container.get("image", ""))
            tag = image.rsplit("@", 1)[0].rsplit("/", 1)[-1].partition(":")[2]
            if "@sha256:" not in image and tag in ("", "latest"):
                yield Finding(name_of(workload), f"{where}.image",
                              f"{image!r} is not pinned (no tag, or 'latest')")
            for index, entry in enumerate(container.get("env", [])):
                if SECRET_LIKE.search(entry["name"]) and "value" in entry:
                    yield Finding(name_of(workload), f"{where}.env[{index}] ({entry['name']})",
                                  "a secret must come from a secretKeyRef, never inlined")


def no_secrets_rendered(objects: list[Object]) -> Iterator[Finding]:
    for obj in _of_kind(objects, "Secret"):
        yield Finding(name_of(obj), "kind", "the chart must reference Secrets, never render one")


# --- validators and singletons -------------------------------------------------------


def _key_secret(workload: Object) -> str | None:
    for volume in _pod_spec(workload).get("volumes", []):
        if volume.get("name") == "key" and "secret" in volume:
            name: str = volume["secret"].get("secretName", "")
            return name
    return None


def validators_are_single_and_distinct(objects: list[Object]) -> Iterator[Finding]:
    """One pod per validator identity: a StatefulSet with replicas 1, its own key Secret, and
    its double-sign guard state on a persistent volume."""
    owners: dict[str, str] = {}
    workloads = _of_kind(objects, *WORKLOAD_KINDS)
    validators = [w for w in workloads if _component(w) == "validator"]
    if not validators:
        yield Finding("chart", "validators.nodes", "no validator StatefulSet rendered")
    for workload in validators:
        name = name_of(workload)
        if workload["kind"] != "StatefulSet":
            yield Finding(name, "kind", "a validator must be a StatefulSet (a Deployment can "
                          "surge a second pod with the same key)")
        replicas = workload.get("spec", {}).get("replicas", 1)
        if replicas != 1:
            yield Finding(name, "spec.replicas",
                          f"is {replicas}; a validator identity runs exactly one replica "
                          "(two pods with one key would double-sign)")
        key = _key_secret(workload)
        if key is None:
            yield Finding(name, "spec.template.spec.volumes",
                          "no 'key' volume from a Secret holds the validator key")
        elif key in owners:
            yield Finding(name, "spec.template.spec.volumes[key].secret.secretName",
                          f"key Secret {key!r} is also used by {owners[key]}; each validator "
                          "needs its own key")
        else:
            owners[key] = name
        claims = [c.get("metadata", {}).get("name")
                  for c in workload.get("spec", {}).get("volumeClaimTemplates", [])]
        if "state" not in claims:
            yield Finding(name, "spec.volumeClaimTemplates",
                          "the double-sign guard state needs a persistent 'state' claim")
    for workload in workloads:
        if _component(workload) in ("tally", "qrng") and workload["spec"].get("replicas", 1) != 1:
            yield Finding(name_of(workload), "spec.replicas", "must be 1 for this role")


def genesis_is_mounted(objects: list[Object]) -> Iterator[Finding]:
    for workload in _of_kind(objects, *WORKLOAD_KINDS):
        if _component(workload) not in ("validator", "tally"):
            continue
        for field, container in _containers(_pod_spec(workload)):
            args = container.get("args", [])
            if "--genesis" not in args:
                yield Finding(name_of(workload), f"{field}.args", "missing --genesis")
            mounts = {m.get("mountPath") for m in container.get("volumeMounts", [])}
            if "/etc/qustream/genesis.json" not in mounts:
                yield Finding(name_of(workload), f"{field}.volumeMounts",
                              "the genesis ConfigMap is not mounted at /etc/qustream/genesis.json")


def shard_writers_fit_partitions(objects: list[Object]) -> Iterator[Finding]:
    partitions = BY_NAME["users.events"].partitions
    for workload in _of_kind(objects, "Deployment"):
        if _component(workload) != "shard-writer":
            continue
        replicas = workload["spec"].get("replicas", 1)
        if replicas < 1 or replicas > partitions or partitions % replicas:
            yield Finding(name_of(workload), "spec.replicas",
                          f"is {replicas}; it must divide the {partitions} partitions of "
                          "users.events so each instance hosts as many shards")


# --- Kafka ------------------------------------------------------------------------------------


def _topic_prefix(objects: list[Object]) -> str:
    for workload in _of_kind(objects, *WORKLOAD_KINDS):
        for _, container in _containers(_pod_spec(workload)):
            entry = _env(container).get("QUSTREAM_TOPIC_PREFIX")
            if entry and "value" in entry:
                return str(entry["value"])
    return "qs."


def topics_match_catalogue(objects: list[Object]) -> Iterator[Finding]:
    """Every catalogue topic has a KafkaTopic with the same partitions and configs, replication
    3, min.insync.replicas 2 and no unclean leader election; no topic outside the catalogue."""
    prefix = _topic_prefix(objects)
    rendered = {o["spec"].get("topicName", o["metadata"]["name"]): o
                for o in _of_kind(objects, "KafkaTopic")}
    for topic in CATALOGUE:
        full = prefix + topic.name
        obj = rendered.pop(full, None)
        if obj is None:
            yield Finding("chart", f"topics.{topic.name}",
                          f"catalogue topic {full!r} has no KafkaTopic")
            continue
        spec = obj["spec"]
        if spec.get("partitions") != topic.partitions:
            yield Finding(name_of(obj), "spec.partitions",
                          f"is {spec.get('partitions')}, the catalogue (streams/topics.py) says "
                          f"{topic.partitions} for {topic.name}")
        if spec.get("replicas") != REPLICATION_FACTOR:
            yield Finding(name_of(obj), "spec.replicas",
                          f"is {spec.get('replicas')}, must be {REPLICATION_FACTOR}")
        expected = topic.configs(REPLICATION_FACTOR)
        actual = {key: str(value) for key, value in (spec.get("config") or {}).items()}
        for key in sorted(expected.keys() | actual.keys()):
            if expected.get(key) != actual.get(key):
                yield Finding(name_of(obj), f"spec.config.{key}",
                              f"is {actual.get(key)!r}, the catalogue says {expected.get(key)!r}")
        if actual.get("min.insync.replicas") != MIN_INSYNC_REPLICAS:
            yield Finding(name_of(obj), "spec.config.min.insync.replicas", "must be 2")
        if actual.get("unclean.leader.election.enable") != "false":
            yield Finding(name_of(obj), "spec.config.unclean.leader.election.enable",
                          "must be 'false'")
    for full, obj in rendered.items():
        yield Finding(name_of(obj), "spec.topicName",
                      f"{full!r} is not in the catalogue (streams/topics.py)")


def users_write_only_their_topics(objects: list[Object]) -> Iterator[Finding]:
    """One SCRAM-SHA-512 KafkaUser per role; Write exactly on the topics whose catalogue writer
    is that role, never on a prefix or wildcard of topics."""
    prefix = _topic_prefix(objects)
    users = {o["metadata"].get("labels", {}).get(COMPONENT, ""): o
             for o in _of_kind(objects, "KafkaUser")}
    for role in ROLES:
        user = users.get(role)
        if user is None:
            yield Finding("chart", f"KafkaUser for {role}", "missing")
            continue
        spec = user.get("spec", {})
        if spec.get("authentication", {}).get("type") != "scram-sha-512":
            yield Finding(name_of(user), "spec.authentication.type", "must be scram-sha-512")
        written: set[str] = set()
        for index, acl in enumerate(spec.get("authorization", {}).get("acls", [])):
            resource = acl.get("resource", {})
            operations = set(acl.get("operations", []))
            writes = bool(operations & {"Write", "All", "Create", "Delete", "Alter",
                                        "AlterConfigs"})
            if resource.get("type") != "topic" or not writes or acl.get("type") == "deny":
                continue
            name = str(resource.get("name", ""))
            if resource.get("patternType", "literal") != "literal" or name == "*":
                yield Finding(name_of(user), f"spec.authorization.acls[{index}]",
                              f"write access to a topic pattern {name!r}; grant literal topics")
                continue
            written.add(name.removeprefix(prefix))
        allowed = topics_written_by(role)
        for topic in sorted(written - allowed):
            yield Finding(name_of(user), "spec.authorization.acls",
                          f"may write {prefix + topic!r}, but its catalogue writer is "
                          f"{BY_NAME[topic].writer if topic in BY_NAME else 'nobody'!r}")
        for topic in sorted(allowed - written):
            yield Finding(name_of(user), "spec.authorization.acls",
                          f"cannot write {prefix + topic!r}, which the catalogue lets {role} write")


def kafka_is_secured(objects: list[Object]) -> Iterator[Finding]:
    """Listeners with TLS and SCRAM-SHA-512, ACL authorization, durable defaults; clients use
    SASL_SSL with a password from a Secret."""
    clusters = _of_kind(objects, "Kafka")
    if len(clusters) != 1:
        yield Finding("chart", "kafka", f"expected one Kafka, rendered {len(clusters)}")
    for cluster in clusters:
        kafka = cluster.get("spec", {}).get("kafka", {})
        for index, listener in enumerate(kafka.get("listeners", [])):
            if listener.get("tls") is not True:
                yield Finding(name_of(cluster), f"spec.kafka.listeners[{index}].tls",
                              "must be true")
            if listener.get("authentication", {}).get("type") != "scram-sha-512":
                yield Finding(name_of(cluster),
                              f"spec.kafka.listeners[{index}].authentication.type",
                              "must be scram-sha-512")
        if kafka.get("authorization", {}).get("type") != "simple":
            yield Finding(name_of(cluster), "spec.kafka.authorization.type", "must be simple")
        config = {k: str(v).lower() for k, v in kafka.get("config", {}).items()}
        for key, value in (("min.insync.replicas", "2"), ("default.replication.factor", "3"),
                           ("unclean.leader.election.enable", "false"),
                           ("auto.create.topics.enable", "false")):
            if config.get(key) != value:
                yield Finding(name_of(cluster), f"spec.kafka.config.{key}",
                              f"is {config.get(key)!r}, must be {value!r}")
    brokers = sum(p["spec"].get("replicas", 0) for p in _of_kind(objects, "KafkaNodePool")
                  if "broker" in p["spec"].get("roles", []))
    if brokers < REPLICATION_FACTOR:
        yield Finding("chart", "kafka.nodePools",
                      f"{brokers} brokers cannot hold replication factor {REPLICATION_FACTOR}")
    expected = {"QUSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "QUSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                "QUSTREAM_KAFKA_REPLICATION_FACTOR": "3"}
    for workload in _of_kind(objects, *WORKLOAD_KINDS):
        for field, container in _containers(_pod_spec(workload)):
            env = _env(container)
            for key, value in expected.items():
                if env.get(key, {}).get("value") != value:
                    yield Finding(name_of(workload), f"{field}.env.{key}", f"must be {value!r}")
            password = env.get("QUSTREAM_KAFKA_SASL_PASSWORD", {})
            if "secretKeyRef" not in password.get("valueFrom", {}):
                yield Finding(name_of(workload), f"{field}.env.QUSTREAM_KAFKA_SASL_PASSWORD",
                              "must come from a secretKeyRef")


def cassandra_is_replicated(objects: list[Object]) -> Iterator[Finding]:
    clusters = _of_kind(objects, "K8ssandraCluster")
    if len(clusters) != 1:
        yield Finding("chart", "cassandra", f"expected one K8ssandraCluster, got {len(clusters)}")
        return
    cluster = clusters[0]
    datacenters = cluster["spec"].get("cassandra", {}).get("datacenters", [])
    for index, datacenter in enumerate(datacenters):
        if datacenter.get("size", 0) < REPLICATION_FACTOR:
            yield Finding(name_of(cluster), f"spec.cassandra.datacenters[{index}].size",
                          f"is {datacenter.get('size')}; replication 3 needs at least 3 nodes")
    for workload in _of_kind(objects, *WORKLOAD_KINDS):
        for field, container in _containers(_pod_spec(workload)):
            entry = _env(container).get("QUSTREAM_CASSANDRA_REPLICATION_FACTOR")
            if entry is not None and entry.get("value") != "3":
                yield Finding(name_of(workload),
                              f"{field}.env.QUSTREAM_CASSANDRA_REPLICATION_FACTOR",
                              f"is {entry.get('value')!r}, must be '3'")


# --- platform hygiene -----------------------------------------------------------------------


def network_denied_by_default(objects: list[Object]) -> Iterator[Finding]:
    policies = _of_kind(objects, "NetworkPolicy")
    deny_all = [p for p in policies
                if set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
                and not p["spec"].get("ingress") and not p["spec"].get("egress")]
    for workload in _of_kind(objects, *WORKLOAD_KINDS):
        labels = _pod_labels(workload)
        if not any(_selects(p["spec"].get("podSelector", {}), labels) for p in deny_all):
            yield Finding(name_of(workload), "spec.template.metadata.labels",
                          "no default-deny NetworkPolicy (Ingress and Egress) selects these pods")


def disruption_budgets_cover_workloads(objects: list[Object]) -> Iterator[Finding]:
    budgets = _of_kind(objects, "PodDisruptionBudget")
    for workload in _of_kind(objects, *WORKLOAD_KINDS):
        labels = _pod_labels(workload)
        if not any(_selects(b["spec"].get("selector", {}), labels) for b in budgets):
            yield Finding(name_of(workload), "spec.template.metadata.labels",
                          "no PodDisruptionBudget selects these pods")


def gateway_autoscales(objects: list[Object]) -> Iterator[Finding]:
    gateways = [w for w in _of_kind(objects, "Deployment") if _component(w) == "gateway"]
    targets = {h["spec"]["scaleTargetRef"]["name"]
               for h in _of_kind(objects, "HorizontalPodAutoscaler")}
    for gateway in gateways:
        if gateway["metadata"]["name"] not in targets:
            yield Finding(name_of(gateway), "HorizontalPodAutoscaler",
                          "no HPA scales the gateway")
    if not gateways:
        yield Finding("chart", "gateway", "no gateway Deployment rendered")


def metrics_are_scraped(objects: list[Object]) -> Iterator[Finding]:
    """Every workload exposes a port named metrics, a Service selects it, and a ServiceMonitor
    scrapes that Service's metrics port."""
    services = _of_kind(objects, "Service")
    monitors = _of_kind(objects, "ServiceMonitor")
    for workload in _of_kind(objects, *WORKLOAD_KINDS):
        labels = _pod_labels(workload)
        ports = [p for _, c in _containers(_pod_spec(workload)) for p in c.get("ports", [])]
        if not any(p.get("name") == "metrics" for p in ports):
            yield Finding(name_of(workload), "spec.template.spec.containers[].ports",
                          "no port named metrics")
        covering = [s for s in services if s["spec"].get("selector")
                    and _selects({"matchLabels": s["spec"]["selector"]}, labels)]
        scraped = any(
            _selects(m["spec"].get("selector", {}), s["metadata"].get("labels", {}))
            and any(e.get("port") == "metrics" for e in m["spec"].get("endpoints", []))
            for s in covering for m in monitors
        )
        if not scraped:
            yield Finding(name_of(workload), "metrics",
                          "no ServiceMonitor scrapes a Service selecting these pods")


# --- alerting and dashboards ------------------------------------------------------------------

DASHBOARDS = ("qustream-overview", "qustream-qrng", "qustream-validators")


def _unknown_metrics(expr: str) -> tuple[list[str], list[str]]:
    names = query_metrics(expr)
    return names, [name for name in names if not is_exported(name)]


def prometheus_rules_match_the_monitor(objects: list[Object]) -> Iterator[Finding]:
    """One PrometheusRule holding the monitor's rules (services/monitor/core/rules.py): the
    same alert names and severities, each expression over metrics the code exports."""
    rules = _of_kind(objects, "PrometheusRule")
    if len(rules) != 1:
        yield Finding("chart", "monitor.prometheusRules",
                      f"expected one PrometheusRule, rendered {len(rules)}")
        return
    expected = {rule.name: rule for rule in MONITOR_RULES}
    seen: set[str] = set()
    for g, group in enumerate(rules[0]["spec"].get("groups", [])):
        for r, rule in enumerate(group.get("rules", [])):
            where = f"spec.groups[{g}].rules[{r}]"
            name = rule.get("alert", "")
            seen.add(name)
            if name not in expected:
                yield Finding(name_of(rules[0]), where, f"alert {name!r} is not a monitor rule")
                continue
            if rule.get("labels", {}).get("severity") != expected[name].severity:
                yield Finding(name_of(rules[0]), f"{where}.labels.severity",
                              f"is not the monitor's {expected[name].severity!r}")
            names, unknown = _unknown_metrics(str(rule.get("expr", "")))
            if not names or unknown:
                yield Finding(name_of(rules[0]), f"{where}.expr",
                              f"queries no exported metric: {unknown or 'none named'}")
    for missing in sorted(expected.keys() - seen):
        yield Finding(name_of(rules[0]), "spec.groups", f"monitor rule {missing} is missing")


def _panels(panels: list[Object]) -> Iterator[Object]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # rows hold panels


def dashboards_query_exported_metrics(objects: list[Object]) -> Iterator[Finding]:
    """The Grafana dashboards (ConfigMaps of *.json) parse, include the overview, QRNG and
    validator dashboards, and every panel queries metrics the code exports."""
    uids: set[str] = set()
    for config_map in _of_kind(objects, "ConfigMap"):
        for key, text in (config_map.get("data") or {}).items():
            if not key.endswith(".json") or "dashboard" not in config_map["metadata"]["name"]:
                continue
            try:
                board = json.loads(text)
            except ValueError as exc:
                yield Finding(name_of(config_map), f"data.{key}", f"not JSON: {exc}")
                continue
            uids.add(str(board.get("uid", "")))
            panels = list(_panels(board.get("panels", [])))
            if not panels:
                yield Finding(name_of(config_map), f"data.{key}", "a dashboard without panels")
            for panel in panels:
                if panel.get("type") == "row":
                    continue
                where = f"data.{key} panel {panel.get('title', panel.get('id'))!r}"
                targets = [t for t in panel.get("targets", []) if t.get("expr")]
                if not targets:
                    yield Finding(name_of(config_map), where, "no query")
                for target in targets:
                    names, unknown = _unknown_metrics(target["expr"])
                    if not names or unknown:
                        yield Finding(name_of(config_map), where,
                                      f"{target['expr']!r} queries no exported metric: "
                                      f"{unknown or 'none named'}")
    for uid in DASHBOARDS:
        if uid not in uids:
            yield Finding("chart", "monitor.dashboards", f"dashboard {uid!r} is not rendered")


RULES: tuple[Callable[[list[Object]], Iterable[Finding]], ...] = (
    containers_are_hardened,
    no_secrets_rendered,
    validators_are_single_and_distinct,
    genesis_is_mounted,
    shard_writers_fit_partitions,
    topics_match_catalogue,
    users_write_only_their_topics,
    kafka_is_secured,
    cassandra_is_replicated,
    network_denied_by_default,
    disruption_budgets_cover_workloads,
    gateway_autoscales,
    metrics_are_scraped,
    prometheus_rules_match_the_monitor,
    dashboards_query_exported_metrics,
)


def check_rules(objects: list[Object]) -> list[Finding]:
    return [finding for rule in RULES for finding in rule(objects)]
