"""The databases no server runs here (Trino, SQL Server, Oracle, Druid, Impala, BigQuery): every statement superduper sends
them, compiled by their SQLAlchemy dialects without a server (``superduper.backends.sql.statements``), is parsed by
sqlglot in the same dialect, and checked for what it must say.

A statement sqlglot cannot read is a failure, unless it is listed in ``SQLGLOT_GAPS`` with the reason; a gap is
then checked to still be one (so that it is removed when sqlglot learns the syntax) and its text is checked instead.
"""

from __future__ import annotations

import re
import sys
from functools import lru_cache

import numpy as np
import pytest
import sqlalchemy as sa

sqlglot = pytest.importorskip('sqlglot')
from sqlglot import exp  # noqa: E402

from superduper.backends.registry import _data_scheme, data_backends  # noqa: E402
from superduper.backends.sql.base import SQLDataBackend  # noqa: E402
from superduper.backends.sql.statements import FIELDS, FILTERS, OUTPUTS, TABLE, Statement, catalogue  # noqa: E402
from superduper.base.exceptions import ComponentError, ConfigError, MissingDependency  # noqa: E402
from superduper.components.datatype import resolve_type  # noqa: E402

#: engine -> (a URI, the SQLAlchemy dialect and driver it must reach, sqlglot's name for the dialect)
ENGINES = {
    'trino': ('trino://user@trino.example:8080/iceberg/docs', ('trino', 'rest'), 'trino'),
    'mssql': ('mssql://sa:secret@sqlserver.example:1433/docs', ('mssql', 'pymssql'), 'tsql'),
    'oracle': ('oracle://scott:tiger@oracle.example:1521/?service_name=FREEPDB1', ('oracle', 'oracledb'), 'oracle'),
    'druid': ('druid://druid.example:8082/druid/v2/sql/', ('druid', 'rest'), 'druid'),
    # impyla's dialect for Impala 4 (with DATE); sqlglot has no Impala, and reads it as Hive
    'impala': ('impala://impala.example:21050/docs', ('impala4', 'impala4'), 'hive'),
    'bigquery': ('bigquery://my-project/docs', ('bigquery', 'bigquery'), 'bigquery'),
}
COMPILE_ONLY = 'compile-level only (not tested against a server)'
# the Trino dialect warns that it leaves keys out of CREATE TABLE: Trino has none (see superduper.backends.sql.trino)
pytestmark = pytest.mark.filterwarnings('ignore:Trino does not support:sqlalchemy.exc.SAWarning')


def check_trigger(sql: str, read: str) -> None:
    """SQL Server's trigger: sqlglot reads ``CREATE TRIGGER`` as an opaque command, so the header is checked as
    text and the body's ``INSERT ... SELECT`` is parsed."""
    header = re.match(r'CREATE OR ALTER TRIGGER \[\w+\] ON \[(documents|pairs)\] AFTER INSERT, UPDATE, DELETE AS BEGIN '
                      r'SET NOCOUNT ON; (.*); END$', sql)
    assert header, sql
    body = sqlglot.parse_one(header.group(2), read=read)
    assert isinstance(body, exp.Insert) and body.this.this.name == '_superduper_change_log'
    selected = body.expression
    assert {t.name for t in selected.find_all(exp.Table)} >= {'inserted', 'deleted'}, selected.sql()
    assert "SESSION_CONTEXT(N'superduper_claim')" in sql


def check_plsql_drop(sql: str, read: str) -> None:
    """Oracle 19c has no ``DROP TABLE IF EXISTS``: a PL/SQL block ignoring ORA-00942 (sqlglot reads no PL/SQL)."""
    m = re.fullmatch(r"BEGIN EXECUTE IMMEDIATE '(.*)'; EXCEPTION WHEN OTHERS THEN IF SQLCODE != -942 THEN RAISE; "
                     r'END IF; END;', sql)
    assert m, sql
    assert isinstance(sqlglot.parse_one(m.group(1), read=read), exp.Drop)


def check_returning_into(sql: str, read: str) -> None:
    """Oracle's ``RETURNING a, b INTO :x, :y``: sqlglot reads one ``INTO`` target, not a list."""
    m = re.fullmatch(r'(INSERT INTO .*) RETURNING (.*) INTO ((:ret_\d+)(, :ret_\d+)*)', sql, re.S)
    assert m, sql
    assert isinstance(sqlglot.parse_one(m.group(1), read=read), exp.Insert)
    assert len(m.group(2).split(', ')) == len(m.group(3).split(', ')) == 2  # both key columns come back


def check_kudu_upsert(sql: str, read: str) -> None:
    """Impala's ``UPSERT INTO`` (Kudu tables): sqlglot's Hive has no UPSERT, and reads the same statement as an
    INSERT."""
    assert sql.startswith('UPSERT INTO '), sql
    insert = sqlglot.parse_one('INSERT' + sql[len('UPSERT'):], read=read)
    assert isinstance(insert, exp.Insert)


def check_kudu_table(sql: str, read: str) -> None:
    """A Kudu table (``PRIMARY KEY ... PARTITION BY HASH ... STORED AS KUDU``): sqlglot's Hive reads no Kudu
    partitioning, and reads the table without it."""
    m = re.fullmatch(r'(CREATE TABLE .*\)) PARTITION BY HASH \(([^)]*)\) PARTITIONS \d+ STORED AS KUDU', sql, re.S)
    assert m, sql
    create = sqlglot.parse_one(m.group(1), read=read)
    assert isinstance(create, exp.Create)
    key = create.find(exp.PrimaryKey)
    assert key is not None and [e.name for e in key.expressions] == [k.strip(' `') for k in m.group(2).split(',')]
    columns = [c.name for c in create.find_all(exp.ColumnDef)]
    assert columns[: len(key.expressions)] == [e.name for e in key.expressions]  # Kudu: key columns first


#: (engine, shape) -> the check of a statement sqlglot cannot read (and why, in the check's docstring)
SQLGLOT_GAPS = {
    ('mssql', 'change feed: triggers'): check_trigger,
    ('mssql', 'change feed: triggers on a composite key'): check_trigger,
    ('oracle', 'drop table'): check_plsql_drop,
    ('oracle', 'insert returning keys'): check_returning_into,
    ('impala', 'upsert'): check_kudu_upsert,
    ('impala', 'upsert key only'): check_kudu_upsert,
    ('impala', 'output log: store'): check_kudu_upsert,
    **{('impala', shape): check_kudu_table for shape in ('create table', 'metadata: create tables',
                                                          'artifact refs: create table', 'output log: create tables')},
}

#: what every engine that keeps tables sends (Druid refuses the writes: see ``test_druid_reads_only``)
SHAPES = {
    'create table', 'add column', 'drop table', 'select', *(f'select where {op}' for op in FILTERS),
    'select order limit offset', 'select outputs', 'select rows by key', 'count', 'insert', 'upsert',
    'upsert key only', 'update', 'delete', 'metadata: create tables', 'metadata: create', 'metadata: get latest',
    'metadata: replace index state', 'records: count up', 'artifact refs: create table', 'artifact refs: hold',
    'artifact refs: collect', 'output log: create tables', 'output log: prepare', 'output log: advance',
    'output log: store', 'output log: remove', 'output log: deleted',
}
READS = {'select', *(f'select where {op}' for op in FILTERS), 'select order limit offset', 'select outputs',
         'select rows by key', 'count'}


def backend_class(engine: str) -> type:
    uri = ENGINES[engine][0]
    return data_backends.load(_data_scheme(uri))


@lru_cache(maxsize=None)
def statements(engine: str) -> tuple[Statement, ...]:
    return tuple(catalogue(backend_class(engine), ENGINES[engine][0]))


def sent(engine: str, shape: str) -> list[str]:
    found = [s.sql for s in statements(engine) if s.shape == shape and s.sql is not None]
    assert found, f'{engine} sent no {shape!r}'
    return found


def parse(engine: str, sql: str) -> exp.Expression:
    parsed = sqlglot.parse_one(sql, read=ENGINES[engine][2])
    # sqlglot falls back to an opaque Command for (a part of) a statement it does not understand: not a parse
    assert parsed.find(exp.Command) is None, f'sqlglot did not understand, in {engine}: {sql}'
    return parsed


ALL = pytest.mark.parametrize('engine', list(ENGINES))


@ALL
def test_the_uri_reaches_the_engines_dialect(engine):
    uri, (dialect, driver), _ = ENGINES[engine]
    cls = backend_class(engine)
    assert cls.scheme == engine
    url = sa.engine.make_url(cls.sqlalchemy_url(uri))
    dialect_class = url.get_dialect()
    assert (dialect_class.name, dialect_class.driver) == (dialect, driver)
    # BigQuery's own tests run on its emulator (tests/test_bigquery_emulator.py); the others run on no server
    assert (cls.tested != COMPILE_ONLY) == (engine == 'bigquery'), cls.tested


@ALL
def test_every_statement_parses_in_its_dialect(engine):
    checked, gaps = 0, set()
    for statement in statements(engine):
        if statement.sql is None:
            continue
        checked += 1
        try:
            parse(engine, statement.sql)
            continue
        except (sqlglot.errors.ParseError, AssertionError) as e:
            gap = SQLGLOT_GAPS.get((engine, statement.shape))
            if gap is None:
                pytest.fail(f'{engine} {statement.shape!r}: {type(e).__name__}: {e}\n{statement.sql}')
        gap(statement.sql, ENGINES[engine][2])
        gaps.add(statement.shape)
    assert checked >= (len(READS) if engine == 'druid' else 80)
    listed = {shape for e, shape in SQLGLOT_GAPS if e == engine}
    assert gaps == listed, f'sqlglot reads these now: remove them from SQLGLOT_GAPS: {sorted(listed - gaps)}'


def test_mssql_takes_pymssql_or_pyodbc():
    cls = backend_class('mssql')
    url = cls.sqlalchemy_url('mssql+pyodbc://sa:secret@host/docs?driver=ODBC+Driver+18+for+SQL+Server')
    assert (sa.engine.make_url(url).get_dialect().driver, sa.engine.make_url(url).query['driver']) == \
        ('pyodbc', 'ODBC Driver 18 for SQL Server')
    backend = cls.offline('mssql+pyodbc://sa:secret@host/docs')
    claim = sa.select(sa.table('t', sa.column('id'))).with_for_update(skip_locked=True)
    assert 'WITH (UPDLOCK, ROWLOCK, READPAST)' in str(claim.compile(dialect=backend.dialect))
    with pytest.raises(ConfigError, match='pymssql'):
        cls.sqlalchemy_url('mssql+aioodbc://sa:secret@host/docs')


def test_mssql_composite_keys_are_json_arrays():
    (join,) = sent('mssql', 'select outputs by composite key')
    on = parse('mssql', join).args['joins'][0].args['on']
    assert 'json_array(pairs.a, pairs.b)' in on.sql('tsql').lower()
    (trigger,) = sent('mssql', 'change feed: triggers on a composite key')
    assert 'json_array(i.[a], i.[b])' in trigger and 'json_array(d.[a], d.[b])' in trigger


def test_mssql_claims_are_session_context():
    for shape, value in (('change feed: mark writes', '5'), ('change feed: unmark writes', 'NULL')):
        (sql,) = sent('mssql', shape)
        assert isinstance(parse('mssql', sql), exp.Execute)
        assert sql == f"EXEC sp_set_session_context @key = N'superduper_claim', @value = {value}"


@ALL
def test_every_shape_is_sent(engine):
    shapes = {s.shape for s in statements(engine) if s.sql is not None}
    expected = READS if engine == 'druid' else SHAPES
    assert expected <= shapes, sorted(expected - shapes)
    refused = {s.shape: s.refused for s in statements(engine) if s.sql is None}
    assert engine == 'druid' or not refused, refused  # only Druid refuses anything
    if backend_class(engine).capabilities.change_capture == 'triggers':
        assert {'change feed: create tables', 'change feed: triggers', 'change feed: claim'} <= shapes


def table_named(engine: str, sql: str) -> str:
    """The first table a statement names, as the database resolves the name (unquoted names folded to the case
    the dialect folds them to)."""
    from sqlglot.optimizer.normalize_identifiers import normalize_identifiers

    if sql.startswith('BEGIN EXECUTE IMMEDIATE'):  # Oracle's PL/SQL around a DROP
        sql = re.search(r"EXECUTE IMMEDIATE '(.*?)';", sql).group(1)
    if sql.startswith('UPSERT'):
        sql = 'INSERT' + sql[len('UPSERT'):]
    parsed = normalize_identifiers(sqlglot.parse_one(sql, read=ENGINES[engine][2]), dialect=ENGINES[engine][2])
    return parsed.find(exp.Table).name


@ALL
def test_sql_written_by_hand_names_tables_as_sqlalchemy_does(engine):
    """Statements written here (upserts, ALTER, DROP) and SQLAlchemy's name the same table: on Oracle a quoted
    lowercase name would be another table than the unquoted one SQLAlchemy writes."""
    shapes = ['select', 'count'] if engine == 'druid' else \
        ['select', 'update', 'delete', 'add column', 'drop table', 'upsert', 'insert']
    names = {shape: table_named(engine, sent(engine, shape)[0]) for shape in shapes}
    assert len(set(names.values())) == 1, names


@ALL
@pytest.mark.parametrize('op', list(FILTERS))
def test_each_filter_is_its_operator(engine, op):
    (sql,) = sent(engine, f'select where {op}')
    where = parse(engine, sql).args['where'].this
    while isinstance(where, exp.Paren):
        where = where.this
    expected = {'==': exp.EQ, '!=': exp.NEQ, '<': exp.LT, '<=': exp.LTE, '>': exp.GT, '>=': exp.GTE, 'in': exp.In,
                'is null': exp.Is, 'and/or': exp.Or}
    if op == 'not in':  # NOT (x IN ...), or x NOT IN ...
        assert isinstance(where, exp.Not) and isinstance(where.this.unnest(), exp.In), repr(where)
    elif op == 'is not null':  # NOT (x IS NULL), or x IS NOT NULL (as the dialects ibis registers parse it)
        negated = isinstance(where, exp.Is) and bool(where.args.get('negate'))
        assert negated or (isinstance(where, exp.Not) and isinstance(where.this, exp.Is)), repr(where)
    else:
        assert isinstance(where, expected[op]), repr(where)
    if op == 'and/or':
        assert isinstance(where.this, exp.And)
    if op in ('in', 'not in'):
        values = [e.name for e in where.find(exp.In).expressions]
        assert values == ['a1', 'b2']


@ALL
def test_outputs_are_left_joined_on_the_source_key(engine):
    (sql,) = sent(engine, 'select outputs')
    select = parse(engine, sql)
    (join,) = select.args['joins']
    assert join.side == 'LEFT' and join.this.name == OUTPUTS
    on = join.args['on']
    assert isinstance(on, exp.EQ)
    assert {(c.table, c.name) for c in on.find_all(exp.Column)} == {(TABLE, 'id'), (OUTPUTS, '_source')}
    assert select.args.get('limit') or select.args.get('fetch') or 'TOP 5' in sql


@ALL
def test_created_tables_have_every_field_and_the_key(engine):
    if engine == 'druid':
        pytest.skip('Druid creates no tables (test_druid_reads_only)')
    (sql,) = sent(engine, 'create table')
    if (engine, 'create table') in SQLGLOT_GAPS:
        sql = sql[: sql.rindex(' PARTITION BY')]
    create = parse(engine, sql)
    columns = {c.name: c for c in create.find_all(exp.ColumnDef)}
    assert list(columns) == list(FIELDS)
    if engine == 'trino':  # Trino declares no keys: the key is NOT NULL, and unenforced
        assert create.find(exp.PrimaryKey) is None and 'id VARCHAR(255) NOT NULL' in sql
    else:
        assert [e.name for e in create.find(exp.PrimaryKey).expressions] == ['id']


#: the column type of each field, as the engine's CREATE TABLE says it
TYPES = {
    'trino': {'txt': 'VARCHAR', 'n': 'BIGINT', 'x': 'DOUBLE', 'ok': 'BOOLEAN', 'raw': 'VARBINARY', 'doc': 'VARCHAR',
              'at': 'TIMESTAMP(6)', 'ref': 'CHAR(32)', 'v': 'VARBINARY'},
    'mssql': {'id': 'NVARCHAR(255)', 'txt': 'NVARCHAR(max)', 'n': 'BIGINT', 'x': 'FLOAT(53)', 'ok': 'BIT',
              'raw': 'VARBINARY(max)', 'doc': 'NVARCHAR(max)', 'at': 'DATETIME2(6)', 'ref': 'UNIQUEIDENTIFIER',
              'v': 'VARBINARY(max)'},
    'oracle': {'txt': 'VARCHAR2(4000 CHAR)', 'n': 'NUMBER(19)', 'x': 'BINARY_DOUBLE', 'ok': 'SMALLINT',
               'raw': 'BLOB', 'doc': 'CLOB', 'at': 'TIMESTAMP', 'ref': 'CHAR(32)', 'v': 'BLOB'},
    'impala': {'id': 'STRING', 'txt': 'STRING', 'n': 'BIGINT', 'x': 'DOUBLE', 'ok': 'BOOLEAN', 'raw': 'BINARY',
               'doc': 'STRING', 'at': 'TIMESTAMP', 'ref': 'STRING', 'v': 'BINARY'},
    'bigquery': {'id': 'STRING(255)', 'txt': 'STRING', 'n': 'INT64', 'x': 'FLOAT64', 'ok': 'BOOL', 'raw': 'BYTES',
                 'doc': 'STRING', 'at': 'DATETIME', 'ref': 'STRING', 'v': 'ARRAY<FLOAT64>'},
}


@pytest.mark.parametrize('engine', list(TYPES))
def test_column_types(engine):
    (sql,) = sent(engine, 'create table')
    for field, type_ in TYPES[engine].items():
        column = rf'(^|[\s(,])[`"\[]?{re.escape(field)}[`"\]]? {re.escape(type_)}[\s,]'  # quoted or not
        assert re.search(column, sql), (field, type_, sql)


@ALL
def test_values_are_written_as_the_dialect_reads_them(engine):
    if engine == 'druid':
        pytest.skip('Druid takes no inserts (test_druid_reads_only)')
    (sql,) = sent(engine, 'insert with literals')
    insert = parse(engine, sql)
    assert [c.name for c in insert.this.expressions] == list(FIELDS)
    (row,) = insert.expression.expressions
    values = dict(zip(FIELDS, row.expressions))
    assert values['txt'].name == "it's" and values['n'].name == '7'  # a quote in a string is escaped
    assert values['doc'].name == '{"k": [1, "two"]}'
    assert '2024-05-06 07:08:09.123456' in values['at'].sql(ENGINES[engine][2])  # microseconds kept


@ALL
def test_upsert_is_one_statement_where_declared(engine):
    cls = backend_class(engine)
    if engine == 'druid':
        assert not cls.capabilities.upsert
        return
    assert cls.capabilities.upsert
    for shape in ('upsert', 'upsert key only', 'output log: store'):
        (sql,) = sent(engine, shape)
        assert sql.startswith('MERGE INTO ') or sql.startswith('UPSERT INTO '), sql
    (merge,) = sent(engine, 'upsert')
    if merge.startswith('MERGE'):
        parsed = parse(engine, merge)
        whens = [w.args.get('matched') for w in parsed.args['whens'].expressions]
        assert whens == [True, False]  # replace the row with the key, else insert it
        (only_key,) = sent(engine, 'upsert key only')
        assert [w.args.get('matched') for w in parse(engine, only_key).args['whens'].expressions] == [False]
    (store,) = sent(engine, 'output log: store')  # the outputs column has the listener's name, hyphen and all
    if store.startswith('UPSERT'):
        store = 'INSERT' + store[len('UPSERT'):]
    stored = parse(engine, store)
    inserted = stored.find(exp.Insert) if isinstance(stored, exp.Merge) else stored
    assert {c.name for c in inserted.this.expressions} == {'_source', '_seq', OUTPUTS}, store


@ALL
def test_change_capture_is_declared_with_its_triggers(engine):
    cls = backend_class(engine)
    shapes = {s.shape for s in statements(engine)}
    if cls.capabilities.change_capture == 'triggers':
        (trigger,) = sent(engine, 'change feed: triggers')
        assert 'CREATE' in trigger and 'TRIGGER' in trigger and '_superduper_change_log' in trigger
        (drop,) = sent(engine, 'change feed: drop triggers')
        assert drop.startswith('DROP TRIGGER IF EXISTS')
    else:
        assert cls.capabilities.change_capture in ('none', 'polling')
        assert not any(shape.startswith('change feed') for shape in shapes)
    polled = {'polling: create seen table', 'polling: differences', 'polling: hashes of rows', 'polling: mark seen'}
    if cls.capabilities.change_capture == 'polling':
        assert polled <= shapes and cls.row_hash is not SQLDataBackend.row_hash
    else:
        assert not any(shape.startswith('polling') for shape in shapes)


@ALL
def test_claims_skip_locked_rows_where_declared(engine):
    cls = backend_class(engine)
    if not cls.capabilities.skip_locked:
        return
    for sql in sent(engine, 'change feed: claim') + sent(engine, 'change feed: free expired'):
        assert 'READPAST' in sql or 'SKIP LOCKED' in sql, sql


@ALL
def test_names_longer_than_declared_are_refused(engine):
    cls = backend_class(engine)
    limit = cls.capabilities.identifier_limit
    backend = cls.offline(ENGINES[engine][0])
    if limit is None:
        backend.check_name('t' * 1000)
        return
    backend.check_name('t' * limit)
    with pytest.raises(ComponentError, match=str(limit)):
        backend.check_name('t' * (limit + 1))


def test_druid_reads_only():
    refused = {s.shape: s.refused for s in statements('druid') if s.sql is None}
    assert set(refused) >= {'create table', 'insert', 'upsert', 'update', 'delete', 'metadata: create tables',
                            'output log: create tables'}
    for reason in refused.values():
        assert 'Druid' in reason and "metadata_store='sqlite://" in reason
    caps = backend_class('druid').capabilities
    assert (caps.transactions, caps.upsert, caps.shared, caps.change_capture) == (False, False, False, 'none')


def test_oracle_artifact_locks_are_not_empty_strings():
    """Oracle stores '' as NULL: lock rows of artifact references are held by a name it keeps."""
    holds = ' '.join(sent('oracle', 'artifact refs: hold'))
    assert "holder = '*'" in holds and "''" not in holds


@ALL
def test_a_missing_driver_names_the_extra(engine, monkeypatch):
    module = data_backends.get(engine).path.partition(':')[0]
    driver = {'trino': 'trino', 'mssql': 'pymssql', 'oracle': 'oracledb', 'druid': 'pydruid', 'impala': 'impala',
              'bigquery': 'sqlalchemy_bigquery'}
    monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setitem(sys.modules, driver[engine], None)  # an import of it fails as if it were not installed
    if engine in ('mssql', 'oracle'):  # SQLAlchemy has the dialect; the driver is imported when connecting
        with pytest.raises(MissingDependency, match=rf"pip install 'superduper\[{engine}\]'"):
            data_backends.create(engine, ENGINES[engine][0])
    else:
        with pytest.raises(MissingDependency, match=rf"pip install 'superduper\[{engine}\]'"):
            data_backends.load(engine)


@ALL
def test_the_output_counter_is_read_before_it_is_inserted(engine):
    """Where no primary key is enforced (BigQuery, Trino), inserting the counter again on reopening would make two."""
    if engine == 'druid':
        pytest.skip('Druid keeps no output log (test_druid_reads_only)')
    prepare = [parse(engine, sql) for sql in sent(engine, 'output log: prepare')]
    kinds = [type(p) for p in prepare if not isinstance(p, exp.Create)]
    assert kinds == [exp.Select, exp.Insert], kinds


def test_bigquery_uri():
    cls = backend_class('bigquery')
    url = sa.engine.make_url(cls.sqlalchemy_url('bigquery://my-project/docs?location=EU'))
    assert (url.host, url.database, dict(url.query)) == ('my-project', 'docs', {'location': 'EU'})
    # an emulator: the client is made by the backend (no credentials), the dialect is told so
    url = sa.engine.make_url(cls.sqlalchemy_url('bigquery://p/d?api_endpoint=http://127.0.0.1:9050'))
    assert dict(url.query) == {'user_supplied_client': 'true'}
    for bad in ('bigquery://my-project', 'bigquery://my-project/docs/more', 'bigquery+rest://p/d'):
        with pytest.raises(ConfigError, match='bigquery://<project>/<dataset>'):
            cls.sqlalchemy_url(bad)


def test_bigquery_keys_are_declared_not_enforced_and_reflected():
    from google.cloud.bigquery.table import PrimaryKey, TableConstraints

    for shape in ('create table', 'polling: create seen table'):
        create = sent('bigquery', shape)[0]
        assert re.search(r'PRIMARY KEY \(`(id|k0)`\) NOT ENFORCED\s*\)$', create), create
    backend = backend_class('bigquery').offline(ENGINES['bigquery'][0])

    class Client:
        def get_table(self, ref):
            assert str(ref) == 'my-project.docs.documents'
            return type('Table', (), {'table_constraints': TableConstraints(PrimaryKey(['id']), None)})()

    connection = type('Connection', (), {'connection': type('DBAPI', (), {'_client': Client()})()})()
    backend.dialect.project_id, backend.dialect.dataset_id = 'my-project', 'docs'
    assert backend.dialect.get_pk_constraint(connection, 'documents')['constrained_columns'] == ['id']


def test_bigquery_upserts_many_rows_in_one_merge(monkeypatch):
    """Each DML statement is a job on BigQuery: rows are upserted a chunk at a time, a key's last row winning."""
    from superduper.backends.sql import bigquery
    from superduper.backends.sql.offline import render
    from superduper.backends.sql.statements import _tables

    backend = backend_class('bigquery').offline(ENGINES['bigquery'][0])
    _tables(type('Catalogue', (), {'built': lambda *a: None})(), backend)
    backend.insert(backend.engine, TABLE, ['id', 'n'], [['a', 'b', 'a'], [1, 2, 3]], upsert_key='id')
    (merge,) = [render(s, backend.dialect) for s in backend.engine.sent]
    parsed = parse('bigquery', merge)
    assert isinstance(parsed, exp.Merge) and merge.count(' UNION ALL ') == 1, merge
    assert "SELECT 'a' AS `id`, 3 AS `n` UNION ALL SELECT 'b', 2" in merge  # 'a' once, as last given
    assert [w.args.get('matched') for w in parsed.args['whens'].expressions] == [True, False]
    backend.engine.sent.clear()
    monkeypatch.setattr(bigquery, 'MERGE_ROWS', 2)
    backend.insert(backend.engine, TABLE, ['id', 'n'], [list('abcde'), list(range(5))], upsert_key='id')
    merges = [render(s, backend.dialect) for s in backend.engine.sent]
    assert [m.count(' UNION ALL ') for m in merges] == [1, 1, 0]


def test_bigquery_polls_by_row_hash():
    hashed = 'CAST(FARM_FINGERPRINT(TO_JSON_STRING(STRUCT(' + ', '.join(f'`documents`.`{f}`' for f in FIELDS)
    (difference,) = sent('bigquery', 'polling: differences')
    assert hashed in difference  # every column of the row
    query = parse('bigquery', difference)
    (join,) = query.args['joins']
    assert join.side == 'FULL' and join.this.name.startswith('_superduper_seen_')
    where = query.args['where'].this
    assert isinstance(where, exp.Or) and len(list(where.flatten())) == 3  # inserted, deleted, updated
    (hashes,) = sent('bigquery', 'polling: hashes of rows')
    assert hashed in hashes and isinstance(parse('bigquery', hashes).args['where'].this, exp.In)
    gone, upsert = sent('bigquery', 'polling: mark seen')
    assert isinstance(parse('bigquery', gone), exp.Delete) and "IN ('b2')" in gone
    assert isinstance(parse('bigquery', upsert), exp.Merge) and "'123' AS `h`" in upsert  # the rows: one MERGE


@pytest.mark.parametrize('measure, function', [('cosine', 'COSINE_DISTANCE'), ('dot', 'EUCLIDEAN_DISTANCE'),
                                               ('l2', 'EUCLIDEAN_DISTANCE')])
def test_bigquery_vector_search_is_one_query(measure, function):
    from superduper.backends.sql.statements import VECTORS

    (plain,) = sent('bigquery', f'vector search {measure}')
    (filtered,) = sent('bigquery', f'vector search {measure} where and/or')
    for sql in (plain, filtered):
        query = parse('bigquery', sql)
        assert f'{function}(`{VECTORS}`.`{VECTORS}`, [0.5, -1.0, 2.0])' in sql  # the query vector as an array
        assert [o.this.name for o in query.args['order'].expressions] == ['_sd_distance', '_source']
        assert query.args['limit'].expression.name == '10'
        assert f'array_length(`{VECTORS}`.`{VECTORS}`) > 0' in sql  # a missing vector is the empty array
    assert not parse('bigquery', plain).args.get('joins')
    (join,) = parse('bigquery', filtered).args['joins']
    assert join.this.name == TABLE
    assert {(c.table, c.name) for c in join.args['on'].find_all(exp.Column)} == {(TABLE, 'id'), (VECTORS, '_source')}
    assert "`documents`.`txt` = 'b'" in filtered


def test_bigquery_scores_are_the_in_process_ones():
    """Each measure's SQL, evaluated here on numbers, gives the distance its score is computed from."""
    import types

    import numpy as np

    from superduper.backends.sql.bigquery_vectors import BigQueryVectorSearcher

    v, q = np.array([1.0, 2.0, -0.5]), np.array([0.5, -1.0, 2.0])
    index = types.SimpleNamespace(indexing_listener=types.SimpleNamespace(outputs='o'), source='s',
                                  dimension=lambda db: 3, measure='dot')
    searcher = BigQueryVectorSearcher(types.SimpleNamespace(databackend=None), index)
    euclid = np.linalg.norm
    dot_distance = (euclid(v - q) ** 2 - euclid(v) ** 2 - euclid(q) ** 2) * 0.5  # the SQL of 'dot', on numbers
    assert searcher.scores['dot'](dot_distance) == pytest.approx(float(v @ q))
    assert searcher.scores['l2'](euclid(v - q)) == pytest.approx(-float(((v - q) ** 2).sum()))
    cosine = float(v @ q / euclid(v) / euclid(q))
    assert searcher.scores['cosine'](1 - cosine) == pytest.approx(cosine)


def test_bigquery_vectors_are_arrays_and_none_is_empty():
    from superduper.backends.sql.bigquery_vectors import BqVector

    backend = backend_class('bigquery').offline(ENGINES['bigquery'][0])
    column = sa.column('v', BqVector(3))
    literal = {'literal_binds': True}
    assert str(column.is_(None).compile(dialect=backend.dialect, compile_kwargs=literal)) == \
        'coalesce(array_length(`v`), 0) = 0'
    assert str(column.is_not(None).compile(dialect=backend.dialect, compile_kwargs=literal)) == 'array_length(`v`) > 0'
    processor = BqVector(3).bind_processor(backend.dialect)
    assert processor(None) == [] and processor(np.float32([1, 2, 3]).tobytes()) == [1.0, 2.0, 3.0]
    read = BqVector(3).result_processor(backend.dialect, None)
    assert read([]) is None and read([1.0, 2.0, 3.0]) == np.float32([1, 2, 3]).tobytes()


def test_bigquery_parameters_are_named_as_the_server_reads_them():
    """A query parameter's name ends at a hyphen on BigQuery: the outputs column of a listener has one."""
    from superduper.backends.sql.statements import OUTPUT_FIELDS, OUTPUTS

    backend = backend_class('bigquery').offline(ENGINES['bigquery'][0])
    backend.bind_table(OUTPUTS, {k: resolve_type(v) for k, v in OUTPUT_FIELDS.items()}, '_source')
    backend.bind_table(TABLE, {k: resolve_type(v) for k, v in FIELDS.items()}, 'id')
    for upsert_key in (None, '_source'):
        sql, arrange = backend._compiled_insert(OUTPUTS, tuple(OUTPUT_FIELDS), upsert_key)
        names = [a or b for a, b in re.findall(r'(?<![\w`]):([\w-]+)|%\(([^):]+)', sql)]  # :name, %(name:TYPE)s
        assert names and all(re.fullmatch(r'\w+', n) for n in names), sql
        (row,) = arrange([['a1'], [3], [{'y': 1}]])
        assert set(row) == set(names)  # every parameter the statement names is given
    # rows by key: one array parameter (``IN UNNEST``), given the list of keys
    sql, names, _ = backend._by_key_sql(TABLE, ('id', 'txt'), 'id', 3)
    assert re.search(r'IN UNNEST\((:keys|%\(keys(:[^)]*)?\)s)\)', sql), sql
    assert backend.by_key_parameters(names, ['a', 'b', 'c']) == {'keys': ['a', 'b', 'c']}
