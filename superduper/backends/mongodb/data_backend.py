"""The MongoDB data backend: collections as tables, documents as rows.

Collections are schemaless: fields a ``Table`` declares are encoded by their types (artifacts, vectors, ...),
every other field is stored as given, and a read without a projection returns whole documents. The primary key
is ``_id`` (an ``ObjectId`` for new documents); a ``Table`` that declares its own key field (listener outputs key
theirs by ``_source``) keeps that field and also stores its value as ``_id``, so lookups and upserts by key use
MongoDB's own index.

MongoDB has no multi-document transactions on a standalone server, so ``begin()`` yields a ``Writes`` handle,
not a transaction: each statement is atomic per document. Inserts are all or nothing all the same: if anything in
the ``begin()`` block fails (a value that does not fit, a duplicate key), the documents it inserted are deleted
again before the error is raised. Updates and deletes are not undone.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Sequence

from superduper.backends.mongodb.connection import Connection, connect, redact
from superduper.backends.mongodb.filters import to_filter
from superduper.backends.base import Capabilities
from superduper.backends.feed import chunks
from superduper.base.exceptions import ConfigError, DatabaseError, QueryError
from superduper.base.query import Condition

if TYPE_CHECKING:
    from superduper.components.datatype import FieldType
    from superduper.components.table import Table

ID = '_id'


class Writes:
    """What ``begin()`` yields. While ``track`` is set (a change stream follows the collection), writes run in a
    session whose operation time, with the keys written, lets change-stream consumers skip what the writing process
    has already followed."""

    def __init__(self, backend: 'MongoDataBackend'):
        self.backend = backend
        self.track = False
        self.written: dict[str, list] = {}
        self.inserted: dict[str, list] = {}  # undone if the block fails
        self._session: Any = None

    @property
    def session(self) -> Any:
        if self.track and self._session is None and not self.backend.is_mock:
            self._session = self.backend.client.start_session(causal_consistency=False)
        return self._session

    @property
    def operation_time(self) -> Any:
        return None if self._session is None else self._session.operation_time

    def wrote(self, name: str, ids: list) -> None:
        if self.track:
            self.written.setdefault(name, []).extend(ids)

    def rollback(self) -> None:
        for name, ids in self.inserted.items():
            for part in chunks(ids):
                self.backend.database[name].delete_many({ID: {'$in': part}})
        self.inserted = {}

    def end(self) -> None:
        if self._session is not None:
            self._session.end_session()


class MongoDataBackend:
    """``mongodb://host:27017/<database>``, ``mongodb+srv://...`` or ``mongomock://<database>``."""

    scheme: ClassVar[str] = 'mongodb'
    schemaless: ClassVar[bool] = True
    tested = 'the shared suite on mongomock, in CI; on a server when SUPERDUPER_TEST_MONGODB_URI names one'
    capabilities: Capabilities = Capabilities(change_capture='change_stream', transactions=False, upsert=True,
                                              pipelines=True, full_text='text')

    def __init__(self, uri: str, connection: Connection | None = None):
        self.uri = uri
        found = connection or connect(uri)
        self.client, self.database, self.is_mock = found.client, found.database, found.is_mock
        self._keys: dict[str, str] = {}  # collection -> its declared key field, stored as _id too
        self._output_log: Any = None
        if self.is_mock:
            self.capabilities = dataclasses.replace(
                self.capabilities, change_capture='none', shared=False, persistent=False, full_text=None,
                unshared_reason=f'mongomock keeps {uri!r} inside one process; use mongodb://')

    @classmethod
    def shareable_uri(cls, uri: str, base_dir: str) -> str:
        if uri.partition('://')[0].lower() == 'mongomock':
            raise ConfigError(f'mongomock keeps {uri!r} inside one process; use mongodb://')
        return uri

    @classmethod
    def missing(cls, uri: str) -> str | None:
        return None  # a database that does not exist yet is an empty one: nothing is made by looking

    def primary_key(self, name: str) -> list[str]:
        return [self._keys.get(name, ID)]

    def __repr__(self) -> str:
        return f'MongoDataBackend({redact(self.uri)!r})'

    @property
    def conn(self) -> Any:
        """The driver's client, for native queries (``db.databackend.conn.test.my_collection.find_one()``)."""
        return self.client

    # ---- wiring ----------------------------------------------------------------------------------------------
    def metadata_store(self) -> Any:
        from superduper.backends.mongodb.metadata import MongoMetaDataStore

        return MongoMetaDataStore(self)

    def default_artifact_store(self, cache_dir: str) -> Any:
        from superduper.backends.mongodb.artifacts import MongoArtifactStore

        return MongoArtifactStore(self.uri, cache_dir=cache_dir, database=self.database)

    def change_feed(self, cfg: Any, metadata: Any) -> Any:
        from superduper.backends.mongodb.change_stream import ChangeStreamFeed

        return ChangeStreamFeed(self, metadata.failure_log())

    def native_vectors(self, table: str, field: str) -> bool:
        return False

    def output_log(self) -> Any:
        if self._output_log is None:
            from superduper.backends.mongodb.outputs import MongoOutputLog

            self._output_log = MongoOutputLog(self)
        return self._output_log

    def supports_change_streams(self) -> bool:
        """Replica sets and sharded clusters have change streams; a standalone server and mongomock do not."""
        import pymongo.errors

        if self.is_mock:
            return False
        try:
            hello = self.client.admin.command('hello')
        except pymongo.errors.OperationFailure:  # servers before 4.4.2 know it as isMaster
            hello = self.client.admin.command('isMaster')
        return 'setName' in hello or hello.get('msg') == 'isdbgrid'

    # ---- connections -----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def begin(self) -> Iterator[Writes]:
        writes = Writes(self)
        try:
            yield writes
        except BaseException:
            writes.rollback()
            raise
        finally:
            writes.end()

    def close(self) -> None:
        if not self.is_mock:  # the in-memory server lives as long as the process
            self.client.close()

    # ---- collections -------------------------------------------------------------------------------------------
    def table_names(self) -> list[str]:
        return sorted(n for n in self.database.list_collection_names() if not n.startswith('system.'))

    def has_table(self, name: str) -> bool:
        return name in self.database.list_collection_names()

    def describe(self, name: str) -> tuple[dict[str, str], tuple[str, ...]]:
        """Any collection, existing or not (MongoDB creates it on the first insert), keyed by ``_id``."""
        return {ID: 'any'}, (ID,)

    def primary_key_of(self, table: 'Table') -> str:
        declared = table.fields if table.fields is not None else table.schema.fields
        return table.primary_id if table.primary_id in declared else ID

    def declared_schema(self, table: 'Table') -> tuple[Any, str]:
        """Every document has an ``_id``; a declared default key field that is not the key is not one here."""
        from superduper.components.schema import OpenSchema

        key = self.primary_key_of(table)
        types = {k: t for k, t in table.resolved_schema.types.items() if k == key or k != table.primary_id}
        schema = OpenSchema(table.identifier, fields={ID: 'any', **types})
        self.bind_table(table.identifier, schema.types, key)
        return schema, key

    def new_ids(self, n: int) -> list:
        from bson import ObjectId

        return [ObjectId() for _ in range(n)]

    def bind_table(self, name: str, types: dict[str, 'FieldType'], primary_key: str) -> None:
        if primary_key == ID:
            self._keys.pop(name, None)
        else:
            self._keys[name] = primary_key

    def create_table(self, name: str, types: dict[str, 'FieldType'], primary_key: str) -> None:
        if not self.has_table(name):
            with self._errors('create', name):
                self.database.create_collection(name)
        self.bind_table(name, types, primary_key)

    def drop_table(self, name: str) -> None:
        with self._errors('drop', name):
            self.database.drop_collection(name)
        self.forget(name)

    def forget(self, name: str) -> None:
        self._keys.pop(name, None)

    def _field(self, name: str) -> Any:
        """Renames a collection's declared key field to ``_id`` (the same value, indexed) in filters and sorts."""
        key = self._keys.get(name)
        if key is None:
            return lambda f: f
        return lambda f: ID if f == key else f

    def keyword_searcher(self, name: str, table: str, key: str, primary_key: str, language: str | None) -> Any:
        """The server's text index of ``table.key`` (``capabilities.full_text``; not on mongomock)."""
        from superduper.backends.mongodb.full_text import MongoText

        return MongoText(self, name, table, key, primary_key, language)

    def _filter(self, name: str, where: Condition | None) -> dict:
        return to_filter(where, self._field(name))

    # ---- writes ---------------------------------------------------------------------------------------------
    def _documents(self, name: str, keys: Sequence[str], columns: list[list]) -> list[dict]:
        docs = [dict(zip(keys, row)) for row in zip(*columns)]
        key = self._keys.get(name)
        if key is not None:
            for doc in docs:
                doc[ID] = doc[key]
        return docs

    def insert(self, conn: Writes, name: str, keys: Sequence[str], columns: list[list],
               upsert_key: str | None = None) -> None:
        import pymongo.errors

        docs = self._documents(name, keys, columns)
        if not docs:
            return
        collection = self.database[name]
        with self._errors('insert into', name):
            if upsert_key is not None:
                self._replace(collection, docs, conn)
            else:
                try:
                    collection.insert_many(docs, ordered=True, session=conn.session)
                except pymongo.errors.BulkWriteError as e:  # ordered: the documents before the failing one went in
                    conn.inserted.setdefault(name, []).extend(d[ID] for d in docs[: e.details.get('nInserted', 0)])
                    raise
                conn.inserted.setdefault(name, []).extend(d[ID] for d in docs)
        conn.wrote(name, [d[ID] for d in docs])

    def insert_batches(self, conn: Writes, name: str, keys: Sequence[str], batches: list[list[list]]) -> None:
        for columns in batches:  # what went in is taken back with the rest of ``conn``'s writes if one fails
            self.insert(conn, name, keys, columns)

    def _replace(self, collection: Any, docs: list[dict], conn: Writes) -> None:
        """Upsert by ``_id``: one bulk write on a server; mongomock's bulk API lags pymongo's, so one by one there."""
        if self.is_mock:
            for doc in docs:
                collection.replace_one({ID: doc[ID]}, doc, upsert=True)
            return
        from pymongo import ReplaceOne

        collection.bulk_write([ReplaceOne({ID: d[ID]}, d, upsert=True) for d in docs], ordered=False,
                              session=conn.session)

    def insert_returning(self, conn: Writes, name: str, rows: list[dict]) -> list[tuple]:
        docs = [dict(r) for r in rows]
        with self._errors('insert into', name):
            ids = self.database[name].insert_many(docs, session=conn.session).inserted_ids
        conn.wrote(name, list(ids))
        return [(i,) for i in ids]

    def update(self, conn: Writes, name: str, values: dict[str, Any], where: Condition | None) -> int:
        key = self._keys.get(name, ID)
        if key in values:
            raise QueryError(f'update on {name!r} cannot change the primary key {key!r}')
        filt = self._filter(name, where)
        collection = self.database[name]
        with self._errors('update', name):
            if conn.track:
                conn.wrote(name, [d[ID] for d in collection.find(filt, {ID: 1}, session=conn.session)])
            return collection.update_many(filt, {'$set': values}, session=conn.session).matched_count

    def delete(self, conn: Writes, name: str, where: Condition | None) -> int:
        filt = self._filter(name, where)
        collection = self.database[name]
        with self._errors('delete from', name):
            if conn.track:
                conn.wrote(name, [d[ID] for d in collection.find(filt, {ID: 1}, session=conn.session)])
            return collection.delete_many(filt, session=conn.session).deleted_count

    # ---- reads ----------------------------------------------------------------------------------------------
    def select(
        self,
        name: str,
        columns: Sequence[str] | None,
        where: Condition | None = None,
        order_by: Sequence[tuple[str, bool]] = (),
        limit: int | None = None,
        offset: int = 0,
        batch_size: int = 2000,
        joins: Sequence[tuple[str, str, str, str]] = (),
    ) -> Iterator[list]:
        """Batches of tuples in ``columns`` order (then one value per join), or of whole documents (dicts, join
        values added under their column names) when ``columns`` is ``None``."""
        if limit == 0:  # MongoDB reads limit 0 as 'no limit'
            return
        wanted = None if columns is None else list(columns) + [on for _, _, on, _ in joins if on not in columns]
        field = self._field(name)
        with self._errors('select from', name):
            cursor = self.database[name].find(self._filter(name, where), self._projection(wanted))
            if order_by:
                cursor = cursor.sort([(field(c), -1 if descending else 1) for c, descending in order_by])
            if offset:
                cursor = cursor.skip(offset)
            if limit is not None:
                cursor = cursor.limit(limit)
            cursor = cursor.batch_size(batch_size)
            for docs in _chunks(cursor, batch_size):
                for other, column, on, key in joins:
                    self._join(docs, other, column, on, key)
                yield docs if columns is None else _tuples(docs, list(columns) + [j[1] for j in joins])

    def _join(self, docs: list[dict], other: str, column: str, on: str, key: str) -> None:
        """Set ``doc[column]`` from the document of ``other`` whose ``key`` equals ``doc[on]`` (``None`` if none)."""
        values = list({_get(d, on) for d in docs if _get(d, on) is not None})
        field = self._field(other)
        found = {}
        if values:
            for doc in self.database[other].find({field(key): {'$in': values}}, {field(key): 1, column: 1}):
                found[doc.get(field(key))] = doc.get(column)
        for doc in docs:
            doc[column] = found.get(_get(doc, on))

    @staticmethod
    def _projection(columns: list[str] | None) -> dict | None:
        if columns is None:
            return None
        projection = {c: 1 for c in columns}
        if ID not in projection:
            projection[ID] = 0
        return projection

    def rows_by_key(self, name: str, columns: Sequence[str] | None, key: str, values: Sequence[Any]) -> list:
        if not values:
            return []
        field = self._field(name)
        with self._errors('select from', name):
            docs = list(self.database[name].find({field(key): {'$in': list(values)}},
                                                 self._projection(None if columns is None else list(columns))))
        return docs if columns is None else _tuples(docs, list(columns))

    def count(self, name: str, where: Condition | None = None) -> int:
        with self._errors('count', name):
            return self.database[name].count_documents(self._filter(name, where))

    def aggregate(self, name: str, pipeline: Sequence[dict], batch_size: int = 2000) -> Iterator[list[dict]]:
        """Batches of the documents a raw aggregation pipeline returns."""
        with self._errors('aggregate', name):
            yield from _chunks(self.database[name].aggregate(list(pipeline), batchSize=batch_size), batch_size)

    @contextlib.contextmanager
    def _errors(self, action: str, name: str) -> Iterator[None]:
        import bson.errors
        import pymongo.errors

        try:
            yield
        except pymongo.errors.BulkWriteError as e:
            errors = e.details.get('writeErrors') or [{}]
            reason = errors[0].get('errmsg', str(e))
            if errors[0].get('code') == 11000:
                reason = f'duplicate key {errors[0].get("op", {}).get(ID)!r} ({reason})'
            raise DatabaseError(f'{action} collection {name!r} failed: {reason}') from e
        except (pymongo.errors.PyMongoError, bson.errors.BSONError) as e:
            raise DatabaseError(f'{action} collection {name!r} failed: {str(e).splitlines()[0][:500]}') from e


def _chunks(cursor: Any, size: int) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for doc in cursor:
        batch.append(doc)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _get(doc: dict, field: str) -> Any:
    """``doc[field]``, following dots into sub-documents (``'meta.author'``); ``None`` where missing."""
    if field in doc or '.' not in field:
        return doc.get(field)
    value: Any = doc
    for part in field.split('.'):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _tuples(docs: list[dict], columns: list[str]) -> list[tuple]:
    return [tuple(_get(d, c) for c in columns) for d in docs]
