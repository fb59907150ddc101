"""The row writes every ``OutputLog`` shares (``superduper.backends.base``): outputs upserted with the write's number,
the outputs of removed sources deleted in chunks, and a flattening listener's chunks replaced per source. Each
backend keeps its own counter and deletions."""

from __future__ import annotations

from typing import Any, Sequence

from superduper.backends.base import CHUNK_ID, OUTPUT_SEQ
from superduper.backends.feed import chunks
from superduper.base.query import Compare

SOURCE = '_source'


class OutputRows:
    backend: Any

    def store(self, conn: Any, table: str, seq: int, keys: Sequence[str], columns: list[list]) -> None:
        count = len(columns[0])
        self.backend.insert(conn, table, [*keys, OUTPUT_SEQ], [*columns, [seq] * count], upsert_key=keys[0])

    def remove(self, conn: Any, table: str, seq: int, sources: Sequence[Any]) -> None:
        if not sources:
            return
        self._delete_outputs(conn, table, sources)
        self._log_deletions(conn, table, seq, sources)

    def replace_chunks(self, conn: Any, table: str, seq: int, keys: Sequence[str], columns: list[list],
                       sources: Sequence[Any]) -> list:
        old = [c for part in chunks(list(dict.fromkeys(sources))) for c in self._chunk_ids(conn, table, part)]
        new = list(columns[0]) if columns else []
        if old:
            self._delete_outputs(conn, table, sources)
        if new:
            self.store(conn, table, seq, keys, columns)
        written = set(new)
        gone = [c for c in old if c not in written]
        if gone:
            self._log_deletions(conn, table, seq, gone)
        return list(dict.fromkeys([*old, *new]))

    def _chunk_ids(self, conn: Any, table: str, sources: Sequence[Any]) -> list:
        """The keys of the chunks stored for these sources (read in the writer's transaction where it can be)."""
        where = Compare(SOURCE, 'in', tuple(sources))
        return [row[0] for batch in self.backend.select(table, [CHUNK_ID], where) for row in batch]

    def _delete_outputs(self, conn: Any, table: str, sources: Sequence[Any]) -> None:
        for part in chunks(sources):
            self.backend.delete(conn, table, Compare(SOURCE, 'in', tuple(part)))

    def _log_deletions(self, conn: Any, table: str, seq: int, keys: Sequence[Any]) -> None:
        """Record that the rows with these keys were deleted by the write numbered ``seq``."""
        raise NotImplementedError
