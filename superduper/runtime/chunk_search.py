"""Vector search over chunks: an index over the outputs of a listener that reads a flattening listener's chunks
(``Listener(..., flatten=True)``), searched from the table the chunks come from.

``like()`` on that table returns its rows, each once, scored by its best chunk: chunk hits are taken in order of
similarity, oversampled and widened until ``n`` different rows are among them (or every chunk was looked at), so the
rows are the ``n`` with the nearest best chunk. Filters on the table are exact: a chunk passes when its row matches
(``ChunkRows``), and the index's own filtered search (exact over few matches, widening ANN candidates otherwise)
runs over the chunk ids. With ``chunks=True`` the best chunks come back themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from superduper.backends.base import CHUNK_ID, POSITION
from superduper.base.document import Document
from superduper.base.query import Compare, Cursor
from superduper.components.listener import outputs_table

if TYPE_CHECKING:
    from superduper.base.protocols import Runtime
    from superduper.runtime.vector_indexes import FilteredRows, LoadedIndex

SOURCE = '_source'
#: the names a row found through its chunks gets for them
CHUNK, CHUNK_POSITION = '_chunk', POSITION
#: chunk hits taken per row wanted, at first (rows have several chunks; a row's other chunks are near its best one)
OVERSAMPLE = 4
ID_CHUNK = 1000


@dataclass(frozen=True)
class Chunks:
    """A flattening listener's outputs table (``table``, its output column named the same), and the table whose rows
    it splits (``source``)."""

    table: str
    source: str
    key: Any = None  # the field of ``source`` the flattening listener splits

    @property
    def column(self) -> str:
        return self.table


def chunks_of(db: 'Runtime', index: Any) -> Chunks | None:
    """The chunks a vector index searches: where its listener reads a flattening listener's outputs."""
    table = index.indexing_listener.source
    for source, records in db.listening.records().items():
        for record in records:
            if record['record'].get('flatten') and outputs_table(f"{record['identifier']}__{record['uuid'][:8]}") == table:
                return Chunks(table, source, record['record'].get('key'))
    return None


def query_spec(spec: Any, chunks: Chunks, index: Any) -> Any:
    """``like({field: text})`` may name the field the chunks are cut from: the index encodes the text as a chunk."""
    if isinstance(spec, dict) and len(spec) == 1 and chunks.key is not None and next(iter(spec)) == chunks.key:
        keys = [x.key for x in (index.indexing_listener, index.compatible_listener) if x is not None]
        if chunks.key not in keys:
            return {index.indexing_listener.key: next(iter(spec.values()))}
    return spec


class ChunkRows:
    """The chunks whose source row matches the search's filter (``sources``: those rows), by chunk id: what the
    index's filtered search asks of the rows it may return (``superduper.runtime.vector_indexes.FilteredRows``)."""

    def __init__(self, db: 'Runtime', chunks: Chunks, sources: 'FilteredRows'):
        self.db, self.chunks, self.sources = db, chunks, sources
        self.plan = sources.plan  # the search's plan is the result's, as for a search of the rows themselves
        self.found: dict[Any, dict] = {}  # chunk id -> chunk row, read once

    def ids(self, among: list | None, limit: int | None = None) -> list:
        """The chunk ids (of ``among``, or all: at most ``limit``) whose source row matches the filter."""
        if among is None:
            keys = self.sources.ids(None)
            backend, found = self.db.databackend, []
            for i in range(0, len(keys), ID_CHUNK):
                where = Compare(SOURCE, 'in', tuple(keys[i : i + ID_CHUNK]))
                found += [r[0] for batch in backend.select(self.chunks.table, [CHUNK_ID], where) for r in batch]
                if limit is not None and len(found) >= limit:
                    return found[:limit]
            return found
        rows = self.rows(among)
        allowed = set(self.sources.ids(list(dict.fromkeys(r[SOURCE] for r in rows.values()))))
        return [c for c in among if c in rows and rows[c][SOURCE] in allowed]

    def count_among(self, ids: list) -> int:
        """How many of these chunk ids (a search's hits) belong to rows matching the filter now."""
        return len(self.ids(ids))

    def rows(self, ids: list) -> dict[Any, dict]:
        """The chunk rows of these chunk ids (those still stored), read once each."""
        missing = [i for i in dict.fromkeys(ids) if i not in self.found]
        if missing:
            info = self.db.table_info(self.chunks.table)
            columns = [CHUNK_ID, SOURCE, POSITION, self.chunks.column]
            decode = info.schema.row_decoder(columns, self.db.artifact_store)
            for i in range(0, len(missing), ID_CHUNK):
                found = self.db.databackend.rows_by_key(self.chunks.table, columns, CHUNK_ID, missing[i : i + ID_CHUNK])
                self.found.update((row[CHUNK_ID], row) for row in decode(found))
        return {i: self.found[i] for i in ids if i in self.found}


def best_chunks(db: 'Runtime', loaded: 'LoadedIndex', vector: Any, n: int, filtered: bool, rows: ChunkRows,
                per_source: bool) -> list[tuple[dict, float]]:
    """``(chunk row, score)``, nearest first: the ``n`` best chunks of rows the filter passes, or (``per_source``)
    the best chunk of each of the ``n`` rows whose best chunk is nearest."""
    indexes = db.vector_indexes
    total = len(loaded.searcher) if loaded.searcher is not None and not loaded.native else \
        db.databackend.count(rows.chunks.table)
    k = min(max(total, 1), n * OVERSAMPLE if per_source else n)
    while True:
        if loaded.native and filtered:  # the database filters the chunks' own table: check their rows here
            hits = indexes.search(loaded, vector, k, None, rows, (CHUNK_ID,))
            allowed = set(rows.ids([i for i, _ in hits]))
            hits = [h for h in hits if h[0] in allowed]
        else:
            hits = indexes.search(loaded, vector, k, rows.sources.where if filtered else None, rows, (CHUNK_ID,))
        found = rows.rows([i for i, _ in hits])
        chosen: dict[Any, tuple[dict, float]] = {}
        for chunk, score in hits:
            row = found.get(chunk)
            if row is None:  # removed since the index last looked
                continue
            key = row[SOURCE] if per_source else chunk
            chosen.setdefault(key, (row, score))
        if len(chosen) >= n or k >= total:
            return list(chosen.values())[:n]
        k = min(total, k * 4)


#: the fields of a chunk found by ``like(..., chunks=True)``
CHUNK_COLUMNS = (CHUNK_ID, SOURCE, POSITION, CHUNK, '_score')


def chunk_documents(found: list[tuple[dict, float]], chunks: Chunks) -> list:
    """The chunks found, as rows: their key, source, position, value (``_chunk``) and score."""
    return [Document({CHUNK_ID: row[CHUNK_ID], SOURCE: row[SOURCE], POSITION: row[POSITION],
                      CHUNK: row[chunks.column], '_score': score}) for row, score in found]


def add_best_chunks(rows: list, pk: tuple[str, ...], index_id: dict, found: dict, chunks: Chunks) -> None:
    """Give each row found through its chunks its best chunk (``_chunk``) and that chunk's ``_position``."""
    for row in rows:
        chunk = found[index_id[row[pk[0]] if len(pk) == 1 else tuple(row[k] for k in pk)]]
        row[CHUNK] = chunk[chunks.column]
        row[CHUNK_POSITION] = chunk[POSITION]


# ---- select().outputs(<flattening listener>): each row's chunks as a list ----------------------------------------
def chunked_outputs(tables: Any, predict_ids: tuple[str, ...]) -> list[str]:
    """The predict ids among ``predict_ids`` whose outputs are chunks (a flattening listener's)."""
    listed = []
    for predict_id in predict_ids:
        try:
            if CHUNK_ID in tables.get(outputs_table(predict_id)).schema.types:
                listed.append(predict_id)
        except Exception:  # not a table: the join reports it
            continue
    return listed


def with_key(columns: tuple[str, ...] | None, pk: tuple[str, ...]) -> tuple[str, ...] | None:
    """The selected columns with the primary key added (the chunks are found by it)."""
    return None if not columns else columns + tuple(k for k in pk if k not in columns)


def with_chunk_lists(db: 'Runtime', cursor: Any, info: Any, predict_ids: list[str], selected: Any,
                     batch_size: int) -> Any:
    """The rows of ``cursor``, each with the list of its chunks of each flattening listener in ``predict_ids``, in
    order of position (``[]`` for none), under the outputs table's name."""
    pk = info.primary_key
    tables = [outputs_table(p) for p in predict_ids]
    dropped = [k for k in pk if selected and k not in selected]

    def attach(rows: list) -> list:
        keys = [row[pk[0]] if len(pk) == 1 else tuple(row[k] for k in pk) for row in rows]
        texts = dict(zip(keys, keys)) if len(pk) == 1 else db.databackend.render_keys(info.name, keys)
        for table in tables:
            lists = _chunk_lists(db, table, list(texts.values()))
            for row, key in zip(rows, keys):
                row[table] = lists.get(texts.get(key), [])
        for row in rows:
            for k in dropped:
                del row[k]
        return rows

    def batches() -> Any:
        rows: list = []
        for row in cursor:
            rows.append(row)
            if len(rows) >= batch_size:
                yield attach(rows)
                rows = []
        if rows:
            yield attach(rows)

    columns = None if cursor.columns is None else [c for c in cursor.columns if c not in dropped] + tables
    return Cursor(batches(), columns)


def _chunk_lists(db: 'Runtime', table: str, sources: list) -> dict[Any, list]:
    """Each source's chunk values, in order of position."""
    decode = db.table_info(table).schema.row_decoder([SOURCE, POSITION, table], db.artifact_store)
    found: dict[Any, list] = {}
    for i in range(0, len(sources), ID_CHUNK):
        where = Compare(SOURCE, 'in', tuple(sources[i : i + ID_CHUNK]))
        for batch in db.databackend.select(table, [SOURCE, POSITION, table], where):
            for row in decode(batch):
                found.setdefault(row[SOURCE], []).append((row[POSITION], row[table]))
    return {k: [v for _, v in sorted(items, key=lambda x: x[0])] for k, items in found.items()}
