"""Adopted embeddings: vectors a table already holds become a listener's outputs without the model running on those
rows (``Listener(adopt=...)``); the model encodes queries and computes rows that have none."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import plain_sql, wait_for
from superduper import ObjectModel, Table, VectorIndex
from superduper.base.exceptions import InvalidValue, UnknownField, UnknownTable

DIM = 8
CALLS: list[str] = []


def embed(text: str) -> np.ndarray:
    CALLS.append(text)
    return vector(text)


def vector(text: str) -> np.ndarray:
    return np.random.default_rng(sum(map(ord, text)) * 7919 + len(text)).normal(size=DIM).astype(np.float32)


def model(**kwargs):
    return ObjectModel('embed', object=embed, datatype=f'vector[float32:{DIM}]', **kwargs)


def pk(db, table: str = 'docs') -> str:
    return db.table_info(table).primary_key[0]  # 'id', or '_id' on MongoDB


def docs(db, rows: int = 30, with_vectors: bool = True) -> None:
    db.apply(Table('docs', fields={'txt': 'str', 'emb': f'vector[float32:{DIM}]'}, folds=False))
    db['docs'].insert([{pk(db): f'd{i}', 'txt': f'doc {i}', **({'emb': vector(f'doc {i}')} if with_vectors else {})}
                       for i in range(rows)]).execute()


def nearest(db, text: str, n: int = 1) -> list[str]:
    return [r[pk(db)] for r in db['docs'].like({'txt': text}, vector_index='idx', n=n).execute()]


@pytest.mark.backends('all', 'pgvector')
def test_adopted_vectors_are_searchable_at_once_and_new_rows_are_computed(db):
    docs(db)
    CALLS.clear()
    listener = model().to_listener('docs', key='txt', adopt='emb')
    db.apply(VectorIndex('idx', indexing_listener=listener))
    assert CALLS == []  # no existing row went through the model
    outputs = {r['_source']: r[listener.outputs] for r in db[listener.outputs].select().execute()}
    assert len(outputs) == 30 and np.allclose(outputs['d4'], vector('doc 4'))
    assert nearest(db, 'doc 7') == ['d7'] and CALLS == ['doc 7']  # the model encodes the query
    CALLS.clear()
    db['docs'].insert([{pk(db): 'new', 'txt': 'a new row'}]).execute()
    assert CALLS == ['a new row']  # no vector given: computed by the model
    assert nearest(db, 'a new row') == ['new']


@pytest.mark.backends('sqlite', 'postgresql', 'duckdb', 'mongomock')
def test_vectors_adopted_from_another_table_keyed_by_the_same_ids(db):
    docs(db, with_vectors=False)
    db.apply(Table('vectors', fields={'v': f'vector[float32:{DIM}]'}, folds=False))
    db['vectors'].insert([{pk(db, 'vectors'): f'd{i}', 'v': vector(f'doc {i}')} for i in range(0, 30, 2)]).execute()
    CALLS.clear()
    listener = model().to_listener('docs', key='txt', adopt=('vectors', 'v'))
    db.apply(VectorIndex('idx', indexing_listener=listener))
    assert sorted(CALLS) == sorted(f'doc {i}' for i in range(1, 30, 2))  # only the rows with no vector there
    assert nearest(db, 'doc 4') == ['d4'] and nearest(db, 'doc 5') == ['d5']


@pytest.mark.backends('sql')
@pytest.mark.requires('follows_other_writers', reason='writes by other clients reach listeners')
def test_rows_inserted_with_plain_sql_are_computed_by_the_model(db):
    docs(db)
    listener = model().to_listener('docs', key='txt', adopt='emb')
    db.apply(VectorIndex('idx', indexing_listener=listener))
    CALLS.clear()
    plain_sql(db, ("INSERT INTO docs (id, txt) VALUES ('sql', 'from plain sql')", {}))
    wait_for(lambda: 'sql' in {r['_source'] for r in db[listener.outputs].select().execute()})
    assert CALLS == ['from plain sql']
    assert nearest(db, 'from plain sql') == ['sql']


@pytest.mark.backends('sqlite', 'postgresql', 'mongomock')
def test_bad_adopted_vectors_are_refused_naming_the_column_and_nothing_is_stored(db):
    docs(db, rows=5)
    db.apply(Table('short', fields={'v': 'vector[float32:4]'}, folds=False))
    db['short'].insert([{'id': f'd{i}', 'v': np.ones(4, dtype=np.float32)} for i in range(5)]).execute()
    tables = set(db.show('Table'))
    cases = [('nope', UnknownField, 'docs.nope'), ('txt', InvalidValue, 'docs.txt'),
             (('short', 'v'), InvalidValue, 'short.v'), (('missing', 'v'), UnknownTable, 'missing.v')]
    CALLS.clear()
    for adopt, error, name in cases:
        with pytest.raises(error, match=name.replace('.', r'\.')):
            db.apply(VectorIndex('idx', indexing_listener=model().to_listener('docs', key='txt', adopt=adopt)))
    assert db.show('Listener') == [] and db.show('VectorIndex') == [] and set(db.show('Table')) == tables
    assert CALLS == []
