"""Tables another program created work as they are: their own primary key and column types, no migration."""

from __future__ import annotations

import datetime

import pytest
import sqlalchemy as sa

from superduper.base.exceptions import InvalidValue, UnknownField

pytestmark = pytest.mark.sql_only('tables made by another program with SQLAlchemy (existing MongoDB collections: '
                                  'test_mongodb.py)')


@pytest.fixture
def orders(db, backend):
    """An ``orders`` table made with plain SQLAlchemy, as another application would."""
    engine = db.databackend.engine
    meta = sa.MetaData()
    # DuckDB has no autoincrement: a sequence default is how its users number rows
    key_args = [sa.Sequence('orders_seq'), sa.text("nextval('orders_seq')")] if backend == 'duckdb' else []
    table = sa.Table(
        'orders',
        meta,
        sa.Column('order_id', sa.Integer, *key_args[:1], server_default=key_args[1] if key_args else None,
                  primary_key=True, autoincrement=True),
        sa.Column('customer', sa.String(100), nullable=False),
        sa.Column('amount', sa.Float),
        sa.Column('status', sa.String(20), server_default='new'),
        sa.Column('placed', sa.DateTime),
    )
    meta.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), {'customer': 'ann', 'amount': 10.5, 'placed': datetime.datetime(2024, 1, 1)})
        conn.execute(
            table.insert(), {'customer': 'bob', 'amount': 99.0, 'status': 'paid', 'placed': datetime.datetime(2024, 1, 2)}
        )
    return table


def columns_of(db, name: str) -> list[str]:
    db.databackend.forget(name)
    return [c.name for c in db.databackend.table(name).columns]


def test_reads_existing_rows_with_their_types(db, orders):
    rows = db['orders'].select().order_by('order_id').execute().tolist()
    assert [r['customer'] for r in rows] == ['ann', 'bob']
    assert rows[0]['status'] == 'new' and rows[1]['status'] == 'paid'
    assert isinstance(rows[0]['order_id'], int)
    assert rows[1]['placed'] == datetime.datetime(2024, 1, 2)
    t = db['orders']
    assert [r['customer'] for r in t.filter(t['amount'] > 50).execute()] == ['bob']


@pytest.mark.requires('generated_keys', reason='the database hands back the keys it makes for inserted rows')
def test_insert_lets_the_database_generate_keys(db, orders):
    before = columns_of(db, 'orders')
    ids = db['orders'].insert([{'customer': 'cy', 'amount': 1.0}, {'customer': 'di', 'amount': 2.0}]).execute()
    assert len(ids) == 2 and all(isinstance(i, int) for i in ids) and ids[0] != ids[1]
    got = db['orders'].get(order_id=ids[1]).execute()
    assert got['customer'] == 'di' and got['status'] == 'new'  # server default applied
    assert columns_of(db, 'orders') == before  # nothing added to the user's table


def test_insert_with_own_keys_and_defaults(db, orders):
    ids = db['orders'].insert([
        {'order_id': 100, 'customer': 'ed', 'status': 'paid'},
        {'order_id': 101, 'customer': 'fay'},
    ]).execute()
    assert ids == [100, 101]
    assert db['orders'].get(order_id=101).execute()['status'] == 'new'
    assert db['orders'].get(order_id=100).execute()['status'] == 'paid'


def test_update_delete_ids(db, orders):
    t = db['orders']
    assert t.filter(t['customer'] == 'ann').update({'status': 'shipped'}).execute() == 1
    assert t.get(customer='ann').execute()['status'] == 'shipped'
    assert sorted(t.ids().execute()) == [1, 2]
    assert t.filter(t['customer'] == 'bob').delete().execute() == 1
    assert t.count().execute() == 1


def test_reflected_types_are_checked(db, orders):
    with pytest.raises(InvalidValue, match=r"table 'orders', field 'amount', row 1: expected a number"):
        db['orders'].insert([{'customer': 'ok', 'amount': 1.0}, {'customer': 'bad', 'amount': 'lots'}]).execute()
    with pytest.raises(UnknownField, match=r"table 'orders' has no field 'colour'"):
        db['orders'].insert([{'customer': 'x', 'colour': 'red'}]).execute()
    assert db['orders'].count().execute() == 2


def test_composite_primary_key(db):
    engine = db.databackend.engine
    meta = sa.MetaData()
    table = sa.Table(
        'pairs',
        meta,
        sa.Column('a', sa.String(10), primary_key=True),
        sa.Column('b', sa.Integer, primary_key=True, autoincrement=False),
        sa.Column('v', sa.String(10)),
    )
    meta.create_all(engine)
    ids = db['pairs'].insert([{'a': 'x', 'b': 1, 'v': 'one'}, {'a': 'x', 'b': 2, 'v': 'two'}]).execute()
    assert ids == [('x', 1), ('x', 2)]
    assert sorted(db['pairs'].ids().execute()) == [('x', 1), ('x', 2)]
    assert table.name == 'pairs'
