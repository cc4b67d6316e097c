"""``bench.ingest``'s JSON line from its rounds: each ratio pairs the two kinds of one round, so
a drift the whole machine goes through (the broker's disk writing back an earlier round) moves
both and leaves the ratio; the median then drops one disturbed round."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import pytest

from bench.ingest import _check_disk, _machine_busy_s, _together, summary
from streams.settings import KafkaSettings, Settings


def _rates(ours: list[float], baseline: list[float]) -> dict[str, list[float]]:
    return {"ours": ours, "baseline": baseline, "lanes_2": [2 * x for x in ours],
            "raw_2": [1.5 * x for x in baseline], "ours_device": [1.1 * x for x in ours]}


def test_a_drift_shared_by_a_round_leaves_its_ratio() -> None:
    line = summary(_rates([90.0, 450.0, 180.0], [100.0, 500.0, 200.0]), 3000.0)
    assert line["ratio"] == 0.9  # the best-of-each reading gave 450 / 500 only by chance
    assert line["lane_scaling"] == 2.0 and line["raw_scaling"] == 1.5
    assert line["device_ratio"] == 0.99
    assert (line["ours"], line["baseline"], line["rounds"]) == (180.0, 200.0, 3)


def test_one_disturbed_round_does_not_move_the_median() -> None:
    line = summary(_rates([90.0, 20.0, 91.0], [100.0, 100.0, 100.0]), 3000.0)
    assert line["ratio"] == 0.9
    assert line["baseline_spread"] == 0.0  # the broker alone held still


def test_the_line_says_how_far_the_broker_alone_moved() -> None:
    # Raw rounds of 81, 259 and 160 MB/s (a day another tenant shared the disk): the ratio is
    # still each round's own, but a reader is told the run swung by more than its median.
    line = summary(_rates([70.0, 200.0, 130.0], [81.0, 259.0, 160.0]), 3000.0)
    assert line["baseline_spread"] == round((259 - 81) / 160, 2) == 1.11


def test_the_bench_refuses_to_fill_the_embedded_broker_s_disk(tmp_path: Path) -> None:
    embedded = Settings(state_dir=tmp_path, kafka=KafkaSettings(bootstrap_servers=None))
    with pytest.raises(SystemExit, match="GB are free under"):
        _check_disk(embedded, need_gb=1e9)  # more than any disk here
    _check_disk(embedded, need_gb=0.0)
    external = Settings(state_dir=tmp_path, kafka=KafkaSettings(bootstrap_servers="kafka:9092"))
    _check_disk(external, need_gb=1e9)  # a broker elsewhere is its operator's to size


def test_cpu_per_mb_is_the_median_of_the_kinds_measured_in_process() -> None:
    cpu = {"ours": [3.4, 9.0, 3.2], "baseline": [0.8, 0.7, 0.9], "ours_device": []}
    line = summary(_rates([90.0, 450.0, 180.0], [100.0, 500.0, 200.0]), 3000.0, cpu)
    assert (line["cpu_ms_per_mb_ours"], line["cpu_ms_per_mb_baseline"]) == (3.4, 0.8)
    assert "cpu_ms_per_mb_ours_device" not in line  # not measured: no key, not a zero


def _lane(exit_code: int, barrier: Any, out: Any) -> None:
    """A process of a round (spawned: module level): dies before the barrier when told to."""
    if exit_code:
        os._exit(exit_code)
    barrier.wait()
    out.put((1_000_000, 0.5, 0.1, 0.6))


def test_a_round_with_a_dead_process_fails_at_once_and_leaves_nothing_running() -> None:
    """A lane process that dies before the round starts used to leave its partner waiting at
    the barrier and the bench waiting minutes for a result, then hanging on exit."""
    # 2 MB over 0.5 s; 0.2 CPU seconds of their own and each saw the machine busy 0.6 of its 0.5
    assert _together(_lane, [(0,), (0,)], round_s=1.0) == (4.0, (0.4, 1.2))
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"exit codes .*3"):
        _together(_lane, [(0,), (3,)], round_s=1.0)
    assert time.monotonic() - started < 30
    assert not multiprocessing.active_children()


def test_the_line_says_how_many_cores_a_kind_and_the_machine_kept_busy() -> None:
    # Per round: (own cores, the machine's); one round the kernel did not say for raw_2.
    cores = {"ours": [(1.0, 1.9), (1.1, 2.0), (0.9, 1.8)], "baseline": [],
             "lanes_2": [(1.0, 1.95), (1.2, 2.0), (1.1, 1.9)],
             "raw_2": [(0.3, 1.5), (0.2, None), (0.3, 1.6)]}
    line = summary(_rates([90.0, 450.0, 180.0], [100.0, 500.0, 200.0]), 3000.0, None, cores)
    assert (line["cores_ours"], line["cores_busy_ours"]) == (1.0, 1.9)
    assert (line["cores_lanes_2"], line["cores_busy_lanes_2"]) == (1.1, 1.95)
    assert line["cores_raw_2"] == 0.3
    assert "cores_busy_raw_2" not in line  # not known in every round: no figure
    assert "cores_baseline" not in line and "cores_busy_baseline" not in line
    assert line["cpus"] == os.cpu_count()
    assert "cpus" not in summary(_rates([1.0], [1.0]), 3000.0)  # no cores measured, no key


def test_machine_busy_time_counts_work_and_not_idle_iowait_or_steal(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    tick = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text(f"cpu  {tick} {tick} {tick} 9999 9999 {tick} {tick} 9999 0 0\ncpu0 1 2 3\n")
    assert _machine_busy_s(stat) == 5.0
    assert _machine_busy_s(tmp_path / "absent") is None
    stat.write_text("intr 1 2 3\n")
    assert _machine_busy_s(stat) is None
    assert (_machine_busy_s() or 0.0) > 0.0  # this machine's own
