"""Health transparency on a real chain (issue 19 item 4): real QRNG ingest servers, validators
and the tally on the real Kafka; every block's entropy references carry the SP 800-90B summary
the ingest tested, which an independent reader re-derives from the chunks on entropy.raw.
"""

from __future__ import annotations

import pytest

from protocol.block import unhealthy_entropy
from protocol.pulse import health_by_source
from services.qrng_ingest.core.health import HealthParameters, RctCarry, check_block
from tests.integration.test_chain_e2e import (  # noqa: F401
    network_factory,
    verified_chunks,
    verify_chain,
)

pytestmark = pytest.mark.integration

# ``qustream qrng run``'s defaults: 8-bit samples claiming H = 8, alpha = 2^-40.
PARAMS = HealthParameters.derive(8, 40, binary=False)


def test_a_real_chain_carries_the_health_the_ingest_tested(
        network_factory: object,  # noqa: F811  (the fixture imported above)
) -> None:
    network = network_factory()  # type: ignore[operator]
    reached = network.wait_height(12, timeout_s=120)
    assert reached >= 12, f"reached {reached}\n{network.logs()}"
    blocks = verify_chain(network, 10)  # re-verified from genesis: the entropy_health rule too
    chunks = verified_chunks(network.settings, network.genesis)
    # The summary every chunk carries is what the health tests give on its payload: the
    # ingest's own parameters, the windows and samples of the payload, no failure. RCT runs
    # continue across chunks, so the run is re-derived with the carry of the chunk before it
    # (the first chunk seen of a source may continue a run from a dropped startup block).
    carry: dict[str, RctCarry] = {}
    for (source, seq), chunk in sorted(chunks.items()):
        first = source not in carry
        tested, carry[source] = check_block(PARAMS, carry.get(source, RctCarry()), chunk.payload)
        expected = tested.summary(PARAMS)
        assert expected.failing() is None
        got = chunk.health
        assert got.failing() is None, (source, seq, got)
        assert (got.windows, got.samples, got.rct_cutoff, got.apt_cutoff, got.apt_window,
                got.apt_max_count, got.failures) == (
            len(chunk.payload) // PARAMS.window_bytes, len(chunk.payload), PARAMS.rct_cutoff,
            PARAMS.apt_cutoff, PARAMS.apt_window, expected.apt_max_count, 0), (source, seq)
        if first:
            assert got.rct_max_run >= expected.rct_max_run, (source, seq)
        else:
            assert got.rct_max_run == expected.rct_max_run, (source, seq)
    included = 0
    for block in blocks:
        entropy = block.record.block.body.entropy
        assert unhealthy_entropy(entropy) is None
        for ref in entropy:
            chunk = chunks[(ref.source_id, ref.seq)]
            assert (ref.digest, ref.health) == (chunk.payload_digest, chunk.health), (
                f"block {block.record.height}: {ref.source_id}#{ref.seq}")
            included += 1
        for source in health_by_source(entropy):
            refs = [r for r in entropy if r.source_id == source.source_id]
            assert source.chunks == len(refs)
            assert source.samples == sum(r.health.samples for r in refs)
            assert source.failing() is None
    assert included >= 10, "the chain should have included entropy"
