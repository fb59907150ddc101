"""Versions of outputs tables in a folder (``superduper.backends.base.OutputLog``): the counters and deletions are
the SQL ones (``superduper.backends.sql.outputs``), kept in the folder's state database, and the outputs rows are
Delta tables, written with the number of their write in ``_seq``.

A write's number is taken in the state database's write transaction, which every superduper writer holds while it
commits to Delta: a reader that sees the counter at ``n`` finds every write up to ``n`` committed."""

from __future__ import annotations

from typing import Any, Sequence

from superduper.backends.base import CHUNK_ID, OUTPUT_SEQ
from superduper.backends.outputs import SOURCE
from superduper.backends.sql.outputs import SQLOutputLog
from superduper.base.query import Compare


class LakeOutputLog(SQLOutputLog):
    def __init__(self, lake: Any):
        """``lake``: a ``LakeDataBackend``."""
        super().__init__(lake.state)
        self.lake = lake

    def _index_seq(self, table: str) -> None:
        """Nothing: outputs are Delta tables, which have no indexes."""

    def store(self, conn: Any, table: str, seq: int, keys: Sequence[str], columns: list[list]) -> None:
        count = len(columns[0])
        self.lake.insert(conn, table, [*keys, OUTPUT_SEQ], [*columns, [seq] * count], upsert_key=keys[0])

    def _chunk_ids(self, conn: Any, table: str, sources: Sequence[Any]) -> list:
        where = Compare(SOURCE, 'in', tuple(sources))
        return [row[0] for batch in self.lake.select(table, [CHUNK_ID], where) for row in batch]

    def _delete_outputs(self, conn: Any, table: str, sources: Sequence[Any]) -> None:
        self.lake.delete(conn, table, Compare(SOURCE, 'in', tuple(sources)))
