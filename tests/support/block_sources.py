"""Block sources for ``sdk.subscriber.BlockSubscriber`` without Kafka or a gateway."""

from __future__ import annotations

from collections.abc import Iterator


class ListSource:
    """``BlockFinalized`` records held in a list; a record's position is its index."""

    def __init__(self, records: list[bytes]) -> None:
        self.items = records

    def records(self, after: int | None) -> Iterator[tuple[int, bytes]]:
        start = 0 if after is None else after + 1
        for position in range(start, len(self.items)):
            yield position, self.items[position]
