"""Changing a vector index's model without downtime: applying a new version of an indexed listener backfills the new
outputs while searches use the old index, then switches at once; the old outputs go. The two models order the rows
in opposite ways, so every result set says which index answered it, and a half-built one would answer neither."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from conftest import wait_at_gate, wait_for
from superduper import ObjectModel, Table, VectorIndex, superduper

N = 40
OLD = [{'r0', 'r1', 'r2'}]  # nearest to 'q' by the old model: the first rows
NEW = [{f'r{N - 1}', f'r{N - 2}', f'r{N - 3}'}]  # by the new model: the last rows


def _angle(text: str) -> float:
    return 0.0 if text == 'q' else (int(text[1:]) + 1) * 0.02


def old_embed(text: str) -> np.ndarray:
    a = _angle(text)
    return np.array([math.cos(a), math.sin(a), 0.0], dtype=np.float32)


def new_embed(text: str) -> np.ndarray:
    """Opposite order (the last rows nearest to 'q'); waits at the gate on 'r0' when one is set."""
    gate = os.environ.get('SD_TEST_GATE')
    if gate and text == 'r0':
        open(gate + '.entered', 'w').close()
        while os.path.exists(gate):
            threading.Event().wait(0.01)
    a = 0.0 if text == 'q' else (N - int(text[1:])) * 0.02
    return np.array([0.0, math.cos(a), math.sin(a)], dtype=np.float32)


def index_of(embed) -> VectorIndex:
    model = ObjectModel('embedder', object=embed, datatype='vector[float32:3]')
    return VectorIndex('idx', indexing_listener=model.to_listener('docs', key='txt', identifier='embed'))


def setup(db, pk) -> VectorIndex:
    db.apply(Table('docs', fields={'txt': 'str'}, folds=False))
    db['docs'].insert([{pk: f'r{i}', 'txt': f'r{i}'} for i in range(N)]).execute()
    return db.apply(index_of(old_embed))


def nearest(db) -> set:
    pk = db.table_info('docs').primary_key[0]
    return {r[pk] for r in db['docs'].like({'txt': 'q'}, vector_index='idx', n=3).execute()}


def outputs_tables(db) -> list[str]:
    return [t for t in db.databackend.table_names() if t.startswith('_outputs__embed')]


@pytest.mark.backends('sqlite', 'postgresql', 'mongomock', 'pgvector')
def test_a_model_switch_keeps_searches_answering(db, db_uri, pk, tmp_path, monkeypatch):
    old = setup(db, pk)
    assert nearest(db) in OLD
    old_outputs = old.indexing_listener.outputs
    other = superduper(db_uri, artifact_store=f'filesystem://{tmp_path}/artifacts', progress=False,
                      poll_interval=0.01)  # another process's view: it reads the metadata
    assert nearest(other) in OLD
    gate = tmp_path / 'gate'
    monkeypatch.setenv('SD_TEST_GATE', str(gate))
    gate.touch()
    stop, failed, seen = threading.Event(), [], []

    def search() -> None:
        while not stop.is_set():
            try:
                seen.append(nearest(db))
            except Exception as e:  # counted: must stay 0
                failed.append(e)

    searcher = threading.Thread(target=search)
    searcher.start()
    applying = threading.Thread(target=db.apply, args=(index_of(new_embed),))
    applying.start()
    try:
        wait_at_gate(gate, applying)
        during = next(r for r in db.status() if r['listener'] == 'embed')
        assert 'backfilling' in during['switch'] and 'searches use v0' in during['switch']
        assert nearest(db) in OLD and nearest(other) in OLD
        gate.unlink()
        applying.join(60)
        assert not applying.is_alive()
    finally:
        if gate.exists():
            gate.unlink()
        stop.set()
        searcher.join(60)
    assert failed == []
    assert seen and all(s in OLD + NEW for s in seen)  # every result set from one complete index
    assert nearest(db) in NEW
    after = next(r for r in db.status() if r['listener'] == 'embed')
    assert 'switched from v0 to v1' in after['switch'] and after['done'] == N
    assert old_outputs not in db.databackend.table_names() and len(outputs_tables(db)) == 1
    assert db.show('VectorIndex', 'idx') == [1]
    follows_the_switch(other)
    other.close()


@pytest.mark.backends('sqlite', 'postgresql', 'mongomock')
def test_rows_written_during_a_switch_reach_both_versions(db, pk, tmp_path, monkeypatch):
    setup(db, pk)
    gate = tmp_path / 'gate'
    monkeypatch.setenv('SD_TEST_GATE', str(gate))
    gate.touch()
    applying = threading.Thread(target=db.apply, args=(index_of(new_embed),))
    applying.start()
    try:
        wait_at_gate(gate, applying)
        followers = [r['version'] for r in db.listening.records(fresh=True)['docs']]
        assert sorted(followers) == [0, 1]  # the old index stays current until the switch
        # computed once the new model is free again (it is busy with the backfill here)
        writer = threading.Thread(target=db['docs'].insert([{pk: 'r-1', 'txt': 'r-1'}]).execute)
        writer.start()
    finally:
        gate.unlink()
        applying.join(60)
    writer.join(60)
    assert nearest(db) in NEW
    assert db['docs'].like({'txt': 'r-1'}, vector_index='idx', n=1).execute().tolist()[0][pk] == 'r-1'
    assert [r['version'] for r in db.listening.records(fresh=True)['docs']] == [1]


CRASH = """
import math, sys
import numpy as np
from superduper import ObjectModel, VectorIndex, superduper
N = {n}
def new_embed(text):
    a = 0.0 if text == 'q' else (N - int(text[1:])) * 0.02
    return np.array([0.0, math.cos(a), math.sin(a)], dtype=np.float32)
db = superduper({uri!r}, progress=False)
model = ObjectModel('embedder', object=new_embed, datatype='vector[float32:3]')
db.apply(VectorIndex('idx', indexing_listener=model.to_listener('docs', key='txt', identifier='embed')))
"""


@pytest.mark.backends('sqlite', 'postgresql')
@pytest.mark.parametrize('point', ['after_claim', 'after_metadata_commit.VectorIndex'])
def test_a_crash_mid_switch_leaves_the_old_index_serving(db, db_uri, pk, env, tmp_path, point):
    """Killed in the backfill, the apply is run again; killed once the new version is stored, a worker finishes."""
    from superduper.runtime.worker import work_round

    setup(db, pk)
    db.listening.consumer.stop()  # this process must not take the backfill the other one is to be killed holding
    crash(db_uri, env, tmp_path, point)
    assert nearest(db) in OLD
    assert 'switched' not in switch_of(db)
    if point == 'after_claim':
        crash(db_uri, env, tmp_path, None)
    else:
        wait_for(lambda: work_round(db, 1000) == 0 and 'switched' in switch_of(db))
    assert 'switched' in switch_of(db)
    follows_the_switch(db)  # switched by another process: this one reopens the index within a poll interval
    assert len(outputs_tables(db)) == 1 and db.show('VectorIndex', 'idx') == [1]


@pytest.mark.backends('sqlite')
def test_removing_the_new_version_mid_switch_cancels_it(db, db_uri, pk, env, tmp_path):
    from superduper.runtime.worker import work_round

    setup(db, pk)
    crash(db_uri, env, tmp_path, 'after_metadata_commit.VectorIndex')  # v1 stored, not switched to
    db.remove('VectorIndex', 'idx', version=1)
    assert 'cancelled' in switch_of(db)
    work_round(db, 1000)
    assert nearest(db) in OLD and db.show('VectorIndex', 'idx') == [0]


def crash(db_uri: str, env: dict, tmp_path, point: str | None) -> None:
    """Apply the new version in another process, killed at ``point`` (``None``: not killed)."""
    fault = {'SUPERDUPER_FAULT': point} if point else {}
    path = os.pathsep.join([os.path.dirname(__file__), env.get('PYTHONPATH', '')])  # the old model's module
    done = subprocess.run([sys.executable, '-c', textwrap.dedent(CRASH.format(n=N, uri=db_uri))], timeout=120,
                          env={**env, **fault, 'PYTHONPATH': path, 'SUPERDUPER_HOME': str(tmp_path / 'home')})
    assert done.returncode == (-9 if point else 0)


def follows_the_switch(db) -> None:
    """A datalayer that did not switch the index itself searches the new one within its poll interval, every
    answer meanwhile from one complete index."""
    def switched() -> bool:
        found = nearest(db)
        assert found in OLD + NEW
        return found in NEW

    wait_for(switched, 30)


def switch_of(db) -> str:
    return next(r for r in db.status() if r['listener'] == 'embed')['switch'] or ''


@pytest.mark.backends('sqlite', 'postgresql', 'mongomock', 'pgvector')
def test_pointing_an_index_at_another_listener_switches_it(db, pk):
    old = setup(db, pk)
    model = ObjectModel('other-embedder', object=new_embed, datatype='vector[float32:3]')
    db.apply(VectorIndex('idx', indexing_listener=model.to_listener('docs', key='txt', identifier='embed2')))
    assert nearest(db) in NEW
    row = next(r for r in db.status() if r['listener'] == 'embed2')
    assert 'switched from v0 to v1' in row['switch']
    assert 'embed' not in db.show('Listener') and old.indexing_listener.outputs not in db.databackend.table_names()


@pytest.mark.backends('sqlite')
def test_a_failed_apply_of_a_new_version_leaves_the_old_index(db, pk):
    from superduper.base.exceptions import UnknownField

    setup(db, pk)
    model = ObjectModel('embedder', object=new_embed, datatype='vector[float32:3]')
    with pytest.raises(UnknownField):  # refused after the switch began, before anything of it was stored
        db.apply(VectorIndex('idx', indexing_listener=model.to_listener('docs', key='nope', identifier='embed')))
    assert nearest(db) in OLD and db.show('VectorIndex', 'idx') == [0]
    assert 'apply it again' in switch_of(db)
    db.apply(index_of(new_embed))
    assert nearest(db) in NEW and 'switched from v0 to v1' in switch_of(db)
