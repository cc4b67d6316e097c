"""The chart's monitoring: the monitor's Deployment, its PrometheusRule (the same rules as the
monitor) and the Grafana dashboards, validated offline against the Prometheus Operator CRDs and
against the metric names the code exports."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from infra.helm import generate_rules
from infra.helm.values_block import VALUES_FILE
from infra.k8s.metrics import exported_names, is_exported, query_metrics
from infra.k8s.schemas import schema_violations
from infra.k8s.validate import CHART, render, validate_objects
from services.monitor.core.rules import RULES
from services.monitor.metrics import NAMES

Objects = list[dict[str, Any]]


@pytest.fixture(scope="module")
def objects() -> Objects:
    return render([CHART / "values-dev.yaml"])


def _one(objects: Objects, kind: str, name_part: str = "") -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == kind and name_part in o["metadata"]["name"])


def _broken(objects: Objects, kind: str, change: Callable[[dict[str, Any]], None],
            name_part: str = "") -> Objects:
    result = copy.deepcopy(objects)
    change(_one(result, kind, name_part))
    return result


def test_the_chart_runs_one_monitor_with_the_genesis_and_its_metrics(objects: Objects) -> None:
    monitor = _one(objects, "Deployment", "monitor")
    assert monitor["spec"]["replicas"] == 1 and monitor["spec"]["strategy"]["type"] == "Recreate"
    args = monitor["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:4] == ["monitor", "run", "--genesis", "/etc/qustream/genesis.json"]
    assert "--metrics-port" in args and "--alertmanager-url" not in args
    user = _one(objects, "KafkaUser", "monitor")
    writes = {acl["resource"]["name"] for acl in user["spec"]["authorization"]["acls"]
              if "Write" in acl["operations"] and acl["resource"]["type"] == "topic"}
    assert writes == {"qs.alerts", "qs.monitor.state", "qs.dlq.monitor"}
    assert _one(objects, "ServiceMonitor", "monitor")


def test_the_prometheus_rule_holds_every_monitor_rule(objects: Objects) -> None:
    rule = _one(objects, "PrometheusRule")
    rendered = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(rendered) == {r.name for r in RULES}
    for monitor_rule in RULES:
        assert rendered[monitor_rule.name]["labels"]["severity"] == monitor_rule.severity
    assert list(schema_violations(rule)) == []


def test_the_three_dashboards_are_config_maps(objects: Objects) -> None:
    boards = [json.loads(v) for o in objects if o["kind"] == "ConfigMap"
              and "dashboard" in o["metadata"]["name"] for v in o["data"].values()]
    assert {b["uid"] for b in boards} == {"qustream-overview", "qustream-qrng",
                                          "qustream-validators"}


def test_a_typo_in_a_prometheus_rule_fails_the_crd_schema(objects: Objects) -> None:
    def typo(rule: dict[str, Any]) -> None:
        rule["spec"]["groups"][0]["rules"][0]["expresion"] = "up"

    messages = [str(f) for f in validate_objects(_broken(objects, "PrometheusRule", typo))]
    assert any("PrometheusRule/qustream-monitor: spec.groups[0].rules[0]: schema:" in m
               and "expresion" in m for m in messages), messages


def test_a_typo_in_a_service_monitor_fails_the_crd_schema(objects: Objects) -> None:
    def typo(monitor: dict[str, Any]) -> None:
        monitor["spec"]["endpoints"][0]["intervall"] = "30s"

    messages = [str(f) for f in validate_objects(_broken(objects, "ServiceMonitor", typo,
                                                         "monitor"))]
    assert any("ServiceMonitor/qustream-monitor: spec.endpoints[0]: schema:" in m
               and "intervall" in m for m in messages), messages


def test_a_rule_over_a_metric_nobody_exports_fails(objects: Objects) -> None:
    def rename(rule: dict[str, Any]) -> None:
        rule["spec"]["groups"][0]["rules"][0]["expr"] = "qustream_monitor_nonsense > 1"
        del rule["spec"]["groups"][0]["rules"][1]

    messages = [str(f) for f in validate_objects(_broken(objects, "PrometheusRule", rename))]
    assert any("queries no exported metric: ['qustream_monitor_nonsense']" in m
               for m in messages), messages
    assert any(f"monitor rule {RULES[1].name} is missing" in m for m in messages), messages


def test_a_dashboard_panel_over_an_unknown_metric_or_bad_json_fails(objects: Objects) -> None:
    def unknown(config_map: dict[str, Any]) -> None:
        key = next(iter(config_map["data"]))
        board = json.loads(config_map["data"][key])
        board["panels"][0]["targets"][0]["expr"] = "rate(qrng_published_bites_total[1m])"
        config_map["data"][key] = json.dumps(board)

    messages = [str(f) for f in validate_objects(_broken(objects, "ConfigMap", unknown,
                                                         "dashboard-validators"))]
    assert any("queries no exported metric: ['qrng_published_bites_total']" in m
               for m in messages), messages

    def garbage(config_map: dict[str, Any]) -> None:
        config_map["data"][next(iter(config_map["data"]))] = "{not json"

    messages = [str(f) for f in validate_objects(_broken(objects, "ConfigMap", garbage,
                                                         "dashboard-overview"))]
    assert any("not JSON" in m for m in messages), messages


def test_the_alert_rules_block_is_generated_and_a_stale_one_is_detected(tmp_path: Path) -> None:
    assert generate_rules.main(["--check"]) == 0
    stale = tmp_path / "values.yaml"
    stale.write_text(VALUES_FILE.read_text().replace(">= 1000", ">= 999"))
    assert generate_rules.main(["--check", "--values", str(stale)]) == 1


@pytest.mark.parametrize(("expr", "names"), [
    ('sum by (source, test) (qustream_monitor_qrng_health_failures) >= 1',
     ["qustream_monitor_qrng_health_failures"]),
    ('max(a_metric) - on() group_right() b_metric{validator="x"}', ["a_metric", "b_metric"]),
    ('histogram_quantile(0.95, sum by (le) (rate(qrng_publish_latency_milliseconds_bucket[5m])))',
     ["qrng_publish_latency_milliseconds_bucket"]),
    ('qustream_monitor_chain_finality_seconds{quantile="0.95"} >= 5',
     ["qustream_monitor_chain_finality_seconds"]),
])
def test_query_metrics(expr: str, names: list[str]) -> None:
    assert query_metrics(expr) == names


def test_exported_names_come_from_the_code() -> None:
    names = exported_names()
    assert set(NAMES) <= names and "qrng_published_bytes" in names
    assert is_exported("qrng_publish_latency_milliseconds_bucket")
    assert is_exported("qustream_monitor_events_total")
    assert not is_exported("qrng_published_bytes_extra")
