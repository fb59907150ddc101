"""Bad input: one clear error naming the thing, and nothing already stored is lost or half-written."""

from __future__ import annotations

import numpy as np
import pytest

from superduper import DataType, Table
from superduper.base.exceptions import (
    ConfigError,
    DatabaseError,
    InvalidValue,
    QueryError,
    UnknownField,
    UnknownTable,
)

#: also on a folder queried by the other engines (the shared suite runs ``parquet`` on DuckDB)
pytestmark = pytest.mark.backends('all', 'engines')


@pytest.fixture
def items(db, pk):
    db.apply(Table('items', fields={'name': 'str', 'qty': 'int', 'v': 'vector[float32:3]'}))
    db['items'].insert([{pk: 'keep', 'name': 'kept', 'qty': 1, 'v': [1, 2, 3]}]).execute()
    return db['items']


@pytest.mark.sql_only('MongoDB creates a collection on its first insert, and reads one that does not exist as empty')
def test_unknown_table_lists_existing(db, items):
    with pytest.raises(UnknownTable, match=r"table 'nope' does not exist.*tables: items"):
        db['nope'].select().execute()
    with pytest.raises(UnknownTable, match="'nope'"):
        db['nope'].insert([{'a': 1}]).execute()


@pytest.mark.sql_only('MongoDB collections are schemaless: fields a Table does not declare are stored as given')
def test_unknown_column_everywhere(items):
    t = items
    for query in [
        t.select('name', 'colour'),
        t.filter(t['colour'] == 'red'),
        t.order_by('colour'),
        t.filter(t['qty'] > 0).update({'colour': 'red'}),
        t.insert([{'name': 'x', 'colour': 'red'}]),
    ]:
        with pytest.raises(UnknownField, match=r"table 'items' has no field 'colour'; fields: id, name, qty, v"):
            query.execute()


def test_wrong_type_names_table_field_and_row(items, pk):
    rows = [{'name': 'a', 'qty': 1}, {'name': 'b', 'qty': 2}, {'name': 'c', 'qty': 'three'}]
    with pytest.raises(InvalidValue, match=r"table 'items', field 'qty', row 2: expected an integer, got 'three'"):
        items.insert(rows).execute()
    with pytest.raises(InvalidValue, match=r"field 'name', row 0: expected a string, got 5"):
        items.insert([{'name': 5}]).execute()
    with pytest.raises(InvalidValue, match=r"field 'qty', row 0: expected an integer, got True"):
        items.insert([{'qty': True}]).execute()
    with pytest.raises(InvalidValue, match=r"field 'qty'"):
        items.filter(items['qty'] == 'many').execute()
    with pytest.raises(InvalidValue, match=r"field 'qty'"):
        items.update({'qty': 'many'}).execute()
    assert [r[pk] for r in items.select().execute()] == ['keep']


def test_wrong_vector_length(items):
    with pytest.raises(InvalidValue, match=r"table 'items', field 'v', row 1: expected a vector of 3 float32 values.*shape \(4,\)"):
        items.insert([{'v': [1, 2, 3]}, {'v': np.ones(4)}]).execute()
    with pytest.raises(InvalidValue, match=r"field 'v', row 0"):
        items.insert([{'v': ['a', 'b', 'c']}]).execute()
    assert items.count().execute() == 1


@pytest.mark.backends('all', 'fakesnow')  # Snowflake on fakesnow too: it enforces no primary key itself
def test_failed_batch_writes_nothing(db, items, pk):
    # the bad row is past the first chunk: earlier chunks were already sent, and must be rolled back
    db.cfg.insert_batch_size = 10
    rows = [{'name': f'n{i}', 'qty': i} for i in range(25)] + [{'name': 'bad', 'qty': 'x'}]
    with pytest.raises(InvalidValue, match='row 25'):
        items.insert(rows).execute()
    assert items.count().execute() == 1
    # a row the database itself refuses (duplicate key) also rolls back the whole batch
    with pytest.raises(DatabaseError, match="insert into (table|collection) 'items' failed"):
        items.insert([{pk: 'new-1', 'name': 'x'}, {pk: 'keep', 'name': 'dup'}]).execute()
    assert items.count().execute() == 1
    assert items.get(**{pk: 'keep'}).execute()['name'] == 'kept'



@pytest.mark.parametrize('key_type, keys', [
    ('str', [f"k'{i}\\" for i in range(3000)]),  # quotes and backslashes: keys are never written into SQL text
    ('int', list(range(3000))),
])
def test_a_key_stored_or_given_twice_fails_the_insert_and_writes_nothing(db, key_type, keys):
    db.cfg.insert_batch_size = 1000  # the insert goes in three batches; the second holds the stored key
    db.apply(Table('keyed', fields={'k': key_type, 'name': 'str'}, primary_id='k', folds=False))
    t = db['keyed']
    taken = keys[1234]
    t.insert([{'k': taken, 'name': 'first'}]).execute()
    fresh = [k for k in keys if k != taken]
    failed = "insert into (table|collection) 'keyed' failed"
    with pytest.raises(DatabaseError, match=failed):  # one key of many is stored already
        t.insert([{'k': k, 'name': 'new'} for k in keys]).execute()
    with pytest.raises(DatabaseError, match=failed):  # none is stored, one is given twice
        t.insert([{'k': k, 'name': 'new'} for k in fresh + [fresh[-1]]]).execute()
    assert [(r['k'], r['name']) for r in t.select().execute()] == [(taken, 'first')]
    t.insert([{'k': k, 'name': 'new'} for k in fresh]).execute()
    assert t.count().execute() == len(keys)
    assert t.get(k=taken).execute()['name'] == 'first'


def test_bad_rows_and_query_arguments(items):
    with pytest.raises(QueryError, match='row 1 of an insert into .items. is a str'):
        items.insert([{'name': 'a'}, 'oops']).execute()
    with pytest.raises(QueryError, match='insert_one'):
        items.insert({'name': 'a'}).execute()
    with pytest.raises(QueryError, match='limit'):
        items.limit(-1)
    with pytest.raises(QueryError, match='non-empty dict'):
        items.update({})
    with pytest.raises(QueryError, match='isin'):
        items['name'].isin('abc')


def test_bad_datatype_and_field_declarations(db):
    with pytest.raises(ConfigError, match="unknown field type 'strng'"):
        Table('t', fields={'a': 'strng'})
    with pytest.raises(ConfigError, match=r"encodable='blob'; expected one of encodable, artifact, lazy_artifact, file"):
        DataType('d', encodable='blob')
    with pytest.raises(ConfigError, match='encoder must be callable'):
        DataType('d', encoder='pickle')


def test_encoder_failure_names_the_row(db):
    dt = DataType('strict', encoder=lambda x: x.encode(), decoder=lambda b: b.decode(), encodable='artifact')
    db.apply(Table('enc', fields={'s': dt}))
    with pytest.raises(InvalidValue, match=r"table 'enc', field 's', row 1"):
        db['enc'].insert([{'s': 'fine'}, {'s': 42}]).execute()
    assert db['enc'].count().execute() == 0


def test_missing_file_for_file_type(db, tmp_path):
    db.apply(Table('fs', fields={'f': DataType('file', encodable='file')}))
    with pytest.raises(InvalidValue, match=r"field 'f', row 0: expected the path of an existing file or directory"):
        db['fs'].insert([{'f': str(tmp_path / 'missing.bin')}]).execute()


BAD_VALUES = {  # field -> (value, what the error says); each in a batch whose other rows are fine
    'None inside a vector': ('v', [1, None, 3], 'missing \\(None\\) element'),
    'NaN in a vector': ('v', [1.0, float('nan'), 3.0], 'NaN or infinite'),
    'infinity in a vector': ('v', np.array([1, np.inf, 3], dtype=np.float32), 'NaN or infinite'),
    'complex vector': ('v', np.array([1 + 2j, 3, 4]), 'complex'),
    'integer too large': ('qty', 2**70, 'outside the 64-bit range'),
    'integer too small': ('qty', -(2**63) - 1, 'outside the 64-bit range'),
    'NUL in text': ('name', 'a\x00b', 'NUL character'),
    'lone surrogate': ('name', 'a\udc80b', 'lone surrogate'),
}


@pytest.mark.parametrize('case', BAD_VALUES)
def test_values_are_stored_exactly_or_refused(items, case):
    field, value, reason = BAD_VALUES[case]
    rows = [{'name': f'n{i}', 'qty': i, 'v': [i, i, i]} for i in range(60)]
    rows.insert(57, {'name': 'bad', 'qty': 1, 'v': [0, 0, 1], field: value})
    with pytest.raises(InvalidValue, match=rf"table 'items', field '{field}', row 57: .*{reason}"):
        items.insert(rows).execute()
    assert items.count().execute() == 1  # nothing of the batch was stored
    with pytest.raises(InvalidValue, match=rf"field '{field}'"):
        items.filter(items['name'] == 'kept').update({field: value}).execute()
    assert items.get(name='kept').execute()[field] is not None


@pytest.mark.backends('all', 'fakesnow')  # Snowflake on fakesnow too: NaN and infinities through a MERGE
def test_a_float_round_trips_exactly_or_is_refused(db):
    db.apply(Table('floats', fields={'x': 'float'}))
    values = [0.1, -0.0, 1e308, 5e-324, float('nan'), float('inf'), float('-inf')]
    finite = values[:4]
    db['floats'].insert([{'id': str(i), 'x': x} for i, x in enumerate(finite)]).execute()
    got = {r['id']: r['x'] for r in db['floats'].select().execute()}
    assert [got[str(i)] for i in range(4)] == finite
    try:
        db['floats'].insert([{'id': 'nan', 'x': values[4]}, {'id': 'inf', 'x': values[5]}]).execute()
    except InvalidValue as e:  # a database without NaN (SQLite, MySQL) says so instead of storing NULL
        assert "field 'x'" in str(e) and 'no NaN or infinity' in str(e)
        assert db['floats'].count().execute() == 4
    else:
        stored = {r['id']: r['x'] for r in db['floats'].select().execute()}
        assert np.isnan(stored['nan']) and stored['inf'] == float('inf')


def test_filter_errors_name_the_filter_not_a_row(items):
    with pytest.raises(InvalidValue, match=r"filter on table 'items', field 'qty': expected an integer, got 'many'"):
        items.filter(items['qty'] == 'many').execute()


@pytest.mark.backends('mariadb')  # MariaDB's max_allowed_packet
def test_a_value_larger_than_a_statement_can_carry_is_named(db, backend):
    limit = db.databackend.statement_limit()
    db.apply(Table('blobs', fields={'data': 'bytes'}))
    db['blobs'].insert([{'id': 'small', 'data': b'x' * 1000}]).execute()
    with pytest.raises(InvalidValue, match=r"table 'blobs', field 'data', row 1: the row is .*max_allowed_packet"):
        db['blobs'].insert([{'id': 'ok', 'data': b'y'}, {'id': 'big', 'data': b'z' * (limit + 1)}]).execute()
    assert db['blobs'].count().execute() == 1


def test_a_batch_whose_vectors_are_all_missing_is_stored(items, pk):
    items.insert([{pk: 'a', 'name': 'no vector'}, {pk: 'b', 'name': 'none either', 'v': None}]).execute()
    assert [r['v'] for r in items.filter(items['name'] != 'kept').select('v').execute()] == [None, None]
