"""The row writes every ``OutputLog`` shares (``superduper.backends.base``): outputs upserted with the write's number,
and the outputs of removed sources deleted in chunks. Each backend keeps its own counter and deletions."""

from __future__ import annotations

from typing import Any, Sequence

from superduper.backends.base import OUTPUT_SEQ
from superduper.backends.feed import chunks
from superduper.base.query import Compare

SOURCE = '_source'


class OutputRows:
    backend: Any

    def store(self, conn: Any, table: str, seq: int, keys: Sequence[str], columns: list[list]) -> None:
        count = len(columns[0])
        self.backend.insert(conn, table, [*keys, OUTPUT_SEQ], [*columns, [seq] * count], upsert_key=keys[0])

    def _delete_outputs(self, conn: Any, table: str, sources: Sequence[Any]) -> None:
        for part in chunks(sources):
            self.backend.delete(conn, table, Compare(SOURCE, 'in', tuple(part)))
