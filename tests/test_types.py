"""Field types and DataType modes round-trip on every backend."""

from __future__ import annotations

import datetime
import os
import pickle

import numpy as np
import pytest
import sqlalchemy as sa

from superduper import DataType, LazyArtifact, Schema, Table
from superduper.components.datatype import BLOB_PREFIX, FILE_PREFIX


def raw_value(db, table: str, column: str, row_id: str):
    """The value as stored in the database, read without superduper."""
    if db.databackend.schemaless:  # MongoDB
        return db.databackend.database[table].find_one({'_id': row_id})[column]
    stmt = sa.select(sa.column(column)).select_from(sa.table(table)).where(sa.column('id') == row_id)
    with db.databackend.engine.connect() as conn:
        return conn.execute(stmt).scalar_one()


def test_scalar_types_round_trip(db, pk):
    fields = {'s': 'str', 'i': 'int', 'f': 'float', 'b': 'bool', 'by': 'bytes', 'j': 'json', 'd': 'datetime'}
    db.apply(Table('scalars', fields=fields, folds=False))
    when = datetime.datetime(2024, 2, 29, 13, 45, 10, 250000)
    row = {'s': 'héllo ✓', 'i': 2**40, 'f': -1.25, 'b': False, 'by': b'\x00\xffdata', 'j': {'k': [1, 'two', None]}, 'd': when}
    (row_id,) = db['scalars'].insert([row]).execute()
    assert db['scalars'].get(**{pk: row_id}).execute() == {pk: row_id, **row}
    (empty_id,) = db['scalars'].insert([{}]).execute()
    empty = db['scalars'].get(**{pk: empty_id}).execute()
    assert {k: empty.get(k) for k in fields} == {k: None for k in fields}  # absent from a MongoDB document


def test_numpy_scalars_are_converted(db, pk):
    db.apply(Table('np_scalars', fields={'i': 'int', 'f': 'float', 'b': 'bool'}, folds=False))
    (row_id,) = db['np_scalars'].insert([{'i': np.int64(7), 'f': np.float32(0.5), 'b': np.bool_(True)}]).execute()
    got = db['np_scalars'].get(**{pk: row_id}).execute()
    assert got == {pk: row_id, 'i': 7, 'f': 0.5, 'b': True}
    assert type(got['i']) is int and type(got['b']) is bool


def test_vectors_are_numpy_and_stored_compactly(db, pk):
    db.apply(Table('vecs', fields={'v': 'vector[float32:4]', 'w': 'vector[float64:2]'}))
    ids = db['vecs'].insert([
        {'v': np.arange(4), 'w': [0.1, 0.2]},
        {'v': [1.5, 2.5, 3.5, 4.5]},
    ]).execute()
    first = db['vecs'].get(**{pk: ids[0]}).execute()
    assert first['v'].dtype == np.float32 and first['v'].tolist() == [0, 1, 2, 3]
    assert first['w'].dtype == np.float64 and first['w'].tolist() == [0.1, 0.2]
    assert db['vecs'].get(**{pk: ids[1]}).execute().get('w') is None
    assert len(raw_value(db, 'vecs', 'v', ids[0])) == 16  # 4 float32, nothing else


def pickle_type(encodable: str) -> DataType:
    return DataType(
        'my-artifact',
        encoder=lambda x, info: pickle.dumps(x),
        decoder=lambda x, info: pickle.loads(x),
        encodable=encodable,
    )


def test_encodable_stores_bytes_in_the_row(db, pk):
    db.apply(Table('inline', fields={'x': pickle_type('encodable')}))
    (row_id,) = db['inline'].insert([{'x': {'a': (1, 2)}}]).execute()
    assert db['inline'].get(**{pk: row_id}).execute()['x'] == {'a': (1, 2)}
    assert pickle.loads(raw_value(db, 'inline', 'x', row_id)) == {'a': (1, 2)}


def test_artifact_keeps_a_reference_in_the_row(db, pk):
    db.apply(Table('art', schema=Schema('art-schema', fields={'x': pickle_type('artifact')})))
    (row_id,) = db['art'].insert([{'x': 'This is a test'}]).execute()
    assert db['art'].get(**{pk: row_id}).execute()['x'] == 'This is a test'
    stored = raw_value(db, 'art', 'x', row_id)
    assert stored.startswith(BLOB_PREFIX) and 'This is a test' not in stored
    assert pickle.loads(db.artifact_store.get_bytes(stored[len(BLOB_PREFIX):])) == 'This is a test'


def test_lazy_artifact_loads_on_unpack(db, pk):
    db.apply(Table('lazy', fields={'x': pickle_type('lazy_artifact')}))
    (row_id,) = db['lazy'].insert([{'x': [1, 2, 3]}]).execute()
    row = db['lazy'].get(**{pk: row_id}).execute()
    assert isinstance(row['x'], LazyArtifact) and repr(row['x'].x) == '<EMPTY>'
    assert row.unpack()['x'] == [1, 2, 3]
    assert row['x'].unpack() == [1, 2, 3]


def test_file_mode_copies_files_and_directories(db, tmp_path, pk):
    db.apply(Table('files', fields={'f': DataType('file', encodable='file')}))
    single = tmp_path / 'note.txt'
    single.write_text('a note')
    folder = tmp_path / 'model_dir'
    (folder / 'sub').mkdir(parents=True)
    (folder / 'weights.bin').write_bytes(b'\x01\x02')
    (folder / 'sub' / 'config.json').write_text('{}')
    ids = db['files'].insert([{'f': str(single)}, {'f': str(folder)}]).execute()
    single.unlink()  # the stored copy does not depend on the original
    got_file = db['files'].get(**{pk: ids[0]}).execute()['f']
    got_dir = db['files'].get(**{pk: ids[1]}).execute()['f']
    assert open(got_file).read() == 'a note' and os.path.basename(got_file) == 'note.txt'
    assert open(os.path.join(got_dir, 'weights.bin'), 'rb').read() == b'\x01\x02'
    assert os.path.exists(os.path.join(got_dir, 'sub', 'config.json'))
    assert raw_value(db, 'files', 'f', ids[0]).startswith(FILE_PREFIX)


def test_builtin_pickle_type_is_lazy(db, pk):
    db.apply(Table('objs', fields={'o': 'pickle'}))
    value = {'fn': len, 'data': np.ones(3)}
    (row_id,) = db['objs'].insert([{'o': value}]).execute()
    row = db['objs'].get(**{pk: row_id}).execute()
    assert isinstance(row['o'], LazyArtifact)
    loaded = row.unpack()['o']
    assert loaded['fn'] is len and loaded['data'].tolist() == [1, 1, 1]


def test_builtin_image_type(db, pk):
    from PIL import Image

    db.apply(Table('imgs', fields={'img': 'image'}))
    image = Image.new('RGB', (4, 3), color=(255, 0, 0))
    (row_id,) = db['imgs'].insert([{'img': image}]).execute()
    got = db['imgs'].get(**{pk: row_id}).execute()['img']
    assert got.size == (4, 3) and got.getpixel((0, 0)) == (255, 0, 0)


def test_same_bytes_stored_once(db):
    db.apply(Table('dedupe', fields={'x': pickle_type('artifact')}))
    before = set(db.artifact_store.keys())
    db['dedupe'].insert([{'x': 'same'}, {'x': 'same'}, {'x': 'other'}]).execute()
    assert len(set(db.artifact_store.keys()) - before) == 2


def test_one_argument_encoders_work(db, pk):
    dt = DataType('upper', encoder=lambda s: s.upper().encode(), decoder=lambda b: b.decode())
    db.apply(Table('one_arg', fields={'s': dt}))
    (row_id,) = db['one_arg'].insert([{'s': 'abc'}]).execute()
    assert db['one_arg'].get(**{pk: row_id}).execute()['s'] == 'ABC'


@pytest.mark.skip_backends('mongomock', reason='mongomock keeps its data inside one process')
def test_datatype_survives_a_new_process(db, db_uri, tmp_path, backend, pk):
    """A table's DataType (with lambdas) is stored declaratively and rebuilt by another process."""
    import subprocess
    import sys
    import textwrap

    db.apply(Table('persist', fields={'x': pickle_type('artifact')}))
    (row_id,) = db['persist'].insert([{'x': {'deep': [1, 2]}}]).execute()
    db.close()  # DuckDB lets one process at a time open a file
    script = textwrap.dedent(f"""
        from superduper import superduper
        {'from bson import ObjectId' if pk == '_id' else ''}
        db = superduper({db_uri!r}, artifact_store='filesystem://{tmp_path}/artifacts')
        print(db['persist'].get(**{{{pk!r}: {row_id!r}}}).execute()['x'])
    """)
    out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "{'deep': [1, 2]}"
