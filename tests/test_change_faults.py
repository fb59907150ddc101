"""Change capture under concurrency and crashes, on SQLite, PostgreSQL and MariaDB (real processes, real servers).

Every test ends by counting, against the rows as they are, the outputs that are *lost* (a selected row without
one), *duplicated* (two for one row) and *stale* (an output of an old value, or of a row deleted or no longer
selected), and asserts all three are 0. Races are made deterministic with a gate file the model waits on; crashes
are SIGKILLs at named points (``superduper.base.faults``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import cloudpickle
import pytest
import sqlalchemy as sa

from conftest import other_engine, plain_sql, wait_at_gate
from superduper import ObjectModel, Table, superduper

# models here are stored by value: worker processes cannot import this test module
cloudpickle.register_pickle_by_value(sys.modules[__name__])
CLI = [sys.executable, '-m', 'superduper.cli']


pytestmark = [pytest.mark.sql_only('other clients write with plain SQL; the outputs are counted with SQL'),
              pytest.mark.requires('follows_other_writers', reason='writes by other clients reach listeners')]


processes = pytest.mark.requires(shared=True, reason='other processes (workers, writers) open the database meanwhile')
#: a worker started later finds the work a dead process left (where polling follows, only the open process does)
workers = pytest.mark.requires('workers_follow', reason='workers find the changes other processes left in the database')


def connect(uri: str, tmp_path, **overrides):
    return superduper(uri, artifact_store=f'filesystem://{tmp_path}/artifacts', progress=False, follow_changes=False,
                      lease_seconds=2, **overrides)


def gated(x: str) -> str:
    """Upper-cases; on a value starting with 'slow' it waits while the gate file exists (a slow model, held at a
    point the test chooses)."""
    gate = os.environ.get('SD_TEST_GATE')
    if gate and x.startswith('slow'):
        open(gate + '.entered', 'w').close()
        while os.path.exists(gate):
            time.sleep(0.01)
    return x.upper()


def drain(*dbs) -> None:
    """Work until no change is left, taking over the leases of consumers that died."""
    deadline = time.time() + 60
    while True:
        taken = sum(db.listening.work() for db in dbs)
        if not taken and not any(s['pending'] for s in dbs[0].status()):
            return
        assert time.time() < deadline, f'changes still pending: {dbs[0].status()}'
        if not taken:
            time.sleep(0.1)


def faults(db, listener, table: str, fn, key: str = 'id', field: str = 'txt', where: str = '') -> dict:
    """Lost, duplicated and stale outputs of ``listener``, against the rows of ``table`` as they are now."""
    engine = db.databackend.engine
    with engine.connect() as conn:
        rows = dict(conn.execute(sa.text(f'SELECT {key}, {field} FROM {table} {where}')).all())
        outputs = conn.execute(sa.text(f'SELECT _source, {listener.outputs} FROM {listener.outputs}')).all()
    found = {}
    duplicated = 0
    for source, value in outputs:
        duplicated += source in found
        found[source] = value
    lost = [k for k in rows if k not in found]
    stale = [k for k, v in found.items() if k not in rows or v != fn(rows[k])]
    return {'lost': len(lost), 'duplicated': duplicated, 'stale': len(stale)}


CLEAN = {'lost': 0, 'duplicated': 0, 'stale': 0}


# ---- ordering --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('then', ['update', 'delete'])
def test_an_older_change_never_overwrites_a_newer_result(db_uri, tmp_path, monkeypatch, then):
    """Consumer A takes an insert and runs a slow model; the row changes; consumer B computes the newer change
    first; A finishes last. A's older result must not be stored."""
    gate = tmp_path / 'gate'
    monkeypatch.setenv('SD_TEST_GATE', str(gate))
    a, b = connect(db_uri, tmp_path), connect(db_uri, tmp_path)
    try:
        a.apply(Table('docs', fields={'txt': 'str'}, folds=False))
        listener = a.apply(ObjectModel('gated', object=gated, datatype='str').to_listener('docs', key='txt', identifier='gated'))
        gate.touch()
        plain_sql(a, ("INSERT INTO docs (id, txt) VALUES ('r', 'slow v1')", {}))
        first = threading.Thread(target=a.listening.work)
        first.start()
        wait_at_gate(gate, first)
        if then == 'update':
            plain_sql(a, ("UPDATE docs SET txt = 'fast v2' WHERE id = 'r'", {}))
        else:
            plain_sql(a, ("DELETE FROM docs WHERE id = 'r'", {}))
        # the newer change, while A still holds the older one; polling compares rows as they are with the last
        # rows seen, and a row inserted and deleted between two polls was never seen: nothing to compute
        polled = a.databackend.capabilities.change_capture == 'polling'
        assert b.listening.work() == (0 if then == 'delete' and polled else 1)
        gate.unlink()
        first.join(timeout=60)
        drain(a, b)
        assert faults(a, listener, 'docs', str.upper) == CLEAN
        expected = {'r': 'FAST V2'} if then == 'update' else {}
        assert {r['_source']: r[listener.outputs] for r in a[listener.outputs].select().execute()} == expected
    finally:
        a.close()
        b.close()


@pytest.mark.requires(serialized_writes=False, reason='another transaction commits around ours: not with one writer')
def test_a_writer_acknowledges_only_its_own_changes(db_uri, tmp_path):
    """Another client's insert takes a change id below ours and commits while we write: it must still be computed."""
    db = connect(db_uri, tmp_path)
    try:
        db.apply(Table('docs', fields={'txt': 'str'}, folds=False))
        listener = db.apply(ObjectModel('upper', object=str.upper, datatype='str').to_listener('docs', key='txt', identifier='upper'))
        other = other_engine(db)
        with other.connect() as conn:
            transaction = conn.begin()
            conn.execute(sa.text("INSERT INTO docs (id, txt) VALUES ('theirs', 'from sql')"))
            db['docs'].insert([{'id': 'ours', 'txt': 'from the api'}]).execute()  # computed before it returns
            assert db[listener.outputs].get(_source='ours').execute()[listener.outputs] == 'FROM THE API'
            transaction.commit()
        other.dispose()
        assert db.status()[0]['pending'] == 1  # theirs: recorded, waiting, not swept up
        drain(db)
        assert faults(db, listener, 'docs', str.upper) == CLEAN
        assert db.databackend.count(listener.outputs) == 2
    finally:
        db.close()


# ---- keys that change, rows that stop or start matching ---------------------------------------------------------
def test_primary_key_changes_move_the_output(db_uri, tmp_path):
    db = connect(db_uri, tmp_path)
    try:
        db.apply(Table('docs', fields={'txt': 'str'}, folds=False))
        db['docs'].insert([{'id': 'a', 'txt': 'one'}, {'id': 'b', 'txt': 'two'}]).execute()
        listener = db.apply(ObjectModel('upper', object=str.upper, datatype='str').to_listener('docs', key='txt', identifier='upper'))
        t = db['docs']
        t.filter(t['id'] == 'a').update({'id': 'a2'}).execute()  # through the API
        plain_sql(db, ("UPDATE docs SET id = 'b2' WHERE id = 'b'", {}))  # by another client
        drain(db)
        assert faults(db, listener, 'docs', str.upper) == CLEAN
        assert sorted(r['_source'] for r in db[listener.outputs].select().execute()) == ['a2', 'b2']
    finally:
        db.close()


def test_rows_entering_and_leaving_a_filtered_select(db_uri, tmp_path):
    db = connect(db_uri, tmp_path)
    try:
        db.apply(Table('docs', fields={'txt': 'str', 'n': 'int'}, folds=False))
        t = db['docs']
        t.insert([{'id': 'a', 'txt': 'one', 'n': 1}, {'id': 'b', 'txt': 'two', 'n': 5}]).execute()
        listener = db.apply(ObjectModel('upper', object=str.upper, datatype='str').to_listener(t.filter(t['n'] > 2), key='txt',
                                                                               identifier='upper'))
        t.filter(t['id'] == 'a').update({'n': 10}).execute()  # now selected
        plain_sql(db, ("UPDATE docs SET n = 0 WHERE id = 'b'", {}))  # no longer selected
        drain(db)
        assert faults(db, listener, 'docs', str.upper, where='WHERE n > 2') == CLEAN
        assert [r['_source'] for r in db[listener.outputs].select().execute()] == ['a']
    finally:
        db.close()


# ---- crashes ---------------------------------------------------------------------------------------------------
APPLY = textwrap.dedent("""
    import sys
    from superduper import superduper, ObjectModel
    db = superduper(sys.argv[1], follow_changes=False)
    db.apply(ObjectModel('upper', object=str.upper, datatype='str').to_listener('docs', key='txt', identifier='upper'))
""")


def _docs(db, n: int) -> None:
    db.apply(Table('docs', fields={'txt': 'str'}, folds=False))
    db['docs'].insert([{'id': f'r{i:05d}', 'txt': f'text {i}'} for i in range(n)]).execute()


@processes
def test_killed_after_the_metadata_commit_then_applied_again(db_uri, tmp_path, env):
    killed_after_the_metadata_commit(db_uri, tmp_path, env, 'apply again')


@processes
@workers
def test_killed_after_the_metadata_commit_then_a_worker(db_uri, tmp_path, env):
    killed_after_the_metadata_commit(db_uri, tmp_path, env, 'a worker')


def killed_after_the_metadata_commit(db_uri, tmp_path, env, recovery):
    """The applying process dies after storing the listener, before following its table or queueing its backfill."""
    db = connect(db_uri, tmp_path)
    try:
        _docs(db, 300)
        died = subprocess.run([sys.executable, '-c', APPLY, db_uri], timeout=120,
                              env={**env, 'SUPERDUPER_FAULT': 'after_metadata_commit.Listener'})
        assert died.returncode == -signal.SIGKILL
        assert db.show('Listener') == ['upper'] and db.jobs() == []
        plain_sql(db, ("INSERT INTO docs (id, txt) VALUES ('late', 'written after the crash')", {}))
        if recovery == 'apply again':
            db.apply(ObjectModel('upper', object=str.upper, datatype='str').to_listener('docs', key='txt', identifier='upper'))
        else:
            subprocess.run(CLI + ['start', db_uri, '--once'], env=env, check=True, timeout=120)
        listener = db.load('Listener', 'upper')
        plain_sql(db, ("INSERT INTO docs (id, txt) VALUES ('later', 'followed again')", {}))
        drain(db)
        assert faults(db, listener, 'docs', str.upper) == CLEAN and db.databackend.count(listener.outputs) == 302
        assert [(j['kind'], j['status']) for j in db.jobs()] == [('backfill', 'success')]
    finally:
        db.close()


@processes
@workers
def test_killed_mid_backfill_holding_a_lease(db_uri, tmp_path, env):
    """The applying process dies holding a claimed batch: its lease runs out and a worker finishes the backfill."""
    db = connect(db_uri, tmp_path, read_batch_size=100)
    try:
        _docs(db, 1000)
        died = subprocess.run([sys.executable, '-c', APPLY, db_uri], timeout=120,
                              env={**env, 'SUPERDUPER_FAULT': 'before_finish:3', 'SUPERDUPER_READ_BATCH_SIZE': '100'})
        assert died.returncode == -signal.SIGKILL
        listener = db.load('Listener', 'upper')
        assert db.databackend.count(listener.outputs) == 200  # two batches stored, the third computed and lost
        assert db.jobs()[0]['status'] == 'running'
        subprocess.run(CLI + ['start', db_uri, '--once'], env=env, check=True, timeout=120)
        assert faults(db, listener, 'docs', str.upper) == CLEAN and db.databackend.count(listener.outputs) == 1000
        assert db.jobs()[0]['status'] == 'success' and db.status()[0]['pending'] == 0
    finally:
        db.close()


@processes  # a worker polls too: it finds the rows the dead one left
def test_a_worker_killed_mid_batch_loses_nothing(db_uri, tmp_path, env):
    db = connect(db_uri, tmp_path)
    try:
        _docs(db, 0)
        listener = db.apply(ObjectModel('upper', object=str.upper, datatype='str').to_listener('docs', key='txt', identifier='upper'))
        plain_sql(db, ("INSERT INTO docs (id, txt) VALUES ('a', 'one'), ('b', 'two')", {}))
        died = subprocess.run(CLI + ['start', db_uri], timeout=120, env={**env, 'SUPERDUPER_FAULT': 'before_finish'})
        assert died.returncode == -signal.SIGKILL and db.databackend.count(listener.outputs) == 0
        assert db.status()[0]['pending'] == 2  # leased to the dead worker, not lost
        subprocess.run(CLI + ['start', db_uri, '--once'], env=env, check=True, timeout=120)
        assert faults(db, listener, 'docs', str.upper) == CLEAN and db.databackend.count(listener.outputs) == 2
    finally:
        db.close()


# ---- everything at once ------------------------------------------------------------------------------------------
API_WRITER = textwrap.dedent("""
    import random, sys
    from superduper import superduper
    db = superduper(sys.argv[1], follow_changes=False)
    rng, me, t = random.Random(int(sys.argv[2])), sys.argv[2], db['docs']
    mine = []
    for i in range(int(sys.argv[3])):
        action = rng.random()
        if action < 0.5 or not mine:
            key = f'api{me}-{i}'
            t.insert([{'id': key, 'txt': f'v{i} of {key}'}]).execute()
            mine.append(key)
        elif action < 0.8:
            key = rng.choice(mine)
            t.filter(t['id'] == key).update({'txt': f'v{i} of {key}'}).execute()
        else:
            key = mine.pop(rng.randrange(len(mine)))
            t.filter(t['id'] == key).delete().execute()
    db.close()
""")

SQL_WRITER = textwrap.dedent("""
    import random, sys
    import sqlalchemy as sa
    engine = sa.create_engine(sys.argv[1])
    rng, me = random.Random(int(sys.argv[2])), sys.argv[2]
    mine = []
    for i in range(int(sys.argv[3])):
        action = rng.random()
        with engine.begin() as conn:
            if action < 0.4 or not mine:
                keys = [f'sql{me}-{i}-{j}' for j in range(3)]
                conn.execute(sa.text('INSERT INTO docs (id, txt) VALUES (:id, :txt)'),
                             [{'id': k, 'txt': f'v{i} of {k}'} for k in keys])
                mine.extend(keys)
            elif action < 0.7:
                key = rng.choice(mine)
                conn.execute(sa.text('UPDATE docs SET txt = :txt WHERE id = :id'), {'id': key, 'txt': f'v{i}'})
            elif action < 0.85:
                old = mine.pop(rng.randrange(len(mine)))
                new = f'{old}-moved{i}'
                conn.execute(sa.text('UPDATE docs SET id = :new WHERE id = :old'), {'old': old, 'new': new})
                mine.append(new)
            else:
                key = mine.pop(rng.randrange(len(mine)))
                conn.execute(sa.text('DELETE FROM docs WHERE id = :id'), {'id': key})
""")


def slow_upper(x: str) -> str:
    time.sleep(0.001)
    return x.upper()


@processes
@workers
def test_writers_workers_and_kills_leave_exactly_one_current_output_per_row(db_uri, tmp_path, env, backend):
    """2 API writers and 2 plain-SQL writers (inserts, updates, deletes, key changes) in their own processes, 2
    workers with a 1 ms/row model, one of them killed with SIGKILL twice and restarted."""
    db = connect(db_uri, tmp_path)
    try:
        db.apply(Table('docs', fields={'txt': 'str'}, folds=False))
        listener = db.apply(ObjectModel('slow', object=slow_upper, datatype='str').to_listener('docs', key='txt', identifier='slow'))
        url = db.databackend.engine.url.render_as_string(hide_password=False)
        steps = 60 if backend == 'sqlite' else 120
        workers = [subprocess.Popen(CLI + ['start', db_uri, '--interval', '0.05', '--batch', '50'], env=env)
                   for _ in range(2)]
        writers = [subprocess.Popen([sys.executable, '-c', API_WRITER, db_uri, str(k), str(steps)], env=env)
                   for k in range(2)]
        writers += [subprocess.Popen([sys.executable, '-c', SQL_WRITER, url, str(k), str(steps)], env=env)
                    for k in range(2, 4)]
        try:
            for _ in range(2):
                time.sleep(1.0)
                workers[0].send_signal(signal.SIGKILL)
                workers[0].wait()
                workers[0] = subprocess.Popen(CLI + ['start', db_uri, '--interval', '0.05', '--batch', '50'], env=env)
            assert [w.wait(timeout=300) for w in writers] == [0] * len(writers)
            subprocess.run(CLI + ['start', db_uri, '--once'], env=env, check=True, timeout=300)
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.wait(timeout=60)
        result = faults(db, listener, 'docs', str.upper)
        assert result == CLEAN, result
        assert db.databackend.count('docs') > 100 and db.status()[0]['pending'] == 0
    finally:
        db.close()


# ---- lifecycle -------------------------------------------------------------------------------------------------
NO_CLOSE = textwrap.dedent("""
    import sys
    import sqlalchemy as sa
    from superduper import superduper, Table
    from superduper.ext.sentence_transformers import SentenceTransformer
    db = superduper(sys.argv[1], poll_interval=0.01, progress=False)
    db.apply(Table('notes', fields={'txt': 'str'}))
    run = sys.argv[2]
    db['notes'].insert([{'txt': f'note {i} of run {run}'} for i in range(20)]).execute()
    db.apply(SentenceTransformer('minilm').to_listener('notes', key='txt', identifier='minilm'))
    engine = sa.create_engine(db.databackend.engine.url)
    with engine.begin() as conn:  # keep the background consumer busy as the interpreter exits
        conn.execute(sa.text("INSERT INTO notes (id, txt, _fold) VALUES (:id, :txt, 'train')"),
                     [{'id': f'sql{run}-{i}', 'txt': f'written by another client {i}'} for i in range(200)])
    print('exiting without db.close()', flush=True)
""")


@pytest.mark.backends('any')  # the threads exit alike on every database
def test_a_script_that_never_closes_exits_cleanly(db_uri, env):
    """The change-following thread and the lease thread stop at interpreter exit: no abort from a model's threads
    killed mid-batch (the seen failure: 'terminate called without an active exception', exit code 134)."""
    for run in range(2):
        done = subprocess.run([sys.executable, '-c', NO_CLOSE, db_uri, str(run)], env={**env, 'HF_HUB_OFFLINE': '1'},
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and 'exiting without db.close()' in done.stdout, done.stderr[-2000:]
        assert 'terminate called' not in done.stderr
    db = superduper(db_uri, progress=False, follow_changes=False, lease_seconds=2)
    try:
        drain(db)  # whatever the exiting processes had not finished is still queued: nothing lost
        assert db.databackend.count(db.load('Listener', 'minilm').outputs) == db.databackend.count('notes')
    finally:
        db.close()


def test_chained_listeners_with_a_background_consumer_and_concurrent_writers(db_uri, tmp_path):
    """Three chained listeners, the background consumer of one process and the writes of another, all at once: no
    deadlock (the suite runs under a timeout) and every output current."""
    db = superduper(db_uri, artifact_store=f'filesystem://{tmp_path}/artifacts', progress=False, poll_interval=0.01,
                    lease_seconds=2)
    try:
        db.apply(Table('docs', fields={'txt': 'str'}, folds=False))
        first = db.apply(ObjectModel('upper', object=str.upper, datatype='str').to_listener(
            'docs', key='txt', identifier='upper'))
        second = db.apply(ObjectModel('exclaim', object=lambda x: x + '!', datatype='str').to_listener(
            db[first.outputs].select(), key=first.outputs, identifier='exclaim'))
        third = db.apply(ObjectModel('length', object=len, datatype='int').to_listener(
            db[second.outputs].select(), key=second.outputs, identifier='length'))
        t = db['docs']
        for i in range(40):
            t.insert([{'id': f'api{i}', 'txt': f'api {i}'}]).execute()
            plain_sql(db, ('INSERT INTO docs (id, txt) VALUES (:id, :txt)', {'id': f'sql{i}', 'txt': f'sql {i}'}))
            if i % 3 == 0:
                t.filter(t['id'] == f'sql{i}').update({'txt': f'changed {i}'}).execute()
            if i % 5 == 0:
                plain_sql(db, ('DELETE FROM docs WHERE id = :id', {'id': f'api{i}'}))
        drain(db)
        assert faults(db, first, 'docs', str.upper) == CLEAN
        with db.databackend.engine.connect() as conn:
            rows = dict(conn.execute(sa.text('SELECT id, txt FROM docs')).all())
        outputs = {r['_source']: r[third.outputs] for r in db[third.outputs].select().execute()}
        assert outputs == {k: len(v.upper() + '!') for k, v in rows.items()}
    finally:
        db.close()
