"""Output types: declared by the model where it knows them, else fixed by the first successful outputs (never by an
empty table or by failures); a VectorIndex can be applied before there is any data; a failed apply leaves nothing."""

from __future__ import annotations

import numpy as np
import pytest

from superduper import ObjectModel, Table, VectorIndex
from superduper.base.exceptions import ComponentError

#: also on a folder queried by the other engines (the shared suite runs ``parquet`` on DuckDB)
pytestmark = pytest.mark.backends('all', 'engines')


def embed(text: str) -> np.ndarray:
    if text.startswith('bad'):
        raise ValueError('rate limited')
    vector = np.zeros(8, dtype=np.float32)
    for ch in text:
        vector[ord(ch) % 8] += 1
    return vector


def fields(db, table: str) -> dict:
    return db.load('Table', table).fields


def test_an_index_on_an_empty_table_is_typed_by_the_first_outputs(db, pk):
    db.apply(Table('notes', fields={'txt': 'str'}))
    index = db.apply(VectorIndex('idx', indexing_listener=ObjectModel('embed', object=embed).to_listener(
        'notes', key='txt')))
    outputs = index.indexing_listener.outputs
    assert outputs not in fields(db, outputs)  # no output yet: no type guessed
    assert db['notes'].like({'txt': 'apple'}, vector_index='idx', n=3).execute().tolist() == []
    db['notes'].insert([{'txt': 'bad first row'}]).execute()  # a failure decides nothing
    assert outputs not in fields(db, outputs) and len(db.failures(index.indexing_listener.identifier)) == 1
    ids = db['notes'].insert([{'txt': 'apple'}, {'txt': 'banana'}]).execute()
    assert fields(db, outputs)[outputs] == 'vector[float32:8]'
    (best,) = db['notes'].like({'txt': 'apple'}, vector_index='idx', n=1).execute().tolist()
    assert best[pk] == ids[0]


def test_first_rows_failing_do_not_fix_the_type(db):
    db.apply(Table('notes', fields={'txt': 'str'}))
    db['notes'].insert([{'txt': f'bad {i}'} for i in range(12)] + [{'txt': 'good'}]).execute()
    listener = db.apply(ObjectModel('embed', object=embed).to_listener('notes', key='txt'))
    assert fields(db, listener.outputs)[listener.outputs] == 'vector[float32:8]'  # not a pickled object
    assert db.databackend.count(listener.outputs) == 1 and len(db.failures('embed')) == 12


def test_a_failed_apply_leaves_nothing_behind(db):
    db.apply(Table('notes', fields={'txt': 'str'}))
    db['notes'].insert([{'txt': 'words'}]).execute()
    before = db.show()
    strings = ObjectModel('shout', object=str.upper).to_listener('notes', key='txt', identifier='shout')
    with pytest.raises(ComponentError, match="listener 'shout' outputs str, not vectors"):
        db.apply(VectorIndex('idx', indexing_listener=strings))
    assert db.show() == before
    assert not [t for t in db.databackend.table_names() if t.startswith('_outputs')]
