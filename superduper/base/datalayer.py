"""The ``Datalayer``: one object wiring the data backend, metadata store, artifact store and compute."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import os
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from superduper.base import faults
from superduper.base.config import Config, load_config
from superduper.base.exceptions import ComponentError, ConfigError, InvalidValue, NotFound, QueryError, UnknownTable
from superduper.base.query import And, Compare, Condition, Cursor, Not, Or, Query, key_in
from superduper.components.component import (
    Component, artifact_keys, decode_record, encode_component, import_class, ordered_references,
    references,
)
from superduper.components.datatype import Scalar
from superduper.components.listener import outputs_table
from superduper.components.schema import OpenSchema, Schema
from superduper.components.table import Table

log = logging.getLogger('superduper')


@dataclass
class TableInfo:
    """What a query needs to know about a table: its fields' types and its primary key."""

    name: str
    schema: Schema
    primary_key: tuple[str, ...]
    auto_id: bool  # superduper fills a missing key (a string id, or the database's own kind such as an ObjectId)


class Datalayer:
    def __init__(self, databackend: Any, metadata: Any, artifact_store: Any, compute: Any, cfg: Config):
        self.databackend = databackend
        self.metadata = metadata
        self.artifact_store = artifact_store
        self.compute = compute
        self.cfg = cfg
        self._tables: dict[str, TableInfo] = {}
        self._loaded: dict[str, Component] = {}
        self._listening: Any = None
        self._vector_indexes: Any = None
        self._changes: Any = None
        self._applying = threading.local()  # what the apply running in this thread has stored (to undo on failure)
        self._components_token: str | None = None
        self._components_checked = -math.inf
        self._generation = 0

    @property
    def changes(self) -> Any:
        """The change feed of the data backend (``superduper.backends.base.ChangeFeed``)."""
        if self._changes is None:
            self._changes = self.databackend.change_feed(self.cfg, self.metadata)
        return self._changes

    @property
    def listening(self) -> Any:
        """The machinery keeping listeners' outputs current (see ``superduper.base.listening``)."""
        if self._listening is None:
            from superduper.base.listening import Listening

            self._listening = Listening(self)
        return self._listening

    def __repr__(self) -> str:
        return f'Datalayer({self.databackend!r})'

    @property
    def vector_indexes(self) -> Any:
        """Loaded vector indexes (see ``superduper.base.vector_indexes``)."""
        if self._vector_indexes is None:
            from superduper.base.vector_indexes import VectorIndexes

            self._vector_indexes = VectorIndexes(self)
        return self._vector_indexes

    def components_generation(self, fresh: bool = False) -> int:
        """A number that grows when components were applied or removed, by this process or another, since the
        last look (the metadata is asked at most once per poll interval, or now if ``fresh``). Caches of
        components compare it."""
        now = time.monotonic()
        if fresh or now - self._components_checked >= self.cfg.poll_interval:
            self._components_checked = now
            token = self.metadata.components_version()
            if token != self._components_token:
                if self._components_token is not None:
                    self._generation += 1
                    self._tables.clear()  # a table may have been typed or re-declared meanwhile
                self._components_token = token
        return self._generation

    def __getitem__(self, table: str) -> Query:
        if not isinstance(table, str) or not table:
            raise QueryError(f'a table name is a non-empty string, got {table!r}')
        return Query(table, db=self)

    def close(self) -> None:
        if self._listening is not None:
            self._listening.consumer.stop()
        if self._changes is not None:
            self._changes.close()
        if self._vector_indexes is not None:
            self._vector_indexes.close()
        self.compute.close()
        self.databackend.close()
        self.metadata.close()

    def __enter__(self) -> 'Datalayer':
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- tables -------------------------------------------------------------------------------------------
    def table_info(self, name: str) -> TableInfo:
        info = self._tables.get(name)
        if info is None:
            info = self._tables[name] = self._describe_table(name)
        return info

    def _describe_table(self, name: str) -> TableInfo:
        record = self.metadata.get('Table', name)
        schemaless = self.databackend.schemaless
        if record is not None:
            table: Table = self.load_record(record)
            key = self.databackend.primary_key_of(table)
            schema = table.resolved_schema
            if schemaless:  # every document has an _id; an undeclared default key field is not the key here
                types = {k: t for k, t in schema.types.items() if k == key or k != table.primary_id}
                schema = OpenSchema(name, fields={'_id': 'any', **types})
            self.databackend.bind_table(name, schema.types, key)
            return TableInfo(name, schema, (key,), auto_id=True)
        kinds, primary_key = self.databackend.describe(name)
        # a document database gives every new row a key; a SQL table made elsewhere keeps its own keys
        return TableInfo(name, (OpenSchema if schemaless else Schema)(name, fields=kinds), primary_key,
                         auto_id=schemaless)

    def forget_table(self, name: str) -> None:
        self._tables.pop(name, None)
        self.databackend.forget(name)

    # ---- queries ------------------------------------------------------------------------------------------
    def execute(self, query: Query) -> Any:
        if not isinstance(query, Query):
            raise QueryError(f'db.execute takes a query such as db["t"].select(), got {type(query).__name__}')
        info = self.table_info(query.table)
        info.schema.check_fields(query.table, query.fields_used())
        where = _encode_condition(query.where, info) if query.where is not None else None
        if query.action in ('insert', 'insert_one'):
            rows = _as_rows(query.documents, query.table)
            with self._writing(info) as (conn, handle):
                ids = self._insert(conn, info, rows)
                if handle is not None:
                    handle.add(ids)
            return ids[0] if query.action == 'insert_one' else ids
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
        if not self.listening.synchronous(info.name):
            with self.databackend.begin() as conn:
                yield conn, None
            return
        before = touched() if touched is not None and not self.changes.durable else []
        with self.databackend.begin() as conn, self.changes.writing(conn, info.name, info.primary_key) as handle:
            handle.add(before)
            yield conn, handle
        self.listening.written(handle)

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
        loaded = self.vector_indexes.get(name)
        if loaded.component.source != info.name:
            raise QueryError(f'vector index {name!r} indexes table {loaded.component.source!r}, not {info.name!r}')
        pk = info.primary_key
        rows_filter = _FilteredRows(self.databackend, info.name, pk, where)
        hits = self.vector_indexes.search(loaded, self.vector_indexes.encode(loaded, spec), n, where, rows_filter, pk)
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
        for row in rows:
            row['_score'] = scores[index_id[row[pk[0]] if len(pk) == 1 else tuple(row[k] for k in pk)]]
        rows.sort(key=lambda r: -r['_score'])
        for k in pk:
            if wanted is not None and k not in wanted:
                for row in rows:
                    del row[k]
        rows = rows[query.offset_ :][: query.limit_] if query.limit_ is not None else rows[query.offset_ :]
        return next(iter(rows), None) if query.action == 'one' else Cursor(iter([rows]))

    def _select(self, info: TableInfo, query: Query, where: Condition | None, limit: int | None = None) -> Cursor:
        columns = self._columns(info, query)
        schema, joins = info.schema, []
        if query.joined:
            fields = dict(info.schema.types)
            for predict_id in query.joined:
                outputs = outputs_table(predict_id)
                try:
                    fields[outputs] = self.table_info(outputs).schema.types[outputs]
                except (UnknownTable, KeyError):
                    raise QueryError(f'no listener outputs {predict_id!r}: table {outputs!r} does not exist') from None
                on = info.primary_key[0] if len(info.primary_key) == 1 else tuple(info.primary_key)
                joins.append((outputs, outputs, on, '_source'))
            schema = type(info.schema)(info.name, fields=fields)
        decode = schema.row_decoder(None if columns is None else columns + [j[1] for j in joins], self.artifact_store)
        batches = self.databackend.select(
            info.name, columns, where, query.order, query.limit_ if limit is None else limit, query.offset_,
            self.cfg.read_batch_size, joins=joins,
        )
        return Cursor(decode(batch) for batch in batches)

    def _ids(self, info: TableInfo, query: Query, where: Condition | None) -> list:
        pk = list(info.primary_key)
        batches = self.databackend.select(info.name, pk, where, query.order, query.limit_, query.offset_,
                                          self.cfg.read_batch_size)
        if len(pk) == 1:
            return [row[0] for batch in batches for row in batch]
        return [tuple(row) for batch in batches for row in batch]

    def _encode_values(self, info: TableInfo, values: Mapping[str, Any]) -> dict[str, Any]:
        keys = list(values)
        columns = info.schema.encode_columns(info.name, keys, [[values[k]] for k in keys], self.artifact_store)
        return {k: c[0] for k, c in zip(keys, columns)}

    def _insert(self, conn: Any, info: TableInfo, rows: list[dict]) -> list:
        if not rows:
            return []
        keys = _union_keys(rows)
        info.schema.check_fields(info.name, keys)
        if not info.auto_id and not set(info.primary_key) <= set(keys):
            return self._insert_returning(conn, info, rows)
        if set(map(len, rows)) != {len(keys)} and (not info.auto_id or info.schema.open):
            return self._insert_by_key_set(conn, info, rows)
        return self._insert_columns(conn, info, keys, rows)

    def _insert_columns(self, conn: Any, info: TableInfo, keys: list[str], rows: list[dict]) -> list:
        """Insert rows with these keys column by column, filling missing ids and folds; returns the ids."""
        columns = [[r.get(k) for r in rows] for k in keys]
        if info.auto_id and info.primary_key[0] not in keys:
            keys = keys + [info.primary_key[0]]
            columns.append([None] * len(rows))
        pk_columns = [keys.index(k) for k in info.primary_key]
        if info.auto_id:
            _fill_ids(columns[pk_columns[0]], self._id_maker(info))
            if '_fold' in info.schema.types:
                if '_fold' not in keys:
                    keys = keys + ['_fold']
                    columns.append([None] * len(rows))
                _fill_folds(columns[keys.index('_fold')], columns[pk_columns[0]], self.cfg.valid_fraction)
        step = self.cfg.insert_batch_size
        for start in range(0, len(rows), step):
            chunk = [c[start : start + step] for c in columns]
            chunk = info.schema.encode_columns(info.name, keys, chunk, self.artifact_store, first_row=start)
            self.databackend.insert(conn, info.name, keys, chunk)
        if len(pk_columns) == 1:
            return columns[pk_columns[0]]
        return list(zip(*[columns[i] for i in pk_columns]))

    def _id_maker(self, info: TableInfo) -> Any:
        """Hex strings for a string key, else the database's own kind of key (MongoDB's ObjectId)."""
        return _hex_ids if info.schema.types[info.primary_key[0]].name == 'str' else self.databackend.new_ids

    def _insert_by_key_set(self, conn: Any, info: TableInfo, rows: list[dict]) -> list:
        """Rows naming different fields (a table of someone else's with defaults, documents of a collection):
        insert each group as given, so a field a row lacks stays absent."""
        groups: dict[frozenset, list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(frozenset(row), []).append(i)
        ids: list = [None] * len(rows)
        for positions in groups.values():
            group = [rows[i] for i in positions]
            if not info.auto_id and not set(info.primary_key) <= set(group[0]):
                keys = self._insert_returning(conn, info, group)
            else:
                keys = self._insert_columns(conn, info, list(group[0]), group)
            for i, key in zip(positions, keys):
                ids[i] = key
        return ids

    def _insert_returning(self, conn: Any, info: TableInfo, rows: list[dict]) -> list:
        """The database generates the primary key (autoincrement): ask it back with RETURNING."""
        encoded = []
        for i, row in enumerate(rows):
            keys = list(row)
            columns = info.schema.encode_columns(info.name, keys, [[row[k]] for k in keys], self.artifact_store, i)
            encoded.append({k: c[0] for k, c in zip(keys, columns)})
        returned = self.databackend.insert_returning(conn, info.name, encoded)
        return [r[0] for r in returned] if len(info.primary_key) == 1 else returned

    # ---- components ---------------------------------------------------------------------------------------
    def apply(self, component: Component | Any, **variables: str) -> Component:
        """Store a component: a no-op if unchanged since its latest version, else a new version. A ``Template`` is
        built with ``variables`` filled in, and the component it gives is applied."""
        from superduper.components.template import Template

        if isinstance(component, Template):
            component = component.build(**variables)
        elif variables:
            raise ComponentError(f'db.apply: variables ({", ".join(variables)}) are only for templates')
        if not isinstance(component, Component):
            raise ComponentError(f'db.apply takes a Component (Table, Model, Listener, ...), got {type(component).__name__}')
        created = getattr(self._applying, 'created', None)
        if created is not None:  # applied while applying another (a listener's outputs table): one unit with it
            return self._apply(component, created)
        created = self._applying.created = []
        try:
            return self._apply(component, created)
        except Exception:  # all or nothing: take back what this apply had stored so far, newest first
            for record in reversed(created):
                still_there = self.metadata.get_by_uuid(record['uuid']) is not None  # a listener takes its outputs
                if still_there and not self._holds_data(record, force=False):
                    self._remove_record(record)
            self._collect_artifacts(created)
            raise
        finally:
            self._applying.created = None

    def _apply(self, component: Component, created: list[dict] | None = None) -> Component:
        component.check(self)
        for child in component.children():
            self._apply(child, created)
        blobs: dict[str, bytes] = {}
        record, uuid = encode_component(component, None, blobs)
        stored = self.metadata.get_by_uuid(uuid)
        if stored is not None:  # this declaration is already applied (its artifacts are stored with it)
            component.version, component.uuid = stored['version'], uuid
            component.on_reapplied(self)
            return component
        for data in blobs.values():
            self.artifact_store.put_bytes(data)
        versions = self.metadata.versions(component.type_id, component.identifier)
        component.version = versions[-1] + 1 if versions else 0
        component.uuid = uuid
        component.on_create(self)
        self.metadata.create(
            uuid=uuid, type_id=component.type_id, identifier=component.identifier,
            version=component.version, hash=uuid, record=record,
        )
        if created is not None:
            created.append({'uuid': uuid, 'type_id': component.type_id, 'identifier': component.identifier,
                            'version': component.version, 'record': record})
        self._loaded[uuid] = component
        faults.point('after_metadata_commit', component.type_id)
        component.on_applied(self)
        return component

    add = apply  # the older seed name

    def load(self, type_id: str, identifier: str, version: int | None = None) -> Component:
        record = self.metadata.get(type_id, identifier, version)
        if record is None:
            raise NotFound(_not_found(self, type_id, identifier, version))
        return self.load_record(record)

    def load_record(self, record: dict) -> Component:
        cached = self._loaded.get(record['uuid'])
        if cached is not None:
            return cached
        component = decode_record(record['record'], self._load_uuid, self.artifact_store)
        component.version, component.uuid = record['version'], record['uuid']
        component.on_load(self)
        self._loaded[record['uuid']] = component
        return component

    def _load_uuid(self, uuid: str) -> Component:
        record = self.metadata.get_by_uuid(uuid)
        if record is None:
            raise NotFound(f'no component with uuid {uuid!r}')
        return self.load_record(record)

    def show(self, type_id: str | None = None, identifier: str | None = None, version: int | None = None) -> Any:
        """``show()`` types and identifiers, ``show(type)`` identifiers, ``show(type, id)`` versions,
        ``show(type, id, version)`` the stored metadata; ``show('Job')`` the jobs."""
        if type_id == 'Job':
            return self.jobs()
        if type_id is None:
            return sorted({(r['type_id'], r['identifier']) for r in self.metadata.all()})
        if identifier is None:
            return self.metadata.identifiers(type_id)
        if version is None:
            return self.metadata.versions(type_id, identifier)
        record = self.metadata.get(type_id, identifier, version)
        if record is None:
            raise NotFound(_not_found(self, type_id, identifier, version))
        if type_id == 'Model':
            record['metrics'] = self.metadata.metric_values(record['uuid'])
        return record

    def remove(
        self, type_id: str, identifier: str, version: int | None = None, recursive: bool = False, force: bool = False
    ) -> None:
        """Remove one version, or every version, of a component, with what it set up (a listener's output table,
        failures and jobs) and the artifacts nothing else refers to. Refuses while other components use it,
        unless ``force``; ``recursive`` also removes the components it uses that nothing else uses."""
        versions = self.metadata.versions(type_id, identifier)
        if not versions or (version is not None and version not in versions):
            raise NotFound(_not_found(self, type_id, identifier, version))
        records = [self.metadata.get(type_id, identifier, v) for v in ([version] if version is not None else versions)]
        going = {r['uuid'] for r in records}
        users = [r for r in self.metadata.all() if r['uuid'] not in going and references(r['record']) & going]
        users += self._listeners_reading(type_id, identifier, going)
        if users and not force:
            names = ', '.join(f"{u['type_id']} {u['identifier']!r} (v{u['version']})" for u in users)
            raise ComponentError(f'{type_id} {identifier!r} is used by {names}; remove those first or pass force=True')
        for record in records:
            self._remove_record(record)
        if recursive or import_class(records[0]['record']['_path']).owns_children:
            # dependents before what they depend on: the reverse of the order they were applied in
            children = dict.fromkeys(uuid for r in records for uuid in reversed(ordered_references(r['record'])))
            for child in children:
                child_record = self.metadata.get_by_uuid(child)
                if child_record is None or self._used_by_others(child) or self._holds_data(child_record, force):
                    continue
                self.remove(child_record['type_id'], child_record['identifier'], child_record['version'],
                            recursive=True, force=force)
        self._collect_artifacts(records)

    def _listeners_reading(self, type_id: str, identifier: str, going: set[str]) -> list[dict]:
        if type_id != 'Table':
            return []
        return [
            r for r in self.metadata.all()
            if r['type_id'] == 'Listener' and r['uuid'] not in going and r['record']['select']['_query']['table'] == identifier
        ]

    def _holds_data(self, record: dict, force: bool) -> bool:
        """A table with rows is kept when the component using it goes, unless ``force``: removing an application
        never drops the user's data by surprise."""
        if force or record['type_id'] != 'Table' or not self.databackend.has_table(record['identifier']):
            return False
        if self.databackend.count(record['identifier']) == 0:
            return False
        log.info('kept table %r with its rows; remove it with db.remove("Table", %r)', record['identifier'],
                 record['identifier'])
        return True

    def _used_by_others(self, uuid: str) -> bool:
        return any(uuid in references(r['record']) for r in self.metadata.all())

    def _remove_record(self, record: dict) -> None:
        component = self.load_record(record)
        self.metadata.delete(record['uuid'])
        self._loaded.pop(record['uuid'], None)
        component.on_remove(self)

    def _collect_artifacts(self, removed: list[dict]) -> None:
        """Delete the removed records' artifacts that no remaining record refers to."""
        candidates = set().union(*[artifact_keys(r['record']) for r in removed])
        if candidates:
            still_used = set().union(*[artifact_keys(r['record']) for r in self.metadata.all()])
            for key in candidates - still_used:
                self.artifact_store.delete(key)

    # ---- models and listeners ------------------------------------------------------------------------------
    def predict(self, identifier: str, *args: Any, **kwargs: Any) -> Any:
        """The output of the latest version of model ``identifier`` for one input."""
        return self.load('Model', identifier).predict(*args, **kwargs)

    def fit(self, model: Any, X: Any, y: str | None = None, select: Query | None = None) -> Any:
        """Train a copy of ``model`` on the rows ``select`` picks (its ``_fold == 'train'`` rows where the table has
        folds) and apply it as a new version, which is returned; recorded as a job. With Dask compute a worker
        trains it. A stored version is never changed (an old version loads exactly as it was stored); a model that
        was not applied yet becomes the fitted one, as scikit-learn's ``fit`` does."""
        train = self._fold_query(select, 'train')
        stored = model.uuid is not None and self.metadata.get_by_uuid(model.uuid) is not None
        fitted = dataclasses.replace(copy.deepcopy(model), version=None, uuid=None)
        job = self.listening.jobs.start('fit', model, self.execute(train.count()))
        try:
            if self.compute.distributed:
                uuid, rows = self.compute.fit(self, fitted, X, y, train)
                fitted = self.load_record(self.metadata.get_by_uuid(uuid))
            else:
                rows = self._fit_and_apply(fitted, X, y, train)
        except Exception as e:
            self.listening.jobs.finish(job, error=f'{type(e).__name__}: {e}')
            raise
        self.listening.jobs.progress(job, rows, 0)
        self.listening.jobs.finish(job)
        if not stored:
            for f in dataclasses.fields(model):
                setattr(model, f.name, getattr(fitted, f.name))
        return fitted

    def _fit_and_apply(self, model: Any, X: Any, y: str | None, train: Query) -> int:
        """Fit ``model`` (a copy nobody else holds) in this process on the rows ``train`` selects and apply it;
        returns how many rows."""
        from superduper.components.model import input_maker

        rows = self.execute(train).tolist()
        calls = [input_maker(X)(row.unpack()) for row in rows]
        inputs = [args[0] if len(args) == 1 and not kwargs else args for args, kwargs in calls]
        targets = [row[y] for row in rows] if y is not None else None
        model._fit(inputs, targets)
        model.fit_keys = [X, y]
        self.apply(model)
        return len(rows)

    def validate(self, model: Any, select: Query, metrics: Any, X: Any = None, y: str | None = None) -> dict:
        """Score ``model`` on the ``_fold == 'valid'`` rows of ``select`` (all of them if the table has no folds);
        the values are stored with the model version (``db.show('Model', id, version)['metrics']``)."""
        from superduper.components.model import Metric, input_maker

        if X is None or y is None:
            if not model.fit_keys:
                raise ComponentError(f'validate {model.identifier!r}: pass X= and y= (the model was not fitted here)')
            X, y = X or model.fit_keys[0], y or model.fit_keys[1]
        named = metrics.items() if isinstance(metrics, dict) else [
            (m.identifier if isinstance(m, Metric) else getattr(m, '__name__', str(m)), m) for m in metrics
        ]
        rows = self._fold_rows(select, 'valid')
        if not rows:
            raise ComponentError(f'validate {model.identifier!r}: the select matches no validation rows')
        predictions = model.predict_inputs([input_maker(X)(row.unpack()) for row in rows])
        targets = [row[y] for row in rows]
        values = {name: float(metric(targets, predictions)) for name, metric in named}
        if model.uuid is None or self.metadata.get_by_uuid(model.uuid) is None:
            self.apply(model)
        self.metadata.record_metrics(model.uuid, values, len(rows))
        return values

    def _fold_rows(self, select: Query | None, fold: str) -> list:
        return self.execute(self._fold_query(select, fold)).tolist()

    def _fold_query(self, select: Query | None, fold: str) -> Query:
        if not isinstance(select, Query):
            raise QueryError(f'select= must be a query picking rows, got {type(select).__name__}')
        if '_fold' in self.table_info(select.table).schema.types:
            select = select.filter(Compare('_fold', '==', fold))
        return select

    def jobs(self, identifier: str | None = None) -> list[dict]:
        """Backfills and training runs: kind, component, status, progress, error and timings. A running backfill's
        progress is what is no longer queued, whichever consumers computed it."""
        jobs = [j for j in self.listening.jobs.list() if identifier is None or j['identifier'] == identifier]
        for job in jobs:
            if job['kind'] == 'backfill' and job['status'] == 'running' and job['total'] is not None:
                pending = self.changes.pending_for(job['component_uuid'])
                if pending is not None:
                    job['done'] = max(job['done'] or 0, job['total'] - pending)
        return jobs

    def failures(self, listener: str) -> list[dict]:
        """The rows listener ``listener`` failed on, with the error and the number of attempts."""
        record = self.metadata.get('Listener', listener)  # read, not loaded: a listener that cannot load has some
        if record is None:
            raise NotFound(_not_found(self, 'Listener', listener, None))
        return self.listening.failures.list(record['uuid'], record['record']['select']['_query']['table'])

    def status(self) -> list[dict]:
        """Per listener: rows with outputs, changes pending (``None`` where the database cannot count them), rows
        failed, the lag of the oldest pending change, and what stops it, if anything (``problem``). Read from the
        metadata: no model is loaded."""
        report = []
        tables = set(self.databackend.table_names())
        problems = dict(self.listening.problems)
        for identifier in self.metadata.identifiers('Listener'):
            record = self.metadata.get('Listener', identifier)
            source = record['record']['select']['_query']['table']
            outputs = outputs_table(f'{identifier}__{record["uuid"][:8]}')
            pending, lag = self.changes.pending(source)
            found = [problems.get(f'Listener {identifier!r}'), self.changes.problem_with(source)]
            found += [p for name, p in problems.items() if outputs in name]
            report.append({
                'listener': identifier, 'table': source, 'outputs': outputs,
                'done': self.databackend.count(outputs) if outputs in tables else 0,
                'pending': pending, 'failed': self.listening.failures.count(record['uuid']), 'lag_seconds': lag,
                'problem': '; '.join(p for p in found if p) or None,
            })
        return report

    def retry(self, listener: str) -> int:
        """Recompute the rows a listener failed on (after fixing the model, say); returns how many still fail."""
        return self.listening.retry(listener)

@dataclass
class _FilteredRows:
    """The rows of ``table`` matching ``where``, for a filtered vector search, by their vector index ids: the
    primary key, or the text a composite key is stored as next to its outputs (``key_text``)."""

    databackend: Any
    table: str
    primary_key: tuple[str, ...]
    where: Condition | None

    def count(self) -> int:
        return self.databackend.count(self.table, self.where)

    def keys_of(self, ids: list) -> list:
        """The primary keys of these index ids."""
        return ids if len(self.primary_key) == 1 else self.databackend.decode_keys(self.table, ids)

    def ids(self, among: list | None) -> list:
        pk = list(self.primary_key)
        cond = self.where if among is None else And((self.where, key_in(tuple(pk), self.keys_of(among))))
        found = [r[0] if len(pk) == 1 else tuple(r) for batch in self.databackend.select(self.table, pk, cond)
                 for r in batch]
        if len(pk) == 1:
            return found
        texts = dict(zip(self.keys_of(among), among)) if among is not None else \
            self.databackend.render_keys(self.table, found)
        return [texts[k] for k in found if k in texts]


def _not_found(db: Datalayer, type_id: str, identifier: str, version: int | None) -> str:
    existing = db.metadata.identifiers(type_id)
    if identifier in existing and version is not None:
        return f'{type_id} {identifier!r} has no version {version}; versions: {db.metadata.versions(type_id, identifier)}'
    return f'no {type_id} named {identifier!r}; existing: {", ".join(existing) or "(none)"}'


def _as_rows(documents: Any, table: str) -> list[dict]:
    if hasattr(documents, 'to_dict') and hasattr(documents, 'columns'):  # a pandas DataFrame
        frame = documents.astype(object).where(documents.notna(), None)
        return frame.to_dict('records')
    if isinstance(documents, Mapping):
        raise QueryError(f'insert into {table!r} takes a list of rows; use insert_one for a single row')
    rows = documents if isinstance(documents, list) else list(documents)
    if not all(isinstance(row, dict) for row in rows):  # fast check first; Mapping's isinstance is slow
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise QueryError(f'row {i} of an insert into {table!r} is a {type(row).__name__}, not a dict')
        rows = [dict(row) for row in rows]
    return rows


def _union_keys(rows: list[dict]) -> list[str]:
    """Every key any row has: the first row's in order, then the others sorted."""
    keys = list(rows[0])
    extra = set().union(*rows).difference(keys)
    return keys + sorted(extra) if extra else keys


def _fill_ids(column: list, new_ids: Any) -> None:
    missing = [i for i, v in enumerate(column) if v is None]
    if missing:
        for i, key in zip(missing, new_ids(len(missing))):
            column[i] = key


def _hex_ids(n: int) -> list[str]:
    hexes = os.urandom(16 * n).hex()
    return [hexes[32 * i : 32 * i + 32] for i in range(n)]


def _fill_folds(folds: list, ids: list, valid_fraction: float) -> None:
    """'valid' for a stable ``valid_fraction`` of ids (by hash, so a re-inserted row keeps its fold)."""
    threshold = int(valid_fraction * 2**32)
    for i, fold in enumerate(folds):
        if fold is None:
            folds[i] = 'valid' if zlib.crc32(str(ids[i]).encode()) < threshold else 'train'


def _encode_condition(cond: Condition, info: TableInfo) -> Condition:
    """Check and convert filter values against their field's type (a string compared to an int field is an error)."""
    if isinstance(cond, Compare):
        ftype = info.schema.types.get(cond.field)
        if not isinstance(ftype, Scalar) or cond.value is None:
            return cond
        values = list(cond.value) if cond.op == 'in' else [cond.value]
        try:
            encoded = info.schema.encode_columns(info.name, [cond.field], [values], None)[0]
        except InvalidValue:
            raise InvalidValue(f'filter on table {info.name!r}, field {cond.field!r}: expected {ftype.expected}, '
                               f'got {cond.value!r}') from None
        return Compare(cond.field, cond.op, tuple(encoded) if cond.op == 'in' else encoded[0])
    if isinstance(cond, (And, Or)):
        return type(cond)(tuple(_encode_condition(c, info) for c in cond.parts))
    if isinstance(cond, Not):
        return Not(_encode_condition(cond.part, info))
    return cond


# ---- the entry point ------------------------------------------------------------------------------------------
def superduper(uri: str | None = None, **overrides: Any) -> Datalayer:
    """Connect: ``superduper()`` (embedded SQLite under ./.superduper), ``superduper('postgresql://...')``, ...

    Keyword arguments override settings (``artifact_store=``, ``metadata_store=``, ``compute=``, ...); then
    ``SUPERDUPER_*`` environment variables; then ``superduper.yaml``.
    """
    from superduper.backends.registry import connect_compute, connect_data_backend

    databackend = None
    if uri is not None and not isinstance(uri, str):
        from superduper.backends.mongodb.connection import is_database

        if is_database(uri):  # seed 002: superduper(pymongo.MongoClient().my_db)
            databackend = _wrap_mongo_database(uri)
            uri = databackend.uri
        elif hasattr(uri, 'fit') and hasattr(uri, 'predict'):  # seed 002: superduper(SVC()) wraps an estimator
            from superduper.ext.sklearn import SklearnModel

            return SklearnModel(type(uri).__name__.lower(), object=uri)  # type: ignore[return-value]
        else:
            raise QueryError('superduper() takes a database URI string, a pymongo Database or a scikit-learn '
                             f'estimator, got {type(uri).__name__}')
    cfg = load_config(data_backend=uri, **overrides)
    databackend = databackend or connect_data_backend(cfg.data_backend)
    if cfg.outputs == 'async' and databackend.capabilities.change_capture == 'none':
        databackend.close()
        raise ConfigError(f"outputs='async' leaves outputs to workers, which follow the changes the database "
                          f'records; {databackend!r} records none: use outputs=\'sync\'')
    if cfg.metadata_store in (None, cfg.data_backend):
        metadata = databackend.metadata_store()
    else:
        metadata = connect_data_backend(cfg.metadata_store).metadata_store()
    # before the artifact store is recorded: a refused one changes nothing
    compute = connect_compute(cfg.compute, cfg, databackend)
    try:
        artifact_store = _artifact_store(cfg, databackend, metadata)
    except Exception:
        compute.close()
        raise
    return Datalayer(databackend, metadata, artifact_store, compute, cfg)


def _wrap_mongo_database(database: Any) -> Any:
    from superduper.backends.mongodb.connection import from_database
    from superduper.backends.mongodb.data_backend import MongoDataBackend

    return MongoDataBackend(*from_database(database))


def _artifact_store(cfg: Config, databackend: Any, metadata: Any) -> Any:
    """The store named in the settings; else the one this database recorded when it was first used, so that every
    client (a CLI run from another folder, a worker) finds the same artifacts; else the database's own store
    (GridFS on MongoDB) or the filesystem under the home folder. The choice is recorded for the next clients."""
    from superduper.backends.artifacts import ArtifactStore
    from superduper.backends.registry import connect_artifact_store

    cache_dir = os.path.join(cfg.home, 'cache')
    recorded = metadata.setting('artifact_store')
    if cfg.artifact_store:
        store = connect_artifact_store(cfg.artifact_store, cache_dir)
    elif recorded:
        store = connect_artifact_store(recorded, cache_dir)
    else:
        store = databackend.default_artifact_store(cache_dir) or ArtifactStore(
            f'filesystem://{os.path.join(cfg.home, "artifacts")}', cache_dir=cache_dir)
    if store.location and store.location != recorded:
        if recorded:
            log.warning('artifact store %s replaces %s as the one recorded for this database', store.location, recorded)
        metadata.set_setting('artifact_store', store.location)
    return store

