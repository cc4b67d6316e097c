"""One QRNG device as K lanes, one process each (``qustream qrng run --lanes K``), so ingest
grows with cores.

Lane k of device D is the source ``D.lane-k`` (``protocol.entropy.registry``): its own hash
chain and sequence space, its own state file (``<state_dir>/qrng/D.lane-k.json``) and
checkpoints, all signed with the device's key. A lane process is the single-source ingest
service unchanged, so what holds for one source (gapless chains, resume after kill -9, forged
or replayed chunks refused) holds for each lane. The lanes share only the key and the source
spec; ``services.qrng_ingest.sources`` says how a spec keeps their bytes apart. Verifiers and
block builders count the lanes of one device as one source for the two-source rule.

``run_lanes`` starts the K lane processes under ``streams.supervisor.Supervisor``: a lane that
dies (kill -9, an error) is restarted and resumes its own chain from its state file and the
topic; a lane that ends cleanly (its ``--duration`` or ``--max-bytes`` spent) is done. Each
lane's output goes to ``<state_dir>/qrng/lanes/<lane id>.log``. Operators who run one process
per lane themselves (systemd, Kubernetes) start ``qustream qrng run --lanes K --lane k``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from protocol.entropy.registry import lane_source_ids
from services.qrng_ingest.service import IngestConfig
from services.qrng_ingest.sources import Stripe
from streams.supervisor import ServiceSpec, ServiceState, Supervisor


def lane_config(device: IngestConfig, lanes: int, lane: int) -> IngestConfig:
    """The ingest settings of lane ``lane`` of the device ``device.source_id`` names: its lane
    source id, and its own metrics port (the device's port + lane) when the device has one."""
    port = device.metrics_port
    return replace(device, source_id=lane_source_ids(device.source_id, lanes)[lane],
                   metrics_port=None if port is None else port + lane)


def lane_stripe(device: IngestConfig, lanes: int, lane: int) -> Stripe:
    """The blocks of a regular file lane ``lane`` reads (one chunk each)."""
    return Stripe(lane, lanes, device.chunk_size)


def run_lanes(
    device: IngestConfig, lanes: int, lane_argv: Callable[[int], tuple[str, ...]],
    log_dir: Path, stop: threading.Event, *, env: Mapping[str, str] | None = None,
    on_event: Callable[[str], None] = lambda event: None,
) -> dict[str, Any]:
    """Run lanes ``0..lanes-1`` (``lane_argv(k)``: the command of lane k) until each has ended
    cleanly, given up, or ``stop`` is set; returns the device's report: per lane its last
    report line (the JSON ``qustream qrng run`` prints) and exit code."""
    ids = lane_source_ids(device.source_id, lanes)
    supervisor = Supervisor(
        [ServiceSpec(ids[lane], lane_argv(lane), env=dict(env or {}), done_on_clean_exit=True)
         for lane in range(lanes)], log_dir)
    supervisor.start()
    try:
        while not stop.wait(0.2):
            for event in supervisor.tick():
                on_event(event)
            if all(s.state in (ServiceState.STOPPED, ServiceState.FAILED)
                   for s in supervisor.status()):
                break
    finally:
        supervisor.stop()
    return {"device": device.source_id, "lanes": [
        {"source_id": status.name, "exit_code": status.last_exit, "restarts": status.restarts,
         "report": _last_report(supervisor.log_path(status.name))}
        for status in supervisor.status()]}


def _last_report(log: Path) -> Any:
    """The last JSON object line a lane wrote (its report), or None."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None
