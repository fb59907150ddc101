"""Seed 003's examples as written (``mongomock://test``), and the same with ``sqlite://`` in its place."""

from __future__ import annotations

import os
import pickle
import shutil
import sqlite3
import uuid

import pytest

from superduper import DataType, Document, LazyArtifact, Schema, Table, superduper


@pytest.fixture(params=['mongomock://test', 'sqlite://test.db'])
def uri(request):
    yield request.param
    if request.param.startswith('mongomock'):  # the in-process server outlives the test
        from superduper.backends.mongodb.connection import mock_client

        mock_client().drop_database('test')


def run_seed(uri: str, encodable: str):
    db = superduper(uri, artifact_store='filesystem://./artifacts')

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


def raw_x(db, uri: str, my_id: str) -> str:
    """The stored value of ``x``, read without superduper."""
    if uri.startswith('mongomock'):
        return db.databackend.conn.test.my_collection.find_one()['x']  # the seed's native query
    return sqlite3.connect('test.db').execute('SELECT x FROM my_collection WHERE id = ?', (my_id,)).fetchone()[0]


def test_artifact_example(uri):
    db, my_id, r = run_seed(uri, 'artifact')
    assert r['x'] == 'This is a test' and r['id'] == my_id
    if uri.startswith('mongomock'):
        from bson import ObjectId

        assert isinstance(r['_id'], ObjectId) and r['_fold'] in ('train', 'valid')
    raw = raw_x(db, uri, my_id)
    assert raw.startswith('&:blob:') and 'This is a test' not in raw
    with open(f'artifacts/{raw[len("&:blob:"):]}', 'rb') as f:
        assert b'This is a test' in f.read()  # the value lives in the artifact store
    db.close()


def test_lazy_artifact_example(uri):
    db, my_id, r = run_seed(uri, 'lazy_artifact')
    assert isinstance(r['x'], LazyArtifact)
    assert repr(r['x'].x) == '<EMPTY>'
    r = r.unpack()
    assert r['x'] == 'This is a test'
    my_collection = db['my_collection']
    assert db.execute(my_collection.find_one({'id': my_id})).unpack()['x'] == 'This is a test'
    db.close()


def test_file_example(uri, tmp_path):
    os.makedirs('test/sub')
    with open('test/sub/data.txt', 'w') as f:
        f.write('file contents')
    shutil.copytree('test', 'test_copy')  # cp -r test test_copy

    db = superduper(uri, artifact_store='filesystem://./artifacts')
    dt = DataType('my-file', encodable='file')
    schema = Schema(identifier='schema', fields={'x': dt})
    table = Table('my_collection', schema=schema)

    db.apply(table)
    my_id = str(uuid.uuid4())
    db.execute(db['my_collection'].insert_one(Document({'id': my_id, 'x': './test_copy'})))

    got = db.execute(db['my_collection'].find_one({'id': my_id})).unpack()
    assert got['x'].startswith(str(tmp_path / 'artifacts')) and got['x'].endswith('/test_copy')
    with open(os.path.join(got['x'], 'sub', 'data.txt')) as f:
        assert f.read() == 'file contents'
    db.close()
