"""One truth across processes (real processes, real servers): an application's searches follow the outputs workers
write, components applied or removed by another process are seen, and an application with ``outputs='async'``
loads no model."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest

from superduper import ObjectModel, Table, VectorIndex, superduper
from superduper.base.exceptions import ConfigError, ComponentError, NotFound

from conftest import pending_changes, plain_sql, wait_for

CLI = [sys.executable, '-m', 'superduper.cli']
POLL = 0.2
DIM = 16

#: the embedding every process computes: a fixed random unit vector per text (written out for the scripts)
EMBED_SOURCE = '''
def embed(text):
    import hashlib
    import numpy as np
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], 'little')
    v = np.random.default_rng(seed).normal(size=16).astype('float32')
    return v / np.linalg.norm(v)
'''


def make_embed():
    scope: dict = {}
    exec(EMBED_SOURCE, scope)
    return scope['embed']


embed = make_embed()


pytestmark = [pytest.mark.sql_only('other clients write with plain SQL'),
              pytest.mark.requires(change_capture='triggers', shared=True,
                                   reason='workers and other clients write to the database at the same time')]


def connect(uri: str, tmp_path, **overrides):
    return superduper(uri, artifact_store=f'filesystem://{tmp_path}/artifacts', progress=False,
                      poll_interval=POLL, **overrides)


def write_elsewhere(app, live: dict, inserts: range, updates: range, deletes: range) -> None:
    """Another program inserts, updates and deletes rows ``d<i>`` of ``docs`` with plain SQL; ``live`` follows."""
    for i in inserts:
        plain_sql(app, ('INSERT INTO docs (id, txt) VALUES (:id, :txt)', {'id': f'd{i}', 'txt': f'doc {i}'}))
        live[f'd{i}'] = f'doc {i}'
    for i in updates:
        plain_sql(app, ('UPDATE docs SET txt = :txt WHERE id = :id', {'id': f'd{i}', 'txt': f'changed {i}'}))
        live[f'd{i}'] = f'changed {i}'
    for i in deletes:
        plain_sql(app, ('DELETE FROM docs WHERE id = :id', {'id': f'd{i}'}))
        del live[f'd{i}']


def embedding_index(identifier: str = 'idx') -> VectorIndex:
    model = ObjectModel('emb', object=make_embed(), datatype=f'vector[float32:{DIM}]')
    return VectorIndex(identifier, indexing_listener=model.to_listener('docs', key='txt', identifier='emb'))


def stale_results(db, rows: dict[str, str]) -> int:
    """Searches that do not find the live rows as the database holds them: each row's own text must find it first,
    and a search for all of them must return exactly the live rows (no deleted row still indexed)."""
    stale = 0
    for key, txt in rows.items():
        best = db['docs'].like(embed(txt), vector_index='idx', n=1).execute().tolist()
        stale += not best or best[0]['id'] != key
    everything = db['docs'].like(embed('anything'), vector_index='idx', n=len(rows) + 10).execute().tolist()
    stale += abs(len(everything) - len(rows))
    return stale


def test_searches_follow_outputs_written_by_workers_and_other_clients(db_uri, tmp_path, env):
    app = connect(db_uri, tmp_path, outputs='async')
    app.apply(Table('docs', fields={'txt': 'str'}, folds=False))
    app['docs'].insert([{'id': f'd{i}', 'txt': f'doc {i}'} for i in range(40)]).execute()
    app.apply(embedding_index())
    live = {f'd{i}': f'doc {i}' for i in range(40)}
    assert stale_results(app, live) == 0

    workers = [subprocess.Popen(CLI + ['start', db_uri, '--interval', '0.1'], env=env) for _ in range(2)]
    errors: list = []
    stop = threading.Event()

    def search_all_along() -> None:  # the application searches while the workers compute
        while not stop.is_set():
            try:
                app['docs'].like(embed('doc 3'), vector_index='idx', n=5).execute().tolist()
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

    searcher = threading.Thread(target=search_all_along)
    searcher.start()
    try:
        write_elsewhere(app, live, inserts=range(40, 70), updates=range(0, 10), deletes=range(10, 20))
        app['docs'].insert([{'id': f'a{i}', 'txt': f'api {i}'} for i in range(10)]).execute()  # only recorded
        live.update({f'a{i}': f'api {i}' for i in range(10)})
        wait_for(lambda: pending_changes(app) == 0, 120)
    finally:
        stop.set()
        searcher.join()
        for worker in workers:
            worker.terminate()
            worker.wait(30)
    assert errors == []
    time.sleep(POLL)  # the next search looks at the database
    assert stale_results(app, live) == 0
    assert not any(c.type_id == 'Model' for c in _models_loaded_by_writes(app))
    app.close()


def _models_loaded_by_writes(db) -> list:
    """Components the datalayer loaded for its listeners (a writer with ``outputs='async'`` loads none)."""
    return list(db.listening._loaded.values())


def test_components_applied_and_removed_elsewhere_are_seen(db_uri, tmp_path, env):
    app = connect(db_uri, tmp_path)
    app.apply(Table('docs', fields={'txt': 'str'}, folds=False))
    app['docs'].insert([{'id': f'd{i}', 'txt': f'doc {i}'} for i in range(10)]).execute()
    other = EMBED_SOURCE + textwrap.dedent(f"""
        import sys
        from superduper import superduper, ObjectModel, VectorIndex
        db = superduper({db_uri!r}, progress=False)
        if sys.argv[1] == 'apply':
            model = ObjectModel('emb', object=embed, datatype='vector[float32:{DIM}]')
            db.apply(VectorIndex('idx', indexing_listener=model.to_listener('docs', key='txt', identifier='emb')))
        else:
            db.remove('VectorIndex', 'idx')
            db.remove('Listener', 'emb', force=True)
        db.close()
    """)
    assert app.listening.followers('docs') == []
    subprocess.run([sys.executable, '-c', other, 'apply'], env=env, check=True, timeout=300)
    time.sleep(POLL)
    app['docs'].insert([{'id': 'new', 'txt': 'arrived after the apply'}]).execute()
    listener = app.load('Listener', 'emb')
    assert app['docs'].select().outputs(listener.predict_id).get(id='new').execute()[listener.outputs] is not None
    (best,) = app['docs'].like(embed('arrived after the apply'), vector_index='idx', n=1).execute().tolist()
    assert best['id'] == 'new'

    subprocess.run([sys.executable, '-c', other, 'remove'], env=env, check=True, timeout=300)
    time.sleep(POLL)
    with pytest.raises(NotFound, match='idx'):
        app['docs'].like(embed('doc 1'), vector_index='idx', n=1).execute()
    app['docs'].insert([{'id': 'later', 'txt': 'after the remove'}]).execute()  # nothing follows the table now
    assert app['docs'].get(id='later').execute()['txt'] == 'after the remove'
    assert pending_changes(app) == 0
    app.close()


def test_async_writer_loads_no_model_and_workers_compute(db_uri, tmp_path, env):
    setup = connect(db_uri, tmp_path, follow_changes=False)
    setup.apply(Table('docs', fields={'txt': 'str'}, folds=False))
    synchronous = setup.apply(ObjectModel('upper', object=str.upper, datatype='str')
                              .to_listener('docs', key='txt', identifier='upper'))
    deferred = setup.apply(ObjectModel('lower', object=str.lower, datatype='str')
                           .to_listener('docs', key='txt', identifier='lower', sync=False))
    setup.close()

    app = connect(db_uri, tmp_path, outputs='async')
    app['docs'].insert([{'id': 'a', 'txt': 'Hello'}]).execute()
    assert app.databackend.count(synchronous.outputs) == app.databackend.count(deferred.outputs) == 0
    assert _models_loaded_by_writes(app) == []  # nothing was loaded to write
    app.close()

    mixed = connect(db_uri, tmp_path, follow_changes=False)  # sync by default; 'lower' says sync=False
    mixed['docs'].insert([{'id': 'b', 'txt': 'World'}]).execute()
    assert [r[synchronous.outputs] for r in mixed[synchronous.outputs].select().execute()] == ['WORLD']
    assert mixed.databackend.count(deferred.outputs) == 0
    subprocess.run(CLI + ['start', db_uri, '--once'], env=env, check=True, timeout=300)
    assert {r['_source']: r[synchronous.outputs] for r in mixed[synchronous.outputs].select().execute()} == {
        'a': 'HELLO', 'b': 'WORLD'}
    assert {r['_source']: r[deferred.outputs] for r in mixed[deferred.outputs].select().execute()} == {
        'a': 'hello', 'b': 'world'}
    assert pending_changes(mixed) == 0
    mixed.close()


def test_async_needs_a_database_that_records_changes(tmp_path):
    with pytest.raises(ConfigError, match="outputs='async'"):
        superduper(f'duckdb://{tmp_path}/d.duckdb', outputs='async')
    db = superduper(f'duckdb://{tmp_path}/d.duckdb', artifact_store=f'filesystem://{tmp_path}/artifacts')
    db.apply(Table('docs', fields={'txt': 'str'}))
    with pytest.raises(ComponentError, match='sync=False'):
        db.apply(ObjectModel('m', object=str.upper).to_listener('docs', key='txt', sync=False))
    assert db.show('Listener') == []
    db.close()


def test_outputs_are_numbered_in_commit_order(db_uri, tmp_path):
    """The counter a write of outputs takes stays locked until it commits: a reader that sees number n sees every
    write up to n, whichever committed first."""
    db = connect(db_uri, tmp_path, follow_changes=False)
    db.apply(Table('docs', fields={'txt': 'str'}, folds=False))
    listener = db.apply(ObjectModel('upper', object=str.upper, datatype='str')
                        .to_listener('docs', key='txt', identifier='upper'))
    log = db.databackend.output_log()
    first = db.databackend.engine.connect()
    seq = log.advance(first, listener.outputs)
    second_took: list = []

    def second() -> None:
        with db.databackend.begin() as conn:
            second_took.append(log.advance(conn, listener.outputs))

    thread = threading.Thread(target=second)
    thread.start()
    thread.join(1.0)
    assert thread.is_alive() and second_took == []  # waiting for the first writer to commit
    assert log.head(listener.outputs)[0] == seq - 1  # the uncommitted number is not visible
    first.commit()
    first.close()
    thread.join(30)
    assert second_took == [seq + 1] and log.head(listener.outputs)[0] == seq + 1
    db.close()


@pytest.mark.parametrize('fault', ['holding_output_number:2', 'before_finish:2', 'after_finish:2'])
def test_a_worker_killed_while_writing_outputs_leaves_searches_exact(db_uri, tmp_path, env, fault):
    """SIGKILL of a worker holding the outputs' counter (mid-transaction), holding a computed batch, or just after
    storing it: another worker finishes the work, and the application's index has every live row once, with its
    current vector, and no deleted one: lost, duplicated and stale results are counted together."""
    app = connect(db_uri, tmp_path, outputs='async')
    app.apply(Table('docs', fields={'txt': 'str'}, folds=False))
    app['docs'].insert([{'id': f'd{i}', 'txt': f'doc {i}'} for i in range(20)]).execute()
    index = app.apply(embedding_index())
    live = {f'd{i}': f'doc {i}' for i in range(20)}
    app['docs'].like(embed('doc 1'), vector_index='idx', n=1).execute()  # the index is open here
    write_elsewhere(app, live, inserts=range(20, 60), updates=range(0, 10), deletes=range(10, 15))
    doomed = subprocess.run(CLI + ['start', db_uri, '--batch', '10', '--once'],
                            env={**env, 'SUPERDUPER_FAULT': fault}, timeout=300)
    assert doomed.returncode == -9  # killed at the fault point
    subprocess.run(CLI + ['start', db_uri, '--once'], env=env, check=True, timeout=300)
    assert pending_changes(app) == 0
    time.sleep(POLL)
    assert stale_results(app, live) == 0
    outputs = index.indexing_listener.outputs
    assert sorted(r['_source'] for r in app[outputs].select('_source').execute()) == sorted(live)  # once each
    assert len(app.vector_indexes.get('idx').searcher) == len(live)
    app.close()
