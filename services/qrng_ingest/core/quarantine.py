"""The quarantine state machine of one source: which blocks may be published.

States: ``STARTUP`` (the SP 800-90B startup test over the first 1024 samples is running),
``HEALTHY`` (blocks that pass every window are published) and ``QUARANTINED`` (nothing is
published until ``recovery_windows`` consecutive windows pass).

The unit of publication is a block (one chunk's worth of raw bytes). A block is published only
when the source is HEALTHY before it and every window in it passes; a block with a failing
window is dropped whole, so no sample of a failing window — nor its neighbours in the same
chunk — is ever published. Blocks consumed by the startup test or by recovery are dropped too.

``evolve(policy, state, health)`` returns the new state and a ``BlockVerdict``; it never mutates.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from protocol.errors import InputError
from services.qrng_ingest.core.health import BlockHealth


class HealthState(StrEnum):
    STARTUP = "STARTUP"
    HEALTHY = "HEALTHY"
    QUARANTINED = "QUARANTINED"


class TransitionKind(StrEnum):
    STARTUP_PASSED = "STARTUP_PASSED"
    HEALTH_FAILED = "HEALTH_FAILED"
    RECOVERED = "RECOVERED"


class QuarantinePolicyError(InputError):
    """A quarantine policy value that cannot work (non-positive window counts)."""


@dataclass(frozen=True, slots=True)
class QuarantinePolicy:
    startup_windows: int  # from HealthParameters.startup_windows
    recovery_windows: int = 2048

    def __post_init__(self) -> None:
        if self.startup_windows < 1 or self.recovery_windows < 1:
            raise QuarantinePolicyError(
                f"startup_windows ({self.startup_windows}) and recovery_windows "
                f"({self.recovery_windows}) must be at least 1"
            )


@dataclass(frozen=True, slots=True)
class QuarantineState:
    health: HealthState = HealthState.STARTUP
    passing_run: int = 0  # consecutive passing windows counted toward startup or recovery
    windows_tested: int = 0


@dataclass(frozen=True, slots=True)
class Transition:
    kind: TransitionKind
    tests: tuple[str, ...]  # ("RCT",), ("APT",), ("RCT", "APT") for failures; () otherwise
    detail: str


@dataclass(frozen=True, slots=True)
class BlockVerdict:
    publish: bool
    transitions: tuple[Transition, ...]


def _failed_tests(health: BlockHealth) -> tuple[str, ...]:
    return tuple(name for name, flags in (("RCT", health.rct_failed), ("APT", health.apt_failed))
                 if flags.any())


def _trailing_passes(health: BlockHealth) -> int:
    failed = np.flatnonzero(health.failed)
    return health.windows if failed.size == 0 else health.windows - 1 - int(failed[-1])


def evolve(
    policy: QuarantinePolicy, state: QuarantineState, health: BlockHealth
) -> tuple[QuarantineState, BlockVerdict]:
    """Fold one tested block into the state; say whether to publish it and what changed."""
    tested = state.windows_tested + health.windows
    failed = not health.passed
    transitions: list[Transition] = []
    if state.health is HealthState.HEALTHY:
        if not failed:
            return QuarantineState(HealthState.HEALTHY, 0, tested), BlockVerdict(True, ())
        tests = _failed_tests(health)
        transitions.append(Transition(
            TransitionKind.HEALTH_FAILED, tests,
            f"{'+'.join(tests)} failed in {int(np.count_nonzero(health.failed))} of "
            f"{health.windows} windows (max run {health.rct_max_run}, max APT count "
            f"{health.apt_max_count}); source quarantined",
        ))
        run = _trailing_passes(health)
        health_state = HealthState.QUARANTINED
    else:
        run = state.passing_run + health.windows if not failed else _trailing_passes(health)
        health_state = state.health
        if failed and state.health is HealthState.STARTUP:
            tests = _failed_tests(health)
            transitions.append(Transition(
                TransitionKind.HEALTH_FAILED, tests,
                f"startup test: {'+'.join(tests)} failed; source quarantined",
            ))
            health_state = HealthState.QUARANTINED
    needed = (policy.startup_windows if health_state is HealthState.STARTUP
              else policy.recovery_windows)
    if health_state is not HealthState.HEALTHY and run >= needed:
        kind = (TransitionKind.STARTUP_PASSED if health_state is HealthState.STARTUP
                else TransitionKind.RECOVERED)
        transitions.append(Transition(kind, (), f"{run} consecutive windows passed"))
        return QuarantineState(HealthState.HEALTHY, 0, tested), BlockVerdict(
            False, tuple(transitions))
    return QuarantineState(health_state, run, tested), BlockVerdict(False, tuple(transitions))
