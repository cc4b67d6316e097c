"""Soak: the audit over a longer history (make soak, not make test).

The same scenario as tests/integration/test_audit_e2e.py (a slashing, a delegation, user writes,
online and offline audits, five injected faults), over 600 fast blocks instead of 110: long
enough for evidence ageing, many entropy checkpoints and a larger projection diff.
"""

from __future__ import annotations

import os

# Must be set before the scenario module is imported: it sizes the run at import time.
os.environ.setdefault("QUSTREAM_AUDIT_BLOCKS", "600")

from tests.integration.test_audit_e2e import (  # noqa: F401
    audited,
    network_factory,
    test_audit_online_offline_and_injected_faults,
)
