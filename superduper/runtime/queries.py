"""Running a query: reads (select, ids, count, aggregate, vector search), writes (insert, update, delete) in one
transaction each, with the listeners that follow the table synchronously brought up to date before returning."""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from superduper.base.document import Document
from superduper.base.exceptions import QueryError, UnknownTable
from superduper.base.protocols import Runtime
from superduper.base.query import And, Compare, Condition, Cursor, Query, key_in
from superduper.components.listener import outputs_table
from superduper.components.rerank import SCORE as RERANK_SCORE
from superduper.components.rerank import rerank
from superduper.runtime import hybrid
from superduper.runtime import chunk_search
from superduper.runtime.inserts import Inserter, as_rows
from superduper.runtime.tables import TableInfo, Tables, encode_condition

#: the fewest candidates a reranked search fetches (by default four times the rows it returns)
RERANK_CANDIDATES = 20
IDS_BATCH = 50_000  # ids read a round trip by a filtered search (ids are small)


class QueryExecutor:
    """Executes queries for a datalayer (``db``: its change feed, listening and vector indexes are made on first
    use)."""

    def __init__(self, db: Runtime, tables: Tables):
        self.db = db
        self.tables = tables
        self.databackend = db.databackend
        self.artifact_store = db.artifact_store
        self.cfg = db.cfg
        self.inserter = Inserter(db.databackend, db.artifacts.holding, db.cfg)

    def execute(self, query: Query) -> Any:
        if not isinstance(query, Query):
            raise QueryError(f'db.execute takes a query such as db["t"].select(), got {type(query).__name__}')
        info = self.tables.get(query.table)
        info.schema.check_fields(query.table, query.fields_used())
        where = encode_condition(query.where, info) if query.where is not None else None
        if query.action in ('insert', 'insert_one'):
            write = self.inserter.prepare(info, as_rows(query.documents, query.table))
            with self._writing(info) as (conn, handle):
                ids = write(conn)
                if handle is not None:
                    handle.add(ids)
            return ids[0] if query.action == 'insert_one' else ids
        if query.match_ is not None:  # keyword search, alone or fused with like()
            return hybrid.search(self, info, query, where)
        if query.like_ is not None:
            return self._like(info, query, where)
        if query.action == 'aggregate':
            return self._aggregate(info, query)
        if query.action == 'select':
            return self._select(info, query, where)
        if query.action == 'one':
            return next(iter(self._select(info, query, where, limit=1)), None)
        if query.action == 'ids':
            return self._ids(info, query, where)
        if query.action == 'count':
            return self.databackend.count(query.table, where)
        if query.action in ('update', 'delete'):
            return self._change(info, query, where)
        raise QueryError(f'unknown query action {query.action!r}')

    def _change(self, info: TableInfo, query: Query, where: Condition | None) -> int:
        """Update or delete, then bring the listeners on the table up to date with the rows it touched."""
        if query.limit_ is not None:  # update_one, delete_one: the first rows by key
            if len(info.primary_key) != 1:
                raise QueryError(f'{query.action} with a limit needs a single-column primary key; {info.name!r} has '
                                 f'{info.primary_key}')
            where = Compare(info.primary_key[0], 'in', tuple(self._ids(info, query, where)))
        values = self._encode_values(info, query.values) if query.action == 'update' else {}
        with self._writing(info, touched=lambda: self._ids(info, query, where)) as (conn, handle):
            if query.action == 'update':
                count = self.databackend.update(conn, query.table, values, where)
            else:
                count = self.databackend.delete(conn, query.table, where)
            if handle is not None and set(info.primary_key) <= set(values):  # a key changed: the new key too
                handle.add([values[info.primary_key[0]] if len(info.primary_key) == 1
                            else tuple(values[k] for k in info.primary_key)])
        return count

    @contextlib.contextmanager
    def _writing(self, info: TableInfo, touched: Any = None) -> Iterator[tuple[Any, Any]]:
        """A write transaction on ``info``'s table. Where listeners follow it synchronously (``outputs='sync'``, the
        default), their outputs are computed once it commits (before ``execute()`` returns), by this process or the
        cluster; the others' changes are left to the workers (recorded by the database, whoever writes). Where the
        database does not record which rows a write changed, ``touched()`` says, read before the write."""
        if not self.db.listening.synchronous(info.name):
            with self.databackend.begin() as conn:
                yield conn, None
            return
        before = touched() if touched is not None and not self.db.changes.durable else []
        with self.databackend.begin() as conn, self.db.changes.writing(conn, info.name, info.primary_key) as handle:
            handle.add(before)
            yield conn, handle
        self.db.listening.written(handle)

    def _aggregate(self, info: TableInfo, query: Query) -> Any:
        if not self.databackend.capabilities.pipelines:
            raise QueryError(f'aggregate() runs MongoDB pipelines; {info.name!r} is a table in {self.databackend!r}: '
                             'use select, filter, find and count')
        decode = info.schema.row_decoder(None, self.artifact_store)
        batches = self.databackend.aggregate(info.name, query.pipeline, self.cfg.read_batch_size)
        return Cursor(decode(batch) for batch in batches)

    def _columns(self, info: TableInfo, query: Query) -> list[str] | None:
        """The fields a read returns: ``None`` for whole rows of a schemaless table."""
        if not query.columns:
            return None if info.schema.open else info.schema.field_names()
        columns = list(query.columns)
        if query.keep_id and '_id' in info.schema.types and '_id' not in columns:
            columns.insert(0, '_id')
        return columns

    def _like(self, info: TableInfo, query: Query, where: Condition | None) -> Any:
        """Vector search, then the matching rows fetched by primary key, nearest first with ``_score``."""
        spec, name, n = query.like_
        if query.rerank_ is not None:  # the reranker picks the n best of more candidates
            n = query.rerank_[3] or max(4 * n, RERANK_CANDIDATES)
        loaded = self.db.vector_indexes.get(name)
        chunks = chunk_search.chunks_of(self.db, loaded.component) if loaded.component.source != info.name else None
        if loaded.component.source != info.name and (chunks is None or chunks.source != info.name):
            raise QueryError(f'vector index {name!r} indexes table {loaded.component.source!r}, not {info.name!r}')
        if query.chunks_ and chunks is None:
            raise QueryError(f'like(chunks=True): vector index {name!r} indexes rows of {info.name!r}, not chunks '
                             'of them (index a listener over a flatten=True listener\'s outputs)')
        pk = info.primary_key
        selected = query.columns
        only_for_reranker = query.rerank_ is not None and bool(selected) and query.rerank_[2] not in selected \
            and not (chunks is not None and query.rerank_[2] == chunk_search.CHUNK)
        if only_for_reranker:  # the reranker reads the field; the rows come back without it
            query = query._with(columns=selected + (query.rerank_[2],))
        rows_filter = _FilteredRows(self.databackend, info.name, pk, where)
        if chunks is not None:
            spec = chunk_search.query_spec(spec, chunks, loaded.component)
        vector = self.db.vector_indexes.encode(loaded, spec)
        found_chunks: dict = {}  # index id -> (chunk row) of a search through chunks
        if chunks is not None:
            found = chunk_search.best_chunks(self.db, loaded, vector, n, where is not None,
                                             chunk_search.ChunkRows(self.db, chunks, rows_filter), not query.chunks_)
            if query.chunks_:
                return self._chunk_rows(query, chunks, found)
            hits = [(row['_source'], score) for row, score in found]
            found_chunks = {row['_source']: row for row, _ in found}
        else:
            hits = self.db.vector_indexes.search(loaded, vector, n, where, rows_filter, pk)
        scores = dict(hits)  # index id -> score; an index id is the key, or a composite key's text
        keys = rows_filter.keys_of(list(scores))
        index_id = dict(zip(keys, scores))
        wanted = self._columns(info, query)
        if query.joined or len(pk) > 1:
            columns = query.columns and (query.columns + tuple(k for k in pk if k not in query.columns))
            fetch = dataclasses.replace(query, like_=None, action='select', columns=columns, limit_=None, offset_=0)
            rows = self._select(info, fetch, key_in(pk, keys)).tolist() if scores else []
        else:
            columns = wanted if wanted is None or pk[0] in wanted else [pk[0]] + wanted
            found = self.databackend.rows_by_key(info.name, columns, pk[0], list(scores))
            rows = info.schema.row_decoder(columns, self.artifact_store)(found)
        rank = {i: r for r, i in enumerate(scores)}  # the searcher's order: equal scores stay as it gave them
        for row in rows:
            row['_score'] = scores[index_id[row[pk[0]] if len(pk) == 1 else tuple(row[k] for k in pk)]]
        if chunks is not None:
            chunk_search.add_best_chunks(rows, pk, index_id, found_chunks, chunks)
        rows.sort(key=lambda r: rank[index_id[r[pk[0]] if len(pk) == 1 else tuple(r[k] for k in pk)]])
        for k in pk:
            if wanted is not None and k not in wanted:
                for row in rows:
                    del row[k]
        if query.rerank_ is not None:
            rows = self._reranked(rows, query, only_for_reranker)
        rows = rows[query.offset_ :][: query.limit_] if query.limit_ is not None else rows[query.offset_ :]
        if query.action == 'one':
            return next(iter(rows), None)
        outputs = [outputs_table(p) for p in query.joined]
        scores = ['_score'] + ([RERANK_SCORE] if query.rerank_ is not None else [])
        if chunks is not None:
            scores = [chunk_search.CHUNK, chunk_search.CHUNK_POSITION, *scores]
        if only_for_reranker:
            wanted = list(selected)
        return Cursor(iter([rows]), None if wanted is None else [*wanted, *outputs, *scores], plan=rows_filter.plan)

    def _chunk_rows(self, query: Query, chunks: Any, found: list) -> Cursor:
        """``like(chunks=True)``: the best chunks themselves (reranked if asked), nearest first."""
        rows = chunk_search.chunk_documents(found, chunks)
        if query.rerank_ is not None:
            rows = self._reranked(rows, query, False)
        rows = rows[query.offset_ :][: query.limit_] if query.limit_ is not None else rows[query.offset_ :]
        if query.action == 'one':
            return next(iter(rows), None)
        extra = [RERANK_SCORE] if query.rerank_ is not None else []
        return Cursor(iter([rows]), [*chunk_search.CHUNK_COLUMNS, *extra])

    def _reranked(self, rows: list, query: Query, drop_key: bool) -> list:
        """The ``n`` best rows by the query's reranker (without its field if it was read only for it)."""
        reranker, text, key, _ = query.rerank_
        model = self.db.load('Model', reranker) if isinstance(reranker, str) else reranker
        best = rerank(model, text, rows, key, query.like_[2])
        if drop_key:
            for row in best:
                del row[key]
        return [Document(row) for row in best]

    def _select(self, info: TableInfo, query: Query, where: Condition | None, limit: int | None = None) -> Cursor:
        listed = chunk_search.chunked_outputs(self.tables, query.joined)
        if listed:  # a flattening listener's outputs: a list per row, read after the rows
            cursor = self._select(info, query._with(action=query.action,
                                                    joined=tuple(p for p in query.joined if p not in listed),
                                                    columns=chunk_search.with_key(query.columns, info.primary_key)),
                                  where, limit)
            return chunk_search.with_chunk_lists(self.db, cursor, info, listed, query.columns,
                                                 self.cfg.read_batch_size)
        columns = self._columns(info, query)
        schema, joins = info.schema, []
        if query.joined:
            fields = dict(info.schema.types)
            for predict_id in query.joined:
                outputs = outputs_table(predict_id)
                try:
                    fields[outputs] = self.tables.get(outputs).schema.types[outputs]
                except (UnknownTable, KeyError):
                    raise QueryError(f'no listener outputs {predict_id!r}: table {outputs!r} does not exist') from None
                on = info.primary_key[0] if len(info.primary_key) == 1 else tuple(info.primary_key)
                joins.append((outputs, outputs, on, '_source'))
            schema = type(info.schema)(info.name, fields=fields)
        keys = None if columns is None else columns + [j[1] for j in joins]
        decode = schema.row_decoder(keys, self.artifact_store)
        args = (info.name, columns, where, query.order, query.limit_ if limit is None else limit, query.offset_)
        batches = self.databackend.select(*args, self.cfg.read_batch_size, joins=joins)
        if keys is None:
            return Cursor((decode(batch) for batch in batches), keys)
        decode_columns = schema.column_decoder(keys, self.artifact_store)

        def column_batches(size: int | None) -> Iterator[list]:
            """The same read column by column, for DataFrames: no ``Document`` per row."""
            size = size or self.cfg.read_batch_size
            if self.databackend.capabilities.columnar_reads:
                reads = self.databackend.select_columns(*args, size, joins=joins)
            else:
                reads = (list(zip(*batch)) for batch in self.databackend.select(*args, size, joins=joins) if batch)
            return (decode_columns(columns) for columns in reads)

        return Cursor((decode(batch) for batch in batches), keys, column_batches)

    def _ids(self, info: TableInfo, query: Query, where: Condition | None) -> list:
        pk = list(info.primary_key)
        batches = self.databackend.select(info.name, pk, where, query.order, query.limit_, query.offset_,
                                          self.cfg.read_batch_size)
        if len(pk) == 1:
            return [row[0] for batch in batches for row in batch]
        return [tuple(row) for batch in batches for row in batch]

    def _encode_values(self, info: TableInfo, values: Mapping[str, Any]) -> dict[str, Any]:
        keys = list(values)
        with self.db.artifacts.holding(info.name) as artifacts:
            columns = info.schema.encode_columns(info.name, keys, [[values[k]] for k in keys], artifacts)
        return {k: c[0] for k, c in zip(keys, columns)}


@dataclass
class _FilteredRows:
    """The rows of ``table`` matching ``where``, for a filtered vector search, by their vector index ids: the
    primary key, or the text a composite key is stored as next to its outputs (``key_text``)."""

    databackend: Any
    table: str
    primary_key: tuple[str, ...]
    where: Condition | None
    #: how the search went (searcher, strategy, candidates): the result cursor's ``plan``
    plan: dict = dataclasses.field(default_factory=dict)

    def keys_of(self, ids: list) -> list:
        """The primary keys of these index ids."""
        return ids if len(self.primary_key) == 1 else self.databackend.decode_keys(self.table, ids)

    def count_among(self, ids: list) -> int:
        """How many of these index ids (a search's hits) match the filter now."""
        fast = getattr(self.databackend, 'count_by_key', None)  # SQL backends: one statement compiled once
        if fast is None or len(self.primary_key) > 1 or self.where is None:
            return len(self.ids(ids))
        return fast(self.table, self.primary_key[0], ids, self.where)

    def ids(self, among: list | None, limit: int | None = None) -> list:
        pk = list(self.primary_key)
        cond = self.where if among is None else And((self.where, key_in(tuple(pk), self.keys_of(among))))
        batches = self.databackend.select(self.table, pk, cond, limit=limit, batch_size=IDS_BATCH)
        found = [r[0] if len(pk) == 1 else tuple(r) for batch in batches for r in batch]
        if len(pk) == 1:
            return found
        texts = dict(zip(self.keys_of(among), among)) if among is not None else \
            self.databackend.render_keys(self.table, found)
        return [texts[k] for k in found if k in texts]
