"""Field types and DataType modes round-trip on every backend."""

from __future__ import annotations

import datetime
import os
import pickle

import re

import numpy as np
import pytest
import sqlalchemy as sa

from conftest import emulator_gap
from superduper import DataType, LazyArtifact, ObjectModel, Schema, Table
from superduper.base.exceptions import ConfigError, InvalidValue
from superduper.components.datatype import BLOB_PREFIX, FILE_PREFIX

#: also on a folder queried by the other engines (the shared suite runs ``parquet`` on DuckDB)
pytestmark = pytest.mark.backends('all', 'engines')


def raw_value(db, table: str, column: str, row_id: str):
    """The value as stored in the database, read without superduper."""
    if db.databackend.schemaless:  # MongoDB
        return db.databackend.database[table].find_one({'_id': row_id})[column]
    storage = getattr(db.databackend, 'storage', None)
    if storage is not None:  # a folder of Delta tables (read with deltalake), or in-memory Arrow tables
        if hasattr(storage, 'delta_path'):
            from deltalake import DeltaTable

            rows = DeltaTable(storage.delta_path(table)).to_pyarrow_table().to_pylist()
        else:
            rows = storage.source(table).dataset.to_table().to_pylist()
        return next(r[column] for r in rows if r['id'] == row_id)
    stmt = sa.select(sa.column(column)).select_from(sa.table(table)).where(sa.column('id') == row_id)
    with db.databackend.engine.connect() as conn:
        return conn.execute(stmt).scalar_one()


def test_scalar_types_round_trip(db, pk, backend, request):
    emulator_gap(request, backend, 'null_timestamp')
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
    stored = raw_value(db, 'vecs', 'v', ids[0])
    if isinstance(stored, (bytes, bytearray, memoryview)):
        assert not db.databackend.native_vectors('vecs', 'v')
        assert len(stored) == 16  # 4 float32, nothing else
    else:  # an array type of the database's (pgvector's, a folder's Arrow lists): 4 numbers
        assert list(stored) == [0, 1, 2, 3]


def test_arrays_keep_their_shape(db, pk):
    db.apply(Table('arrays', fields={'a': 'array[float32:2x3]', 'm': 'array[int16:2x2x2]'}))
    ids = db['arrays'].insert([
        {'a': np.arange(6).reshape(2, 3), 'm': np.full((2, 2, 2), -7)},
        {'a': [[0.5, 1, 2], [3, 4, 5]]},
    ]).execute()
    rows = db['arrays'].select().execute().tolist()
    by_id = {r[pk]: r for r in rows}
    assert by_id[ids[0]]['a'].shape == (2, 3) and by_id[ids[0]]['a'].dtype == np.float32
    assert by_id[ids[0]]['a'].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert by_id[ids[0]]['m'].dtype == np.int16 and (by_id[ids[0]]['m'] == -7).all()
    assert by_id[ids[1]]['a'][0, 0] == 0.5 and by_id[ids[1]].get('m') is None
    by_id[ids[0]]['a'][0, 0] = 9  # read-back arrays are writable
    assert len(raw_value(db, 'arrays', 'a', ids[0])) == 24


def test_tensors_come_back_as_torch(db, pk):
    torch = pytest.importorskip('torch', reason='tensor fields need the torch extra')
    db.apply(Table('tensors', fields={'t': 'tensor[float32:2x2]'}))
    weights = torch.eye(2, requires_grad=True) * 3  # a tensor with a graph is detached on the way in
    (row_id,) = db['tensors'].insert([{'t': weights}]).execute()
    got = db['tensors'].get(**{pk: row_id}).execute()['t']
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    assert torch.equal(got, torch.eye(2) * 3)


def test_audio_round_trips_as_wav(db, pk):
    import io
    import wave

    db.apply(Table('clips', fields={'clip': 'audio'}))
    t = np.linspace(0, 1, 8000, dtype=np.float32)
    tone = (0.8 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    stereo = np.stack([np.arange(-500, 500, dtype=np.int16), np.arange(500, -500, -1, dtype=np.int16)], axis=1)
    buffer = io.BytesIO()
    with wave.open(buffer, 'wb') as wav:
        wav.setnchannels(1), wav.setsampwidth(2), wav.setframerate(22050)
        wav.writeframes(np.zeros(100, dtype='<i2').tobytes())
    ids = db['clips'].insert([
        {'clip': {'array': tone, 'sampling_rate': 8000}},
        {'clip': (stereo, 44100)},
        {'clip': buffer.getvalue()},
    ]).execute()
    got = {r[pk]: r['clip'] for r in db['clips'].select().execute().tolist()}
    assert got[ids[0]]['sampling_rate'] == 8000 and got[ids[0]]['array'].dtype == np.float32
    assert np.abs(got[ids[0]]['array'] - tone).max() < 1e-9
    assert got[ids[1]]['sampling_rate'] == 44100 and got[ids[1]]['array'].shape == (1000, 2)
    assert (np.round(got[ids[1]]['array'] * 32767).astype(np.int16) == stereo).all()  # int16 kept exactly
    assert got[ids[2]]['sampling_rate'] == 22050 and got[ids[2]]['array'].shape == (100,)


def test_bad_arrays_and_audio_name_the_row(db):
    db.apply(Table('shaped', fields={'a': 'array[float32:2x3]', 'clip': 'audio'}))
    db['shaped'].insert([{'a': np.zeros((2, 3))}]).execute()
    with pytest.raises(InvalidValue, match=r"table 'shaped', field 'a', row 1: expected an array of shape \(2, 3\).*got shape \(3, 2\)"):
        db['shaped'].insert([{'a': np.zeros((2, 3))}, {'a': np.zeros((3, 2))}]).execute()
    with pytest.raises(InvalidValue, match=r"table 'shaped', field 'clip', row 0: .*\[-1, 1\]"):
        db['shaped'].insert([{'clip': (np.array([0.5, 2.0]), 16000)}]).execute()
    with pytest.raises(InvalidValue, match=r"field 'clip', row 0: .*Error"):
        db['shaped'].insert([{'clip': b'not a wav file'}]).execute()
    assert db['shaped'].count().execute() == 1


@pytest.mark.parametrize('spec', ['vector[2x3]', 'array[float32:0x3]', 'array[complex64:2]', 'tensor[]'])
def test_malformed_array_types_are_refused(sqlite_db, spec):
    with pytest.raises(ConfigError, match=re.escape(repr(spec))):
        sqlite_db.apply(Table('bad', fields={'a': spec}))
    assert 'bad' not in sqlite_db.show('Table')


def test_model_outputs_of_any_shape_get_a_type(db):
    db.apply(Table('inputs', fields={'x': 'float'}))
    db['inputs'].insert([{'x': 1.0}, {'x': 2.0}]).execute()
    model = ObjectModel('outer', object=lambda x: np.full((2, 2), x, dtype=np.float32))
    listener = db.apply(model.to_listener('inputs', key='x'))
    assert db.load('Table', listener.outputs).fields[listener.outputs] == 'array[float32:2x2]'
    outputs = [r[listener.outputs] for r in db['inputs'].select().outputs(listener.predict_id).execute().tolist()]
    assert sorted(float(o[1, 1]) for o in outputs) == [1.0, 2.0]


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


@pytest.mark.requires(persistent=True, reason='another process opens the database after this one')
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
