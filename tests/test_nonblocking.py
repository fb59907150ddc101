"""Non-blocking applies: ``db.apply(component, wait=False)`` returns ``(jobs, component)`` once the metadata is stored
and the backfills are queued; the backfills run in the background; ``Job.status()``/``Job.wait()`` follow them from
the jobs table. A model held on an event makes "before the backfill finished" deterministic; crashes are SIGKILLs at
named points (``superduper.base.faults``), and a worker process finishes what the dead process left."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from superduper import Application, KeywordIndex, ObjectModel, Table, Template, VectorIndex, superduper
from superduper.base.exceptions import JobFailed, JobTimeout, NotFound

from conftest import wait_for

CLI = [sys.executable, '-m', 'superduper.cli']
ROWS = 30
#: the gated model waits on ``GATE`` (set by the test); ``ENTERED`` says it is computing
GATE, ENTERED = threading.Event(), threading.Event()


def gated(text: str) -> str:
    ENTERED.set()
    assert GATE.wait(60), 'the test never opened the gate'
    return text.upper()


def broken(text: str) -> str:
    raise ValueError(f'cannot read {text!r}')


@pytest.fixture
def gate():
    GATE.clear()
    ENTERED.clear()
    yield GATE
    GATE.set()  # a test that failed half way leaves no thread waiting


@pytest.fixture
def connect(backend, db_uri, tmp_path):
    """Datalayers of the test's own on the test's database (their home, with the key for stored code, in the test's
    folder, as the processes it starts have theirs); closed after the test."""
    opened = []

    def open_one(**overrides):
        db = superduper({} if backend == 'frames' else db_uri, artifact_store=f'filesystem://{tmp_path}/artifacts',
                        progress=False, **overrides)
        opened.append(db)
        return db

    yield open_one
    for db in opened:
        db.close()


def docs(db, n: int = ROWS) -> None:
    db.apply(Table('docs', fields={'txt': 'str'}))
    db['docs'].insert([{'txt': f'text {i}'} for i in range(n)]).execute()


def upper(fn=gated, identifier: str = 'upper'):
    return ObjectModel(identifier, object=fn, datatype='str').to_listener('docs', key='txt', identifier=identifier)


def outputs(db, listener) -> list[str]:
    return sorted(row[listener.outputs] for row in db[listener.outputs].select().execute())


def expected(n: int = ROWS) -> list[str]:
    return sorted(f'TEXT {i}' for i in range(n))


#: tests that open the database again after closing it
reopened = pytest.mark.requires('opened_by_uri', reason='another datalayer opens the database by its URI later')


# ---- in this process ---------------------------------------------------------------------------------------------
def test_apply_returns_before_the_backfill_and_the_job_follows_it(db, gate):
    docs(db)
    jobs, listener = db.apply(upper(), wait=False)
    (job,) = jobs
    assert db.show('Listener') == ['upper'] and listener.version == 0  # stored before apply returned
    assert ENTERED.wait(30)  # computing in the background, held by the gate
    status = job.status()
    assert (status['kind'], status['status'], status['done'], status['total']) == ('backfill', 'running', 0, ROWS)
    assert [j['id'] for j in db.jobs('upper')] == [job.id] and 'running, 0/30 rows' in repr(job) and not job.done()
    with pytest.raises(JobTimeout, match=rf"backfill of Listener 'upper' \(job '{job.id}'\) still running"):
        job.wait(timeout=0.2)  # the gate holds it: it cannot end meanwhile
    GATE.set()
    ended = job.wait(timeout=60)
    assert (ended['status'], ended['done'], ended['failed']) == ('success', ROWS, 0)
    assert outputs(db, listener) == expected()  # each row's output once
    assert db.job(job.id).status()['status'] == 'success'


def test_a_model_failing_on_rows_makes_wait_raise_with_its_error(db):
    docs(db, 5)
    (job,), _ = db.apply(upper(broken, 'broken'), wait=False)
    with pytest.raises(JobFailed, match=r"backfill of Listener 'broken' .* model failing on 5 of 5 rows") as caught:
        job.wait(timeout=60)
    assert caught.value.status['failed'] == 5
    assert all("ValueError: cannot read 'text" in f['error'] for f in db.failures('broken'))


@pytest.mark.backends('any')
def test_an_error_in_the_background_is_recorded_on_the_job(db, monkeypatch):
    docs(db)

    def lost(*args, **kwargs):
        raise ConnectionError('the database went away')

    monkeypatch.setattr(db.changes, 'claim', lost)  # the background's first read of its queued changes fails
    (job,), _ = db.apply(upper(str.upper, 'lost'), wait=False)
    with pytest.raises(JobFailed, match=r"backfill of Listener 'lost' .* failed: ConnectionError: the database went"):
        job.wait(timeout=60)
    assert db.jobs('lost')[0]['status'] == 'failed'


@pytest.mark.backends('any')
def test_an_index_that_cannot_be_built_fails_the_job_it_follows(db, monkeypatch):
    docs(db)

    def full(*args, **kwargs):
        raise OSError('no space left on device')

    monkeypatch.setattr(db.vector_indexes, 'build', full)
    model = ObjectModel('ones', object=lambda text: np.ones(2, dtype=np.float32), datatype='vector[float32:2]')
    (job,), _ = db.apply(VectorIndex('idx', indexing_listener=model.to_listener('docs', key='txt')), wait=False)
    with pytest.raises(JobFailed, match=r"failed: VectorIndex 'idx' after the backfill: OSError: no space left"):
        job.wait(timeout=60)


def test_a_vector_index_is_built_over_the_backfill_in_the_background(db):
    db.apply(Table('docs', fields={'txt': 'str'}))
    db['docs'].insert([{'txt': t} for t in ['aaa', 'abc', 'zzz']]).execute()

    def embed(text: str) -> np.ndarray:
        return np.array([text.count(c) for c in 'abz'], dtype=np.float32)

    listener = ObjectModel('counts', object=embed, datatype='vector[float32:3]').to_listener('docs', key='txt')
    jobs, index = db.apply(VectorIndex('idx', indexing_listener=listener), wait=False)
    assert [j.status()['identifier'] for j in jobs] == ['counts']
    for job in jobs:
        job.wait(timeout=60)
    found = db['docs'].like({'txt': 'aa'}, vector_index='idx', n=1).select('txt').execute()
    assert [row['txt'] for row in found] == ['aaa']


def test_a_keyword_index_answers_once_its_jobs_ended(db):
    """Over the database's own full-text index it is built before apply returns (no job); over an in-process engine
    its internal listener's backfill is the job."""
    db.apply(Table('docs', fields={'txt': 'str'}))
    db['docs'].insert([{'txt': 'red shoes'}, {'txt': 'blue hat'}]).execute()
    jobs, _ = db.apply(KeywordIndex('kw', select='docs', key='txt'), wait=False)
    assert len(jobs) == (0 if db.databackend.capabilities.full_text else 1)
    for job in jobs:
        job.wait(timeout=60)
    assert [r['txt'] for r in db['docs'].select().match('shoes', keyword_index='kw').execute()] == ['red shoes']


#: two models ordering the rows in opposite ways for the query 'q': each answer says which index gave it
OLD = {'apple': [1.0, 0.0], 'zebra': [0.0, 1.0], 'q': [1.0, 0.0]}
NEW = {**OLD, 'q': [0.0, 1.0]}


def old_vectors(text: str) -> np.ndarray:
    return np.array(OLD[text], dtype=np.float32)


def new_vectors(text: str) -> np.ndarray:
    gated('')
    return np.array(NEW[text], dtype=np.float32)


def test_an_index_switches_to_a_new_model_after_its_backfill(db, gate):
    def index(embed) -> VectorIndex:
        model = ObjectModel('embedder', object=embed, datatype='vector[float32:2]')
        return VectorIndex('idx', indexing_listener=model.to_listener('docs', key='txt', identifier='embed'))

    def nearest() -> str:
        return [r['txt'] for r in db['docs'].like({'txt': 'q'}, vector_index='idx', n=1).select('txt').execute()][0]

    db.apply(Table('docs', fields={'txt': 'str'}))
    db['docs'].insert([{'txt': 'apple'}, {'txt': 'zebra'}]).execute()
    db.apply(index(old_vectors))
    jobs, new = db.apply(index(new_vectors), wait=False)
    assert ENTERED.wait(30) and nearest() == 'apple'  # the old version answers while the new one backfills
    GATE.set()
    for job in jobs:
        job.wait(timeout=60)  # in this process: the switch that follows the backfill too
    assert nearest() == 'zebra' and db.show('VectorIndex', 'idx') == [new.version] == [1]


def test_nothing_to_compute_gives_no_jobs(db):
    jobs, table = db.apply(Table('plain', fields={'txt': 'str'}), wait=False)
    assert jobs == [] and db.show('Table') == ['plain'] and table.version == 0
    with pytest.raises(NotFound, match="no job 'nope'"):
        db.job('nope')


@reopened
def test_closing_keeps_what_the_background_left_queued(connect, gate):
    """``close()`` while a background backfill computes: the batch in hand is stored, the rest stays queued with the
    job running; applying the listener again (another process would too) finishes it, each output once. Where the
    queue lives in the process only (lake folders), ``close()`` finishes the backfill instead."""
    db = connect(read_batch_size=10, follow_changes=False)
    docs(db)
    (job,), listener = db.apply(upper(), wait=False)
    assert ENTERED.wait(30)
    closing = threading.Thread(target=db.close)
    closing.start()  # waits for the batch in hand
    wait_for(lambda: db.listening._closed)
    GATE.set()
    closing.join(60)
    assert not closing.is_alive()
    again = connect(follow_changes=False)
    left = again.job(job.id).status()
    if db.changes.durable:
        assert (left['status'], left['done']) == ('running', 10)  # one batch of 10 stored, two queued
    else:
        assert (left['status'], left['done']) == ('success', ROWS)
    again.apply(upper())  # the same declaration: resumes the queued backfill
    assert again.job(job.id).wait(timeout=60)['status'] == 'success'
    assert outputs(again, listener) == expected()


@reopened
def test_closing_with_an_apply_not_started_loses_nothing(connect, gate):
    """A second non-blocking apply waits behind the first when the datalayer is closed: it is not started (its
    backfill stays queued; where the queue lives in the process, ``close()`` runs it)."""
    db = connect(follow_changes=False)
    docs(db)
    (first,), _ = db.apply(upper(), wait=False)  # holds the background thread
    (second,), plain = db.apply(upper(str.upper, 'plain'), wait=False)
    assert ENTERED.wait(30)
    closing = threading.Thread(target=db.close)
    closing.start()
    wait_for(lambda: db.listening._closed)
    GATE.set()
    closing.join(60)
    again = connect(follow_changes=False)
    left = again.job(second.id).status()
    if db.changes.durable:
        assert (left['status'], left['done']) == ('running', 0)
    else:
        assert (left['status'], left['done']) == ('success', ROWS)
    again.apply(upper(str.upper, 'plain'))
    assert again.job(second.id).wait(timeout=60)['status'] == 'success'
    assert outputs(again, plain) == expected()


# ---- other processes ---------------------------------------------------------------------------------------------
APPLY = textwrap.dedent("""
    import os, sys, time
    from superduper import superduper, ObjectModel

    def upper(text, flag=sys.argv[2]):
        while not os.path.exists(flag):  # held until apply has returned and said so
            time.sleep(0.01)
        return text.upper()

    db = superduper(sys.argv[1], follow_changes=False)
    jobs, _ = db.apply(ObjectModel('upper', object=upper, datatype='str').to_listener('docs', key='txt',
                                                                                     identifier='upper'), wait=False)
    print(' '.join(job.id for job in jobs), flush=True)
    open(sys.argv[2], 'w').close()
    jobs[0].wait()
""")


@pytest.mark.requires(shared=True, reason='other processes open the database')
@pytest.mark.requires('workers_follow', reason='a worker finds the changes the dead process left')
def test_killed_after_apply_returned_a_worker_finishes_the_job(connect, db_uri, env, tmp_path):
    """The process returns from ``apply(wait=False)``, then dies (SIGKILL) in its background backfill holding its
    second batch, computed and not stored; a worker (``superduper start``) takes the queue over."""
    db = connect()
    docs(db)
    flag = tmp_path / 'returned'
    died = subprocess.run([sys.executable, '-c', APPLY, db_uri, str(flag)], capture_output=True, text=True,
                          timeout=120, env={**env, 'SUPERDUPER_FAULT': 'before_finish:2',
                                            'SUPERDUPER_READ_BATCH_SIZE': '10'})
    assert died.returncode == -signal.SIGKILL, died.stderr
    (job_id,) = died.stdout.split()
    listener = db.load('Listener', 'upper')
    assert db.job(job_id).status()['status'] == 'running' and len(outputs(db, listener)) == 10
    subprocess.run(CLI + ['start', db_uri, '--once'], env=env, check=True, timeout=120)
    assert db.job(job_id).wait(timeout=60)['status'] == 'success'
    assert outputs(db, listener) == expected()


@pytest.mark.backends('any')
def test_cli_apply_no_wait_queues_for_the_workers(connect, db_uri, env, tmp_path):
    db = connect()
    docs(db)
    app = Application('app', components=[ObjectModel('upper', object=str.upper, datatype='str').to_listener(
        'docs', key='txt', identifier='upper')])
    Template('app', component=app).export(tmp_path / 'app')
    applied = subprocess.run(CLI + ['apply', str(tmp_path / 'app'), db_uri, '--no-wait', '--trust'],
                             capture_output=True, text=True, timeout=120, env=env)
    assert applied.returncode == 0, applied.stderr
    lines = applied.stdout.splitlines()
    assert lines[0].startswith("applied Application 'app' version 0") and lines[1].startswith('queued job backfill-')
    job = db.job(lines[1].split()[-1])
    assert job.status()['status'] == 'running'  # the CLI computed nothing
    subprocess.run(CLI + ['start', db_uri, '--once'], env=env, check=True, timeout=120)
    assert job.wait(timeout=60)['status'] == 'success'
    assert outputs(db, db.load('Listener', 'upper')) == expected()
