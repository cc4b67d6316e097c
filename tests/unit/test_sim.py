"""Property tests over the deterministic simulator (seeded loops; a failure prints the replay
command). Each run checks, in ``Simulation._check``: no two blocks decided at one height by
honest validators, every commit certificate verifies against the set of its height, every honest
validator decides every height once the network is stable, and every equivocation yields
evidence."""

from __future__ import annotations

import dataclasses

import pytest

from protocol.keys import Algorithm
from tests.support.sim import (
    Behavior,
    CounterState,
    Crash,
    SimConfig,
    faulty_config,
    main,
    run_seeds,
    simulate,
)

E, INV, S = Behavior.EQUIVOCATE, Behavior.INVALID, Behavior.SILENT


def test_honest_network_under_faults_many_seeds() -> None:
    results = run_seeds([faulty_config(seed, 4, 6) for seed in range(30)])
    assert all(r.heights_decided >= 6 for r in results)
    assert any(r.max_round > 0 for r in results)  # the faults did force extra rounds


@pytest.mark.parametrize(
    ("validators", "byzantine", "seeds"),
    [
        (4, ((0, E),), 15),
        (4, ((1, INV),), 10),
        (4, ((2, S),), 10),
        (7, ((0, E), (4, S)), 6),
        (7, ((2, E), (5, INV)), 6),
    ],
)
def test_less_than_a_third_byzantine_many_seeds(
    validators: int, byzantine: tuple[tuple[int, Behavior], ...], seeds: int
) -> None:
    configs = [faulty_config(100 + seed, validators, 6, byzantine) for seed in range(seeds)]
    for result in run_seeds(configs):
        assert result.heights_decided >= 6


def test_byzantine_stake_just_below_a_third() -> None:
    # Powers 10, 10, 10, 14: the equivocator holds 14/44 < 1/3; the honest need all three.
    configs = [
        dataclasses.replace(faulty_config(200 + seed, 4, 5, ((3, E),)), powers=(10, 10, 10, 14))
        for seed in range(8)
    ]
    for result in run_seeds(configs):
        assert result.heights_decided >= 5, "the honest three must still decide every height"


def test_equivocation_yields_evidence_that_a_block_includes_and_the_app_punishes() -> None:
    result = simulate(faulty_config(7, 4, 8, ((0, E),)))
    assert result.equivocations > 0 and result.evidence_detected
    assert result.evidence_committed
    offender = result.evidence_detected[0].validator_address
    for state in result.final_app_states.values():
        assert isinstance(state, CounterState)
        assert offender in state.punished
        assert offender not in state.validator_sets[1]


def test_crashed_validator_recovers_from_its_log_and_keeps_deciding() -> None:
    for seed in range(6):
        config = dataclasses.replace(
            faulty_config(300 + seed, 4, 8),
            crashes=(Crash(1, 200 + 150 * seed, 1_500 + 200 * seed),
                     Crash(2, 3_500, 3_900)),
        )
        result = simulate(config)
        assert len(result.decided[1]) >= 8 and len(result.decided[2]) >= 8


def test_long_partition_heals_and_every_height_is_decided() -> None:
    config = dataclasses.replace(
        faulty_config(400, 4, 6),
        partitions=(dataclasses.replace(faulty_config(400).partitions[0], start_ms=0,
                                        heal_ms=2_900, group=frozenset({0, 1})),),
    )
    result = simulate(config)
    assert result.heights_decided >= 6 and result.time_ms > 2_900


def test_a_seed_replays_identically() -> None:
    first = simulate(faulty_config(11, 4, 5, ((0, E),)))
    second = simulate(faulty_config(11, 4, 5, ((0, E),)))
    assert first.decided == second.decided
    assert first.messages_sent == second.messages_sent
    assert first.time_ms == second.time_ms


def test_ml_dsa_65_networks() -> None:
    for seed in range(2):
        result = simulate(faulty_config(500 + seed, 4, 3, ((0, E),), Algorithm.ML_DSA_65))
        assert result.heights_decided >= 3


def test_cli_replays_a_seed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seed", "3", "--validators", "4", "--heights", "3",
                 "--byzantine", "1:silent"]) == 0
    assert capsys.readouterr().out.startswith("ok: 3 heights")


def test_replay_command_names_the_failing_configuration() -> None:
    config = SimConfig(seed=9, validators=7, heights=4, byzantine=((1, E), (2, S)))
    assert config.replay_command() == (
        "python -m tests.support.sim --seed 9 --validators 7 --heights 4 "
        "--byzantine 1:equivocate,2:silent"
    )
