"""The audit's progress bars end full: a topic's size is an estimate (transaction markers take
offsets too), so each bar's total becomes its count once the topic is done."""

from __future__ import annotations

import io
import re

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from services.audit.report import progress_bars


@given(st.lists(st.tuples(st.integers(1, 5000), st.integers(0, 3)), min_size=1, max_size=4))
@settings(max_examples=25, deadline=None)
def test_every_bar_ends_at_its_count(topics: list[tuple[int, int]]) -> None:
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=True, color_system=None)
    with progress_bars(console) as start:
        for index, (records, factor) in enumerate(topics):
            advance = start(f"topic-{index}", records * factor)  # estimate: 0x to 3x
            for _ in range(records):
                advance(1)
    shown = out.getvalue()
    for index, (records, _factor) in enumerate(topics):
        assert re.search(rf"topic-{index}\b.*(?<!\d){records}/{records}(?!\d)", shown), \
            (index, shown[-800:])
