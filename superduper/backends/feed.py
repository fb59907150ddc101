"""What every change feed does the same way (``superduper.backends.sql.changes``, ``superduper.backends.inline`` and
MongoDB's ``change_stream`` on it): one numbered write of a listener's outputs when a batch finishes, and long lists
of keys cut into chunks for ``IN`` lists and bulk writes."""

from __future__ import annotations

from typing import Any, Iterator, Sequence, TypeVar

from superduper.backends.base import OutputLog
from superduper.base import faults

#: the most values one ``IN (...)`` list, ``$in`` or bulk write holds
CHUNK = 1000

T = TypeVar('T')


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def write_outputs(log: OutputLog, conn: Any, table: str, keys: Sequence[str], rows: list[tuple],
                  removed: list[Any]) -> None:
    """In the finishing transaction: the outputs table's next number (``OutputLog.advance``), then ``rows`` (in
    ``keys`` order) stored and the outputs of the ``removed`` sources deleted under it; nothing if neither."""
    if not rows and not removed:
        return
    seq = log.advance(conn, table)
    faults.point('holding_output_number')  # the counter locked, nothing committed yet
    if rows:
        log.store(conn, table, seq, keys, [list(column) for column in zip(*rows)])
    log.remove(conn, table, seq, removed)
