"""Artifacts are reference-counted: component records, saved index states and tables' values hold them; a blob
is deleted only when nothing holds it, never while a concurrent apply is storing it, and nothing is orphaned."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from superduper import DataType, ObjectModel, Table, VectorIndex, superduper
from superduper.base.exceptions import InvalidValue
from superduper.runtime.artifact_gc import index_holder

from conftest import plain_sql


def shout(x: str) -> str:
    return x.upper() + '!'


def embed(x: str) -> np.ndarray:
    v = np.zeros(8, dtype=np.float32)
    v[len(x) % 8] = 1.0
    v[hash(x) % 8] += 0.5
    return v


def stored(db) -> set[str]:
    """The digests the artifact store holds."""
    return {key.partition('/')[0] for key in db.artifact_store.keys()}


def held(db) -> set[str]:
    refs = db.metadata.artifact_refs()
    return {d for holder in refs.holders() for d in refs.held_by(holder)}


def to_bytes(x: str) -> bytes:
    return x.encode()


def from_bytes(data: bytes) -> str:
    return data.decode()


def text_blob() -> DataType:
    return DataType('text_blob', encoder=to_bytes, decoder=from_bytes, encodable='artifact')


def test_a_shared_blob_stays_until_its_last_holder_goes(db):
    db.apply(ObjectModel('a', object=shout))
    db.apply(ObjectModel('b', object=shout))  # the same code: the same artifact
    shared = stored(db)
    assert len(shared) == 1
    db.remove('Model', 'a')
    assert stored(db) == shared
    assert db.load('Model', 'b').predict('x') == 'X!'
    db.remove('Model', 'b')
    assert stored(db) == set()
    assert held(db) == set()


def test_values_of_deleted_rows_are_collected_after_the_grace_period(db, backend, pk):
    db.apply(Table('docs', fields={'body': text_blob()}))
    ids = db['docs'].insert([{'body': f'text {i}'} for i in range(6)]).execute()
    assert len(stored(db) - held_by_components(db)) == 6
    t = db['docs']
    t.filter(t[pk].isin(ids[:2])).delete().execute()
    assert db.collect_garbage() == 0  # within the grace period a value may belong to an insert in flight
    assert db.collect_garbage(grace_seconds=0) == 2
    assert sorted(r['body'] for r in t.select().execute()) == [f'text {i}' for i in range(2, 6)]
    t.filter(t[pk] == ids[2]).update({'body': 'replaced'}).execute()
    assert db.collect_garbage(grace_seconds=0) == 1
    assert sorted(r['body'] for r in t.select().execute()) == ['replaced', 'text 3', 'text 4', 'text 5']
    assert stored(db) == held(db)


@pytest.mark.sql_only('rows deleted by another program with plain SQL')
def test_values_of_rows_deleted_with_plain_sql_are_collected(db):
    db.apply(Table('docs', fields={'body': text_blob()}))
    db['docs'].insert([{'body': f'text {i}'} for i in range(4)]).execute()
    plain_sql(db, ('DELETE FROM docs', {}))
    assert db.collect_garbage(grace_seconds=0) == 4
    assert stored(db) == held_by_components(db) == held(db)
    db['docs'].insert([{'body': 'one more'}]).execute()
    db.remove('Table', 'docs', force=True)
    assert stored(db) == held_by_components(db) == held(db)
    assert db.metadata.artifact_refs().holders('table:') == []


def held_by_components(db) -> set[str]:
    refs = db.metadata.artifact_refs()
    return {d for holder in refs.holders('component:') for d in refs.held_by(holder)}


def test_an_insert_that_fails_leaves_no_blob_behind(db):
    strict = DataType('strict', encoder=lambda x: x.encode(), decoder=from_bytes, encodable='artifact')
    db.apply(Table('docs', fields={'body': strict}))
    before = stored(db)
    with pytest.raises(InvalidValue):
        db['docs'].insert([{'body': 'fine'}, {'body': 3}]).execute()  # row 1 cannot be encoded
    assert stored(db) == before


@pytest.mark.sql_only('a duplicate primary key fails the insert in the database')
def test_blobs_of_an_insert_the_database_refused_are_collected(db):
    db.apply(Table('docs', fields={'body': text_blob()}))
    db['docs'].insert([{'id': 'k', 'body': 'first'}]).execute()
    before = stored(db)
    with pytest.raises(Exception):
        db['docs'].insert([{'id': 'k', 'body': 'second'}]).execute()
    assert len(stored(db)) == len(before) + 1
    assert db.collect_garbage(grace_seconds=0) == 1
    assert stored(db) == before
    assert db['docs'].select().execute().tolist()[0]['body'] == 'first'


@pytest.mark.backends('any', 'server', 'mongo')  # two datalayers on one database (DuckDB: one per file)
def test_a_collection_never_takes_a_blob_an_apply_is_storing(db, db_uri, tmp_path):
    """Process A removes model 'a' and deletes its blob while process B applies model 'b' with the same code:
    B's hold waits for A's collection to end, then B writes the bytes again; 'b' loads."""
    settings = dict(artifact_store=f'filesystem://{tmp_path}/artifacts', home=str(tmp_path / 'home'))
    a, b = db, superduper(db_uri, **settings)
    try:
        a.apply(ObjectModel('a', object=shout))
        delete, applied = a.artifact_store.delete, []

        def delete_while_b_applies(key: str) -> None:
            thread = threading.Thread(target=lambda: applied.append(b.apply(ObjectModel('b', object=shout))))
            thread.start()
            thread.join(0.5)  # B is held up by A's collection, which is under way
            assert not applied
            delete(key)
            threads.append(thread)

        threads: list[threading.Thread] = []
        a.artifact_store.delete = delete_while_b_applies
        a.remove('Model', 'a')
        threads[0].join(10)
        assert applied
        fresh = superduper(db_uri, **settings)
        try:
            assert fresh.load('Model', 'b').predict('x') == 'X!'
        finally:
            fresh.close()
    finally:
        b.close()


def test_identical_indexes_share_their_saved_state_safely(db):
    db.apply(Table('docs', fields={'txt': 'str'}))
    db['docs'].insert([{'txt': f'doc {i}'} for i in range(20)]).execute()
    listener = ObjectModel('emb', object=embed).to_listener('docs', key='txt')
    # in process, so that they save state (where the database stores vectors natively, 'auto' saves none)
    db.apply(VectorIndex('one', indexing_listener=listener, searcher='exact'))
    db.apply(VectorIndex('two', indexing_listener=listener, searcher='exact'))
    for name in ('one', 'two'):
        db.vector_indexes.save(db.vector_indexes.get(name))
    states = {db.metadata.index_state(db.load('VectorIndex', n).uuid) for n in ('one', 'two')}
    assert len(states) == 1  # the same vectors: the same files
    db.remove('VectorIndex', 'one')
    state = states.pop()
    assert db.artifact_store.exists(state)
    for f in db.vector_indexes.state_files(state):
        assert db.artifact_store.exists(f.partition('/')[0])
    db.remove('VectorIndex', 'two')
    assert not db.artifact_store.exists(state)


def test_two_processes_saving_one_index_orphan_no_state(db):
    """A saver that lost the race (another saved after it read the previous state) releases its own state."""
    db.apply(Table('docs', fields={'txt': 'str'}))
    db['docs'].insert([{'txt': f'doc {i}'} for i in range(20)]).execute()
    db.apply(VectorIndex('idx', indexing_listener=ObjectModel('emb', object=embed).to_listener('docs', key='txt'),
                         searcher='exact'))  # in process: it saves state
    indexes = db.vector_indexes
    loaded = indexes.get('idx')
    uuid = loaded.component.uuid
    indexes.save(loaded)
    first = db.metadata.index_state(uuid)
    db['docs'].insert([{'txt': 'another'}]).execute()
    indexes.get('idx')
    stale_read = db.metadata.index_state
    other = {}

    def previous_then_another_saves(index_uuid: str):
        found = stale_read(index_uuid)
        if not other:  # another process saves a state of its own right after this one read the previous state
            data = b'{"saved by": "another process"}'
            other['key'] = hashlib.sha256(data).hexdigest()
            db.metadata.artifact_refs().hold(index_holder(uuid, other['key']), [other['key']])
            db.artifact_store.put_bytes(data)
            assert db.metadata.replace_index_state(uuid, found, other['key'])
        return found

    db.metadata.index_state = previous_then_another_saves
    try:
        indexes.save(loaded)
    finally:
        del db.metadata.index_state
    assert db.metadata.index_state(uuid) == other['key']
    refs = db.metadata.artifact_refs()
    assert set(refs.holders(f'index:{uuid}:')) == {index_holder(uuid, first), index_holder(uuid, other['key'])}
    # the loser's own state went; the first state stays held until the winner replaces it (as it would)
    assert db.collect_garbage(grace_seconds=0) >= 1
    assert refs.holders(f'index:{uuid}:') == [index_holder(uuid, other['key'])]


def test_collection_after_an_apply_that_died_between_hold_and_record(db):
    refs = db.metadata.artifact_refs()
    data = b'left by a process killed mid-apply'
    refs.hold('component:0123456789abcdef:dead', [hashlib.sha256(data).hexdigest()])
    db.artifact_store.put_bytes(data)
    time.sleep(0.01)
    assert db.collect_garbage(grace_seconds=0) == 1
    assert refs.holders('component:0123456789abcdef') == []


KILLED = '''
import sys
from superduper import ObjectModel, superduper
db = superduper(sys.argv[1])
step = sys.argv[2]
if step == 'insert':
    db['docs'].insert([{'body': f'second {i}'.encode()} for i in range(5)]).execute()
elif step == 'apply':
    db.apply(ObjectModel('dies', object=str.title))
elif step == 'remove':
    db.remove('Model', 'gone')
'''


@pytest.mark.backends('any', 'server')
@pytest.mark.parametrize('step, fault', [('insert', 'holding_artifacts.table'),
                                         ('apply', 'holding_artifacts.component'),
                                         ('remove', 'collecting_artifact')])
def test_a_process_killed_holding_or_collecting_loses_no_artifact(db, db_uri, env, step, fault):
    """SIGKILL after holding artifacts (bytes not written), or after deleting one (its collection not committed):
    no row or component loses an artifact, and a sweep leaves exactly what is held (no orphan)."""
    db.apply(Table('docs', fields={'body': DataType('raw', encodable='artifact')}))
    db['docs'].insert([{'body': f'first {i}'.encode()} for i in range(5)]).execute()
    db.apply(ObjectModel('gone', object=str.upper))
    died = subprocess.run([sys.executable, '-c', KILLED, db_uri, step], env={**env, 'SUPERDUPER_FAULT': fault},
                          timeout=120)
    assert died.returncode == -signal.SIGKILL
    if step == 'remove':  # the same code applied again: its bytes are written again under the collection's lock
        db.apply(ObjectModel('back', object=str.upper))
        assert db.load('Model', 'back').predict('x') == 'X'
    db.collect_garbage(grace_seconds=0)
    bodies = sorted(r['body'] for r in db['docs'].select().execute())
    lost = [b for b in bodies if b is None]
    assert bodies == sorted(f'first {i}'.encode() for i in range(5)) and not lost
    assert stored(db) == held(db)  # nothing orphaned, nothing held without its bytes
    assert all(db.artifact_store.exists(d) for d in held(db))
