"""Seed 003's example, as written, with ``sqlite://`` in place of ``mongomock://``."""

from __future__ import annotations

import pickle
import sqlite3
import uuid

from superduper import DataType, Document, LazyArtifact, Schema, Table, superduper


def run_seed(encodable: str):
    db = superduper('sqlite://test.db', artifact_store='filesystem://./artifacts')

    dt = DataType(
        'my-artifact',
        encoder=lambda x, info: pickle.dumps(x),
        decoder=lambda x, info: pickle.loads(x),
        encodable=encodable,
    )

    schema = Schema(identifier='schema', fields={'x': dt})
    table = Table('my_collection', schema=schema)

    db.apply(table)

    my_id = str(uuid.uuid4())

    db['my_collection'].insert_one(Document({'id': my_id, 'x': 'This is a test'})).execute()
    r = db.execute(db['my_collection'].find_one({'id': my_id}))
    return db, my_id, r


def test_artifact_example():
    db, my_id, r = run_seed('artifact')
    assert r['x'] == 'This is a test'
    raw = sqlite3.connect('test.db').execute('SELECT x FROM my_collection WHERE id = ?', (my_id,)).fetchone()[0]
    assert raw.startswith('&:blob:') and 'This is a test' not in raw
    with open(f'artifacts/{raw[len("&:blob:"):]}', 'rb') as f:
        assert b'This is a test' in f.read()  # the value lives in the artifact store
    db.close()


def test_lazy_artifact_example():
    db, my_id, r = run_seed('lazy_artifact')
    assert isinstance(r['x'], LazyArtifact)
    assert repr(r['x'].x) == '<EMPTY>'
    r = r.unpack()
    assert r['x'] == 'This is a test'
    db.close()
