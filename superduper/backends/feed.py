"""What every change feed does the same way (``superduper.backends.sql.changes``, ``superduper.backends.inline`` and
MongoDB's ``change_stream`` on it): one numbered write of a listener's outputs when a batch finishes, and long lists
of keys cut into chunks for ``IN`` lists and bulk writes."""

from __future__ import annotations

from typing import Any, Iterator, Sequence, TypeVar

from superduper.backends.base import Change, OutputLog, Results
from superduper.base import faults

#: the most values one ``IN (...)`` list, ``$in`` or bulk write holds
CHUNK = 1000

T = TypeVar('T')


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def write_outputs(log: OutputLog, conn: Any, table: str, keys: Sequence[str], rows: list[tuple],
                  removed: list[Any], chunked: list[Any] | None = None) -> list:
    """In the finishing transaction: the outputs table's next number (``OutputLog.advance``), then ``rows`` (in
    ``keys`` order) stored and the outputs of the ``removed`` sources deleted under it; nothing if neither.

    ``chunked`` (a flattening listener's outputs): the sources whose chunks ``rows`` are; every chunk stored for
    them or for ``removed`` is deleted first, so a source computed again keeps only its new chunks. Returns the keys
    of the chunks deleted or written (``[]`` for other outputs)."""
    if not rows and not removed and not chunked:
        return []
    seq = log.advance(conn, table)
    faults.point('holding_output_number')  # the counter locked, nothing committed yet
    columns = [list(column) for column in zip(*rows)]
    if chunked is not None:
        return log.replace_chunks(conn, table, seq, keys, columns, [*chunked, *removed])
    if rows:
        log.store(conn, table, seq, keys, columns)
    log.remove(conn, table, seq, removed)
    return []


def write_results(log: OutputLog, conn: Any, res: Results, stored: list[tuple[Change, Any]],
                  removed: list[Change]) -> list:
    """``write_outputs`` for one listener's results that won their guard: ``stored`` ``(change, row)`` (a flattening
    listener's: ``(change, rows)``, one per chunk) and the ``removed`` changes, whose outputs go. Returns the keys of
    the outputs table written or deleted."""
    gone = [c.output_key for c in removed]
    if not res.flatten:
        write_outputs(log, conn, res.outputs_table, res.keys, [row for _, row in stored], gone)
        return [c.key for c, _ in stored] + [c.key for c in removed]
    rows = [row for _, chunk_rows in stored for row in chunk_rows]
    return write_outputs(log, conn, res.outputs_table, res.keys, rows, gone, chunked=[c.output_key for c, _ in stored])
