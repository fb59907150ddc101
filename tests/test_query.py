"""The lazy query API on every backend."""

from __future__ import annotations

import pandas as pd
import pytest

from superduper import Cursor, Document, Table
from superduper.base.exceptions import QueryError

#: also on a folder queried by the other engines (the shared suite runs ``parquet`` on DuckDB)
pytestmark = pytest.mark.backends('all', 'engines')


@pytest.fixture
def products(db):
    db.apply(Table('products', fields={'name': 'str', 'brand': 'str', 'price': 'float', 'stock': 'int'}))
    rows = [
        {'name': 'runner', 'brand': 'Nike', 'price': 120.0, 'stock': 3},
        {'name': 'walker', 'brand': 'Adidas', 'price': 80.0, 'stock': 0},
        {'name': 'sprinter', 'brand': 'Nike', 'price': 150.5, 'stock': 10},
        {'name': 'hiker', 'brand': 'Salomon', 'price': 99.9, 'stock': 7},
    ]
    ids = db['products'].insert(rows).execute()
    return db['products'], ids


def names(cursor) -> list[str]:
    return sorted(r['name'] for r in cursor)


def test_insert_returns_generated_ids_and_rows_read_back(db, products, pk):
    t, ids = products
    assert len(ids) == 4 and len(set(ids)) == 4 and all(ids)
    assert all(isinstance(i, str) for i in ids) or pk == '_id'  # MongoDB: ObjectIds
    rows = t.select().execute().tolist()
    assert sorted(r[pk] for r in rows) == sorted(ids)
    assert all(isinstance(r, Document) and isinstance(r, dict) for r in rows)
    by_name = {r['name']: r for r in rows}
    sprinter = by_name['sprinter']
    assert sprinter.pop('_fold') in ('train', 'valid')
    assert sprinter == {pk: ids[2], 'name': 'sprinter', 'brand': 'Nike', 'price': 150.5, 'stock': 10}


def test_queries_are_lazy_until_execute(db, products):
    t, _ = products
    query = t.insert([{'name': 'lazy', 'brand': 'X', 'price': 1.0, 'stock': 1}])
    assert t.count().execute() == 4  # not run yet
    db.execute(query)
    assert db.execute(t.count()) == 5


def test_filter_operators(products):
    t, _ = products
    assert names(t.filter(t['brand'] == 'Nike').execute()) == ['runner', 'sprinter']
    assert names(t.filter(t['brand'] != 'Nike').execute()) == ['hiker', 'walker']
    assert names(t.filter(t['price'] < 99.9).execute()) == ['walker']
    assert names(t.filter(t['price'] <= 99.9).execute()) == ['hiker', 'walker']
    assert names(t.filter(t['stock'] > 7).execute()) == ['sprinter']
    assert names(t.filter(t['stock'] >= 7).execute()) == ['hiker', 'sprinter']
    assert names(t.filter(t['brand'].isin(['Adidas', 'Salomon'])).execute()) == ['hiker', 'walker']
    assert names(t.filter((t['brand'] == 'Nike') & (t['stock'] > 5)).execute()) == ['sprinter']
    assert names(t.filter((t['brand'] == 'Adidas') | (t['price'] > 140)).execute()) == ['sprinter', 'walker']
    assert names(t.filter(~(t['brand'] == 'Nike')).execute()) == ['hiker', 'walker']
    assert names(t.filter(t['brand'] == 'Nike').filter(t['stock'] < 5).execute()) == ['runner']


def test_select_columns_limit_offset_order(products):
    t, _ = products
    rows = t.select('name', 'price').order_by('price').execute().tolist()
    assert rows == [
        {'name': 'walker', 'price': 80.0},
        {'name': 'hiker', 'price': 99.9},
        {'name': 'runner', 'price': 120.0},
        {'name': 'sprinter', 'price': 150.5},
    ]
    page = t.select('name').order_by('price', descending=True).limit(2, offset=1).execute().tolist()
    assert page == [{'name': 'runner'}, {'name': 'hiker'}]
    assert len(t.select().limit(3).execute().tolist()) == 3


def test_get_ids_count(products, pk):
    t, ids = products
    assert t.get(name='hiker').execute()['brand'] == 'Salomon'
    assert t.get(**{pk: ids[0]}).execute()['name'] == 'runner'
    assert t.get(name='nothing').execute() is None
    assert sorted(t.filter(t['brand'] == 'Nike').ids().execute()) == sorted([ids[0], ids[2]])
    assert t.count().execute() == 4
    assert t.filter(t['stock'] == 0).count().execute() == 1


def test_update_and_delete_report_rows_changed(products):
    t, ids = products
    assert t.filter(t['brand'] == 'Nike').update({'stock': 0}).execute() == 2
    assert sorted(r['stock'] for r in t.filter(t['brand'] == 'Nike').select('stock').execute()) == [0, 0]
    assert t.filter(t['stock'] == 0).delete().execute() == 3
    assert [r['name'] for r in t.select('name').execute()] == ['hiker']
    assert t.delete().execute() == 1
    assert t.count().execute() == 0


def test_insert_one_documents_and_explicit_ids(db, products, pk):
    t, _ = products
    new_id = t.insert_one(Document({pk: 'my-id', 'name': 'one', 'brand': 'B', 'price': 1.0, 'stock': 1})).execute()
    assert new_id == 'my-id'
    assert t.get(**{pk: 'my-id'}).execute()['name'] == 'one'
    mixed = t.insert([{pk: 'given', 'name': 'a'}, {'name': 'b'}]).execute()
    assert mixed[0] == 'given' and mixed[1] and mixed[1] != 'given'
    got = t.get(**{pk: mixed[1]}).execute()
    assert got.pop('_fold') in ('train', 'valid')
    # fields a row lacks read as None on SQL; a MongoDB document keeps them absent
    assert {k: got.get(k) for k in (pk, 'name', 'brand', 'price', 'stock')} == {
        pk: mixed[1], 'name': 'b', 'brand': None, 'price': None, 'stock': None
    }
    assert set(got) == {pk, 'name', 'brand', 'price', 'stock'} or set(got) == {pk, 'name'}


def test_insert_pandas_dataframe(db, products, pk):
    t, _ = products
    frame = pd.DataFrame({'name': ['p1', 'p2'], 'brand': ['Puma', None], 'price': [10.5, float('nan')], 'stock': [1, 2]})
    ids = t.insert(frame).execute()
    assert len(ids) == 2
    assert t.select(pk, 'name', 'brand', 'price', 'stock').get(**{pk: ids[0]}).execute() == {
        pk: ids[0], 'name': 'p1', 'brand': 'Puma', 'price': 10.5, 'stock': 1
    }
    assert t.get(**{pk: ids[1]}).execute()['price'] is None


def test_mongo_style_find(products):
    t, _ = products
    assert names(t.find({'brand': 'Nike'}).execute()) == ['runner', 'sprinter']
    assert names(t.find({'price': {'$gt': 100}, 'stock': {'$lte': 5}}).execute()) == ['runner']
    assert names(t.find({'$or': [{'brand': 'Adidas'}, {'stock': {'$in': [7]}}]}).execute()) == ['hiker', 'walker']
    assert t.find_one({'name': 'walker'}, {'brand': 1, '_id': 0}).execute() == {'brand': 'Adidas'}
    with pytest.raises(QueryError, match=r'\$regex'):
        t.find({'name': {'$regex': 'x'}})


def test_cursor_streams_in_batches(db):
    db.cfg.read_batch_size = 7
    db.apply(Table('many', fields={'n': 'int'}))
    db['many'].insert([{'n': i} for i in range(50)]).execute()
    cursor = db['many'].select('n').execute()
    assert isinstance(cursor, Cursor)
    batches = list(cursor.batches())
    assert [len(b) for b in batches] == [7] * 7 + [1]
    assert sorted(r['n'] for b in batches for r in b) == list(range(50))
    cursor = db['many'].select('n').execute()
    first = next(cursor)
    rest = cursor.tolist()
    assert len(rest) == 49 and first not in rest


def test_injection_is_just_data(db, products, pk):
    t, _ = products
    evil = "x'); drop table products; --"
    new_id = t.insert_one({'name': evil, 'brand': evil}).execute()
    assert t.filter(t['name'] == evil).execute().tolist()[0][pk] == new_id
    assert t.filter(t['brand'].isin([evil])).count().execute() == 1
    assert t.find({'name': evil}).count().execute() == 1
    assert t.count().execute() == 5


def test_odd_identifiers_are_quoted(db):
    db.apply(Table('my table; x', fields={'select': 'str', 'a b': 'int'}))
    t = db['my table; x']
    t.insert([{'select': 'v', 'a b': 1}]).execute()
    assert t.filter(t['a b'] == 1).select('select').execute().tolist() == [{'select': 'v'}]


def test_refining_a_write_query_is_refused(products):
    t, _ = products
    with pytest.raises(QueryError, match='cannot refine'):
        t.count().filter(t['stock'] > 1)
    with pytest.raises(QueryError):
        t.filter(t['a'] == 1 and t['b'] == 2)
