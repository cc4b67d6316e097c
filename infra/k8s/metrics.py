"""Metric names the code exports, and the metric names a PromQL query uses.

The chart's PrometheusRule and Grafana dashboards may only query metrics that exist: the
monitor's (``services.monitor.metrics.NAMES``) and the OpenTelemetry instruments the services
create (``meter.create_counter("name", ...)`` and friends, found in the source). The Prometheus
exporter adds suffixes to instrument names (``_total`` for counters, the unit such as
``_milliseconds``, ``_bucket``/``_sum``/``_count`` for histograms), so a queried name is known
when it is an exported name plus such suffixes.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from services.monitor.metrics import NAMES as MONITOR_METRICS

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("services", "streams")
_INSTRUMENT = re.compile(
    r"create_(?:counter|up_down_counter|histogram|gauge|observable_gauge|observable_counter|"
    r"observable_up_down_counter)\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\"")
SUFFIXES = frozenset({"total", "bucket", "sum", "count", "created", "bytes", "seconds",
                      "milliseconds", "per", "second", "ratio"})
_FUNCTIONS_AND_KEYWORDS = frozenset({
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk",
    "bottomk", "quantile", "count_values", "group", "inf", "nan"})


@cache
def exported_names() -> frozenset[str]:
    """Every metric name the monitor and the services' instruments export (without suffixes)."""
    names = set(MONITOR_METRICS)
    for directory in SOURCE_DIRS:
        for path in sorted((REPO_ROOT / directory).rglob("*.py")):
            names.update(_INSTRUMENT.findall(path.read_text()))
    return frozenset(names)


def is_exported(name: str, exported: frozenset[str] | None = None) -> bool:
    """``name`` is an exported metric, possibly with the exporter's suffixes."""
    exported = exported_names() if exported is None else exported
    if name in exported:
        return True
    return any(name.startswith(base + "_")
               and set(name[len(base) + 1:].split("_")) <= SUFFIXES for base in exported)


def query_metrics(expr: str) -> list[str]:
    """The metric names a PromQL expression reads (a light parse: strings, label matchers,
    ranges, grouping clauses, numbers, functions and keywords are set aside)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery selectors
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = []
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        word = match.group(0)
        following = text[match.end():].lstrip()
        if following.startswith("(") or word.lower() in _FUNCTIONS_AND_KEYWORDS:
            continue  # a function call or a keyword
        if re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.append(word)
    return names
