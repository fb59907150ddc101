"""Workers under faults (real processes, real servers): killed mid-backfill, sharing concurrent writes, retrying."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import sqlalchemy as sa

from superduper import ObjectModel, Table, superduper

from conftest import other_engine, pending_changes, wait_for

CLI = [sys.executable, '-m', 'superduper.cli']


pytestmark = pytest.mark.sql_only('other clients write with plain SQL')
#: the tests with worker processes
workers = pytest.mark.requires(change_capture='triggers', shared=True,
                               reason='worker processes follow the changes the database records')


def connect(uri: str, tmp_path, **overrides):
    return superduper(uri, artifact_store=f'filesystem://{tmp_path}/artifacts', progress=False, **overrides)


def count(db, table: str) -> int:
    return db.databackend.count(table)


def running(process: subprocess.Popen) -> bool:
    """For a wait on what ``process`` does: it must still be running."""
    assert process.poll() is None, f'the process exited with {process.returncode}'
    return True


@workers
def test_worker_killed_mid_backfill_is_finished_by_another(db_uri, tmp_path, env):
    db = connect(db_uri, tmp_path, follow_changes=False)
    db.apply(Table('docs', fields={'n': 'int'}, folds=False))
    db['docs'].insert([{'id': f'r{i}', 'n': i} for i in range(10_000)]).execute()
    applier = subprocess.Popen([sys.executable, '-c', textwrap.dedent(f"""
        import time
        from superduper import superduper, ObjectModel
        db = superduper({db_uri!r}, follow_changes=False)
        slow = ObjectModel('slow', object=lambda n: (time.sleep(0.0004), n * 2)[1])
        db.apply(slow.to_listener('docs', key='n', identifier='slow'))
    """)], env=env)
    try:
        wait_for(lambda: running(applier) and 'slow' in db.show('Listener')
                 and count(db, db.load('Listener', 'slow').outputs) > 1000, 60)
    finally:
        applier.send_signal(signal.SIGKILL)
        applier.wait()
    outputs = db.load('Listener', 'slow').outputs
    assert count(db, outputs) < 10_000  # killed half way
    subprocess.run(CLI + ['start', db_uri, '--once'], env=env, check=True, timeout=300)
    rows = db[outputs].select().execute().tolist()
    assert len(rows) == 10_000 and {r['_source'] for r in rows} == {f'r{i}' for i in range(10_000)}
    assert all(r[outputs] == 2 * int(r['_source'][1:]) for r in rows)
    assert pending_changes(db) == 0
    db.close()


@pytest.mark.backends('server')
@workers
def test_concurrent_writers_and_two_workers(db_uri, tmp_path, env, backend):
    db = connect(db_uri, tmp_path, follow_changes=False)
    db.apply(Table('events', fields={'n': 'int'}, folds=False))
    listener = db.apply(ObjectModel('double', object=lambda n: 2 * n).to_listener('events', key='n', identifier='double'))
    url = db.databackend.engine.url.render_as_string(hide_password=False)
    workers = [subprocess.Popen(CLI + ['start', db_uri, '--interval', '0.1'], env=env) for _ in range(2)]
    writer = textwrap.dedent("""
        import sys, sqlalchemy as sa
        engine = sa.create_engine(sys.argv[1])
        offset = int(sys.argv[2]) * 5000
        for start in range(0, 5000, 250):
            with engine.begin() as conn:
                conn.execute(sa.text('INSERT INTO events (id, n) VALUES (:id, :n)'),
                             [{'id': f'e{offset + i}', 'n': offset + i} for i in range(start, start + 250)])
    """)
    try:
        writers = [subprocess.Popen([sys.executable, '-c', writer, url, str(k)], env=env) for k in range(4)]
        assert [w.wait(timeout=300) for w in writers] == [0, 0, 0, 0]
        wait_for(lambda: count(db, listener.outputs) == 20_000 and pending_changes(db) == 0, 300)
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=60)
    rows = db[listener.outputs].select().execute().tolist()
    assert len(rows) == 20_000 == len({r['_source'] for r in rows})
    assert all(r[listener.outputs] == 2 * int(r['_source'][1:]) for r in rows)
    db.close()


def test_failing_rows_are_retried_with_backoff_then_kept_failed(db_uri, tmp_path):
    db = connect(db_uri, tmp_path, follow_changes=False, retry_delay=0.0, max_attempts=3)
    try:
        db.apply(Table('nums', fields={'n': 'int'}, folds=False))
        db['nums'].insert([{'id': f'n{i}', 'n': i} for i in range(200)]).execute()
        state = {'broken': True}

        def fragile(n):
            if state['broken'] and n % 100 == 7:
                raise ValueError(f'bad {n}')
            return n

        listener = db.apply(ObjectModel('fragile', object=fragile).to_listener('nums', key='n', identifier='fragile'))
        assert count(db, listener.outputs) == 198
        assert [f['attempts'] for f in db.failures('fragile')] == [1, 1]
        while db.listening.retry_due():
            pass
        assert [f['attempts'] for f in db.failures('fragile')] == [3, 3]  # then they stay failed, visible
        assert db.status()[0]['failed'] == 2
        state['broken'] = False
        assert db.retry('fragile') == 0
        assert count(db, listener.outputs) == 200
    finally:
        db.close()


def test_a_long_running_client_sees_failures_other_clients_record(db_uri, tmp_path):
    """A worker that counted no failures a while ago still retries the rows another client failed on since."""
    writer = connect(db_uri, tmp_path, follow_changes=False, retry_delay=0.0)
    worker = connect(db_uri, tmp_path, follow_changes=False, retry_delay=0.0)
    try:
        writer.apply(Table('nums', fields={'n': 'int'}, folds=False))
        state = {'broken': False}

        def fragile(n):
            if state['broken']:
                raise ValueError(f'bad {n}')
            return n

        writer.apply(ObjectModel('fragile', object=fragile).to_listener('nums', key='n', identifier='fragile'))
        assert worker.listening.retry_due() == 0  # the worker has looked: no failures yet
        state['broken'] = True
        writer['nums'].insert([{'id': 'a', 'n': 1}]).execute()
        assert [f['source'] for f in writer.failures('fragile')] == ['a']
        state['broken'] = False
        time.sleep(1.1)  # counts are trusted for a second
        assert worker.listening.retry_due() == 1
        assert worker.failures('fragile') == [] and count(worker, worker.load('Listener', 'fragile').outputs) == 1
    finally:
        writer.close()
        worker.close()


def restart_postgresql() -> None:
    version = sorted(os.listdir('/etc/postgresql'))[-1]
    subprocess.run(['pg_ctlcluster', '--skip-systemctl-redirect', version, 'main', 'restart'], check=True, timeout=120)
    for _ in range(60):
        if subprocess.run(['pg_isready', '-q', '-h', '127.0.0.1'], check=False).returncode == 0:
            return
        time.sleep(0.5)
    raise AssertionError('PostgreSQL did not come back')


@pytest.mark.backends('postgresql')
@pytest.mark.restarts_server
@workers
def test_worker_survives_a_database_restart(db_uri, tmp_path, env, backend):
    if not os.path.isdir('/etc/postgresql') or os.geteuid() != 0:
        if os.environ.get('CI'):
            pytest.fail('restarting PostgreSQL needs root and pg_ctlcluster')
        pytest.skip('restarting PostgreSQL needs root and pg_ctlcluster')
    db = connect(db_uri, tmp_path, follow_changes=False)
    db.apply(Table('ticks', fields={'n': 'int'}, folds=False))
    listener = db.apply(ObjectModel('plus', object=lambda n: n + 1).to_listener('ticks', key='n', identifier='plus'))
    worker = subprocess.Popen(CLI + ['start', db_uri, '--interval', '0.1'], env=env, stderr=subprocess.PIPE, text=True)
    url = db.databackend.engine.url

    def insert(rows):
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text('INSERT INTO ticks (id, n) VALUES (:id, :n)'), rows)
        engine.dispose()

    try:
        insert([{'id': 'before', 'n': 1}])
        wait_for(lambda: count(db, listener.outputs) == 1, 60)
        restart_postgresql()
        insert([{'id': 'after', 'n': 2}])
        wait_for(lambda: count(db, listener.outputs) == 2, 120)
        assert worker.poll() is None  # still running
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    assert {r['_source']: r[listener.outputs] for r in db[listener.outputs].select().execute()} == {'before': 2, 'after': 3}
    db.close()


@pytest.mark.backends('any')
@workers
def test_cli_status_show_retry_and_errors(db_uri, tmp_path, env, backend):
    db = connect(db_uri, tmp_path, follow_changes=False)
    db.apply(Table('docs', fields={'n': 'int'}, folds=False))
    db['docs'].insert([{'id': 'a', 'n': 1}, {'id': 'b', 'n': 0}]).execute()
    db.apply(ObjectModel('inv', object=lambda n: 1 / n).to_listener('docs', key='n', identifier='inv'))
    db.close()

    def cli(*args):
        return subprocess.run(CLI + list(args), env=env, capture_output=True, text=True, timeout=120)

    status = cli('status', db_uri)
    assert status.returncode == 0
    line = [x for x in status.stdout.splitlines() if x.startswith('inv')][0].split()
    assert line[:5] == ['inv', 'docs', '1', '0', '1']  # done, pending, failed
    assert cli('show', db_uri, 'Listener').stdout.split() == ['type', 'identifier', 'versions', 'Listener', 'inv', '0']
    retried = cli('retry', db_uri, 'inv')
    assert retried.returncode == 1 and '1 rows still fail' in retried.stdout
    missing = cli('retry', db_uri, 'nope')
    assert missing.returncode == 1 and "no Listener named 'nope'" in missing.stderr
    assert cli('status', 'foo://x').returncode == 1
    assert cli('frobnicate').returncode == 2


@workers
def test_worker_learns_listeners_applied_after_it_started(db_uri, tmp_path, env, backend):
    db = connect(db_uri, tmp_path, follow_changes=False)
    db.apply(Table('early', fields={'n': 'int'}, folds=False))
    db.apply(ObjectModel('one', object=lambda n: n).to_listener('early', key='n', identifier='one'))
    worker = subprocess.Popen(CLI + ['start', db_uri, '--interval', '0.1'], env=env)
    try:
        time.sleep(3)  # the worker has loaded its listeners
        db.apply(Table('late', fields={'n': 'int'}, folds=False))
        late = db.apply(ObjectModel('two', object=lambda n: n * 10).to_listener('late', key='n', identifier='two'))
        engine = other_engine(db)
        with engine.begin() as conn:
            conn.execute(sa.text('INSERT INTO late (id, n) VALUES (:id, :n)'), [{'id': 'x', 'n': 4}])
        engine.dispose()
        wait_for(lambda: running(worker) and count(db, late.outputs) == 1, 60)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    assert db[late.outputs].get(_source='x').execute()[late.outputs] == 40
    db.close()
