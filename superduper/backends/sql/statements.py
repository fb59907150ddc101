"""Every shape of statement superduper sends a SQL database, as SQL for one dialect, without its server.

``catalogue(backend_class, uri)`` makes the backend ``offline`` (its engine keeps what it is sent) and drives the
code that runs in production: the data backend's tables, writes and reads, the metadata store, the artifact
references, the output log and, where the backend declares triggers, the change feed. Each statement it sends is
rendered with its parameters written in (``superduper.backends.sql.offline.render``) and named by the action that
sent it. An action the backend refuses (a read-only database) is kept with the reason instead of SQL.

The tests parse each statement in the dialect (``tests/test_dialects.py``); ``python -m
superduper.backends.sql.statements trino://u@h/c/s`` prints them.
"""

from __future__ import annotations

import datetime
import sys
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import sqlalchemy as sa

from superduper.backends.base import OUTPUT_SEQ
from superduper.backends.sql.offline import Sent, render
from superduper.base.config import Config
from superduper.base.exceptions import ConfigError
from superduper.base.query import And, Compare, Not, Or
from superduper.components.datatype import resolve_type

TABLE = 'documents'
#: one field of every kind of storage
FIELDS = {'id': 'str', 'txt': 'str', 'n': 'int', 'x': 'float', 'ok': 'bool', 'raw': 'bytes', 'doc': 'json',
          'at': 'datetime', 'ref': 'uuid', 'v': 'vector[float32:3]'}
ROW = {'id': 'a1', 'txt': "it's", 'n': 7, 'x': 0.5, 'ok': True, 'raw': b'\x00\xff', 'doc': {'k': [1, 'two']},
       'at': datetime.datetime(2024, 5, 6, 7, 8, 9, 123456), 'ref': uuid.UUID(int=42), 'v': b'\x00' * 12}
OUTPUTS = '_outputs__my-upper__0123456789abcdef'  # a listener's name may have a hyphen
PAIRS = 'pairs'  # a table with a composite key
OUTPUT_FIELDS = {'_source': 'str', OUTPUT_SEQ: 'int', OUTPUTS: 'json'}
#: each filter operator, as ``select().filter(...)`` compiles it
FILTERS = {
    '==': Compare('txt', '==', 'a'), '!=': Compare('n', '!=', 3), '<': Compare('n', '<', 3),
    '<=': Compare('x', '<=', 0.5), '>': Compare('at', '>', ROW['at']), '>=': Compare('n', '>=', 3),
    'in': Compare('id', 'in', ('a1', 'b2')), 'not in': Not(Compare('id', 'in', ('a1', 'b2'))),
    'is null': Compare('txt', '==', None), 'is not null': Compare('txt', '!=', None),
    'and/or': Or((And((Compare('n', '>', 1), Compare('ok', '==', True))), Compare('txt', '==', 'b'))),
}


@dataclass(frozen=True)
class Statement:
    shape: str  # what sent it: 'insert', 'select where in', 'metadata: get' ...
    sql: str | None  # None where the backend refused
    refused: str | None = None


class Catalogue:
    def __init__(self, backend: Any):
        self.backend = backend
        self.engine = backend.engine
        self.statements: list[Statement] = []

    def sent(self, shape: str, action: Callable[[], Any]) -> Any:
        """Run ``action`` and keep the statements it sent the engine, or the reason it was refused."""
        self.engine.take()
        try:
            result = action()
        except (ConfigError, NotImplementedError) as e:
            self.statements.append(Statement(shape, None, str(e)))
            return None
        self.statements += [Statement(shape, render(s, self.backend.dialect)) for s in self.engine.take()]
        return result

    def built(self, shape: str, action: Callable[[], Any]) -> None:
        """Keep the statement ``action`` builds (SQL, a list of SQL, or a SQLAlchemy statement), or the reason it
        was refused."""
        built = self.sent(shape, action)
        if built is None:
            return
        for statement in built if isinstance(built, list) else [built]:
            sql = statement if isinstance(statement, str) else render(Sent(statement), self.backend.dialect)
            self.statements.append(Statement(shape, sql))


def catalogue(backend_class: Any, uri: str) -> list[Statement]:
    """Every statement shape ``backend_class`` sends, for the dialect of ``uri`` (no server is reached)."""
    backend = backend_class.offline(uri)
    c = Catalogue(backend)
    _tables(c, backend)
    _reads(c, backend)
    _writes(c, backend)
    metadata = c.sent('metadata: create tables', backend.metadata_store)
    if metadata is not None:
        _metadata(c, metadata)
    log = c.sent('output log: create tables', backend.output_log)
    if log is not None:
        _output_log(c, log)
    if backend.capabilities.change_capture == 'triggers':
        _change_feed(c, backend)
    if backend.capabilities.change_capture == 'polling':
        _polling(c, backend)
    if backend.capabilities.native_vectors:
        _vector_search(c, backend)
    return c.statements


def _tables(c: Catalogue, backend: Any) -> None:
    types = {k: resolve_type(v) for k, v in FIELDS.items()}
    c.built('create table', lambda: backend.create_statement(TABLE, types, 'id'))
    backend.bind_table(TABLE, types, 'id')
    backend.bind_table(OUTPUTS, {k: resolve_type(v) for k, v in OUTPUT_FIELDS.items()}, '_source')
    backend._tables[PAIRS] = sa.Table(  # as reflected: a table another program made, its key numbered by the database
        PAIRS, sa.MetaData(), sa.Column('a', sa.String(40), primary_key=True),
        sa.Column('b', sa.BigInteger, primary_key=True, autoincrement=True), sa.Column('c', sa.Double))
    c.built('add column', lambda: backend.add_column_sql(TABLE, 'extra', resolve_type('str')))
    c.built('drop table', lambda: backend.drop_table_sql(TABLE))


def _reads(c: Catalogue, backend: Any) -> None:
    columns = list(FIELDS)
    c.built('select', lambda: backend.select_statement(TABLE, columns))
    for op, cond in FILTERS.items():
        c.built(f'select where {op}', lambda cond=cond: backend.select_statement(TABLE, ['id', 'txt'], cond))
    c.built('select order limit offset',
           lambda: backend.select_statement(TABLE, ['id'], None, [('n', True), ('id', False)], 10, 20))
    joins = [(OUTPUTS, OUTPUTS, 'id', '_source')]
    c.built('select outputs', lambda: backend.select_statement(TABLE, ['id', 'txt'], FILTERS['=='], (), 5, 0, joins))
    c.built('select rows by key', lambda: backend._by_key_sql(TABLE, ('id', 'txt'), 'id', 3)[0])
    c.sent('count', lambda: backend.count(TABLE, FILTERS['>=']))
    if backend.capabilities.change_capture == 'triggers':  # elsewhere listeners refuse tables with composite keys
        joins = [(OUTPUTS, OUTPUTS, ('a', 'b'), '_source')]
        c.built('select outputs by composite key', lambda: backend.select_statement(PAIRS, ['a', 'b'], joins=joins))


def _writes(c: Catalogue, backend: Any) -> None:
    keys, columns = list(ROW), [[v] for v in ROW.values()]
    c.sent('insert', lambda: backend.insert(c.engine, TABLE, keys, columns))
    # the same row with its values written in: how the dialect writes a literal of each type
    c.built('insert with literals', lambda: backend.table(TABLE).insert().values(ROW))
    c.sent('upsert', lambda: backend.insert(c.engine, TABLE, keys, columns, upsert_key='id'))
    c.sent('upsert key only', lambda: backend.insert(c.engine, TABLE, ['id'], [['a1']], upsert_key='id'))
    c.sent('update', lambda: backend.update(c.engine, TABLE, {'txt': 'b', 'n': 8}, FILTERS['in']))
    c.sent('delete', lambda: backend.delete(c.engine, TABLE, FILTERS['not in']))
    if backend.dialect.insert_returning:  # the keys of a table whose key the database numbers
        c.sent('insert returning keys', lambda: backend.insert_returning(c.engine, PAIRS, [{'a': 'x', 'c': 1.5}]))


def _metadata(c: Catalogue, store: Any) -> None:
    record = {'type_id': 'model', 'identifier': 'upper', 'version': 0, 'uuid': 'u1', 'hash': 'h1'}
    c.sent('metadata: create', lambda: store.create(**record, record={'x': 1}))
    c.sent('metadata: get latest', lambda: store.get('model', 'upper'))
    c.sent('metadata: get version', lambda: store.get('model', 'upper', 0))
    c.sent('metadata: get by uuid', lambda: store.get_by_uuid('u1'))
    c.sent('metadata: find by hash', lambda: store.find_by_hash('model', 'upper', 'h1'))
    c.sent('metadata: versions', lambda: store.versions('model', 'upper'))
    c.sent('metadata: identifiers', lambda: store.identifiers('model'))
    c.sent('metadata: all', store.all)
    c.sent('metadata: replace record', lambda: store.replace_record('u1', {'x': 2}))
    c.sent('metadata: setting', lambda: store.setting('components_version'))
    c.sent('metadata: set setting', lambda: store.set_setting('name', 'value'))
    c.sent('metadata: record metrics', lambda: store.record_metrics('u1', {'acc': 0.5}, 10))
    c.sent('metadata: metric values', lambda: store.metric_values('u1'))
    c.sent('metadata: index state', lambda: store.index_state('i1'))
    c.sent('metadata: set index state', lambda: store.set_index_state('i1', 'art1'))
    c.sent('metadata: replace index state', lambda: store.replace_index_state('i1', 'art1', 'art2'))
    c.sent('metadata: delete', lambda: store.delete('u1'))
    records = store.records
    job = {'id': 'j1', 'kind': 'backfill', 'type_id': 'listener', 'identifier': 'l', 'component_uuid': 'u1',
           'status': 'running', 'done': 0, 'total': 5, 'failed': 0, 'started_at': ROW['at']}
    c.sent('records: insert', lambda: records.insert('_superduper_jobs', job))
    c.sent('records: find', lambda: records.find('_superduper_jobs', {'status': 'running'}, order_by='started_at'))
    c.sent('records: count', lambda: records.count('_superduper_jobs', {'component_uuid': 'u1'}))
    c.sent('records: update', lambda: records.update('_superduper_jobs', {'id': 'j1'}, {'status': 'done'}))
    c.sent('records: claim if', lambda: records.claim_if('_superduper_jobs', {'id': 'j1', 'status': 'done'},
                                                         {'status': 'failed'}))
    c.sent('records: delete', lambda: records.delete('_superduper_jobs', {'id': 'j1'}))
    failure = {'listener_uuid': 'l1', 'source': '"a1"', 'error': 'boom', 'failed_at': ROW['at']}
    c.sent('records: count up', lambda: records.count_up('_superduper_failures', {'listener_uuid': 'l1'}, 'source',
                                                         [failure], 'attempts'))
    refs = c.sent('artifact refs: create table', store.artifact_refs)
    c.sent('artifact refs: hold', lambda: refs.hold('model/u1', ['a' * 64]))
    c.sent('artifact refs: release', lambda: refs.release('model/u1', ['a' * 64]))
    c.sent('artifact refs: release all', lambda: refs.release('model/u1'))
    c.sent('artifact refs: release stale', lambda: refs.release_stale('model/u1', set(), 1.0))
    c.sent('artifact refs: held by', lambda: refs.held_by('model/u1'))
    c.sent('artifact refs: holders', lambda: refs.holders('model/'))
    c.sent('artifact refs: collect', lambda: refs.collect(['a' * 64], lambda digest: None))
    c.sent('artifact refs: drop', refs.drop)


def _output_log(c: Catalogue, log: Any) -> None:
    c.sent('output log: prepare', lambda: log.prepare(OUTPUTS))
    c.sent('output log: advance', lambda: log.advance(c.engine, OUTPUTS))
    c.sent('output log: store', lambda: log.store(c.engine, OUTPUTS, 3, ['_source', OUTPUTS], [['a1'], [{'y': 1}]]))
    c.sent('output log: remove', lambda: log.remove(c.engine, OUTPUTS, 4, ['a1']))
    c.sent('output log: head', lambda: log.head(OUTPUTS))
    c.sent('output log: deleted', lambda: log.deleted(OUTPUTS, 1, 4))
    c.sent('output log: trim', lambda: log.trim(3600.0))
    c.sent('output log: forget', lambda: log.forget(OUTPUTS))


def _change_feed(c: Catalogue, backend: Any) -> None:
    from superduper.backends.sql.changes import SQLChangeFeed

    feed = SQLChangeFeed(backend)
    c.sent('change feed: create tables', lambda: feed.tables)
    t = feed.tables
    c.built('change feed: triggers', lambda: backend.capture_ddl(TABLE, ['id']))
    c.built('change feed: drop triggers', lambda: backend.drop_capture_ddl(TABLE))
    c.built('change feed: triggers on a composite key', lambda: backend.capture_ddl(PAIRS, ['a', 'b']))
    c.sent('change feed: mark writes', lambda: backend.mark_writes(c.engine, 5, t.changes))
    c.sent('change feed: unmark writes', lambda: backend.unmark_writes(c.engine, 5, None, t.changes))
    c.sent('change feed: claim', lambda: feed._claim(100, None))
    c.sent('change feed: claim for a listener', lambda: feed._claim(100, 'l1'))
    c.sent('change feed: new claim', lambda: feed._new_claim(c.engine))
    c.sent('change feed: renew', lambda: feed.renew([5, 6]))
    c.sent('change feed: free expired', feed._free_expired)
    c.sent('change feed: free orphans', feed._free_orphans)
    c.sent('change feed: enqueue', lambda: feed.enqueue(TABLE, 'l1', where=FILTERS['>=']))
    c.sent('change feed: enqueue keys', lambda: feed.enqueue(TABLE, 'l1', refs=['a1']))
    c.sent('change feed: pending', lambda: feed.pending(TABLE))
    stamp = {'listener': 'l1', 'digest': 'ab' * 20, 'source': 'a1', 'stamp': 0, 'at': 0.0, 'attempts': 0}
    c.sent('change feed: insert stamps if absent',
           lambda: c.engine.execute(backend.insert_ignore(t.stamps, ['listener', 'digest']), [stamp]))


VECTORS = '_outputs__embed__0123456789abcdef'
MEASURES = ('cosine', 'dot', 'l2')


def _vector_search(c: Catalogue, backend: Any) -> None:
    """The one query of a search inside the database (``native_searcher``), for each measure, unfiltered and
    filtered through a join to the source table."""
    import types

    import numpy as np

    fields = {'_source': 'str', OUTPUT_SEQ: 'int', VECTORS: 'vector[float32:3]'}
    backend.bind_table(VECTORS, {k: resolve_type(v) for k, v in fields.items()}, '_source')
    db = types.SimpleNamespace(databackend=backend, cfg=Config())  # the searcher's limits: the defaults
    query = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    for measure in MEASURES:
        index = types.SimpleNamespace(indexing_listener=types.SimpleNamespace(outputs=VECTORS), source=TABLE,
                                      dimension=lambda db: 3, measure=measure)
        searcher = backend.native_searcher(db, index)
        c.sent(f'vector search {measure}', lambda: searcher.search(query, 10, None, ('id',)))
        c.sent(f'vector search {measure} where and/or',
               lambda: searcher.search(query, 10, FILTERS['and/or'], ('id',)))


def _polling(c: Catalogue, backend: Any) -> None:
    from superduper.backends.base import Batch, Change
    from superduper.backends.sql.polling import Hashes, PollingFeed, seen_table_name

    feed = PollingFeed(backend, None, poll_by={TABLE: 'at'})
    seen = seen_table_name(TABLE)
    c.sent('polling: create seen table', lambda: feed._make_seen(TABLE, seen))
    key = backend.table(TABLE).c.id
    backend._tables[seen] = sa.Table(seen, sa.MetaData(), sa.Column('k0', key.type, primary_key=True),
                                     sa.Column('h', sa.String(40), nullable=False))  # as made above
    feed._ready.add(TABLE)
    c.built('polling: row hashes', lambda: sa.select(backend.row_hash(backend.table(TABLE)).label('h'), key))
    c.sent('polling: differences', lambda: feed._differences(TABLE, 100))
    since = datetime.datetime(2026, 1, 1)
    c.sent('polling: differences since a poll_by value', lambda: feed._differences(TABLE, 100, since=since))
    c.built('polling: deleted keys', lambda: feed._deleted_query(TABLE).limit(100))
    c.sent('polling: hashes of rows', lambda: feed._hashes(c.engine, TABLE, ['a1', 'b2']))
    batch = Batch(stamp=1, changes=[Change(TABLE, 'a1', None, '"a1"'), Change(TABLE, 'b2', None, '"b2"')],
                  claim=Hashes(TABLE, {'"a1"': '123', '"b2"': None}, every_listener=True))
    c.sent('polling: mark seen', lambda: feed._seen(c.engine, batch))


def main(argv: list[str]) -> None:
    from superduper.backends.registry import _data_scheme, data_backends

    uri = argv[0]
    for statement in catalogue(data_backends.load(_data_scheme(uri)), uri):
        print(f'-- {statement.shape}')
        print(statement.sql if statement.sql is not None else f'-- refused: {statement.refused}', end=';\n\n')


if __name__ == '__main__':
    main(sys.argv[1:])
