"""The Dask compute backend on a real ``LocalCluster`` (2 worker processes, 1 thread each), on SQLite and PostgreSQL:
backfills and follow-up writes computed by the workers, a worker killed mid-job, a model failing on some rows,
training on a worker, and the errors of a bad configuration."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import cloudpickle
import numpy as np
import pytest
import sqlalchemy as sa

import superduper.runtime.datalayer as datalayer_module
from superduper import ObjectModel, Table, VectorIndex, superduper
from superduper.compute.dask import DaskComputeBackend, worker_settings
from superduper.base.config import load_config
from superduper.base.exceptions import ConfigError, MissingDependency
from superduper.ext.sklearn import SklearnModel

from conftest import other_engine, wait_for

pytest.importorskip('distributed')
# the models below are stored (and sent to the workers) by value: the workers cannot import this test module
cloudpickle.register_pickle_by_value(sys.modules[__name__])

ROWS = 400
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(datalayer_module.__file__)))


@pytest.fixture(scope='module')
def cluster():
    """One LocalCluster for the module; its processes start in the checkout, so they import this superduper."""
    from distributed import Client, LocalCluster

    here = os.getcwd()
    os.chdir(CHECKOUT)
    try:
        local = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=':0')
    finally:
        os.chdir(here)
    client = Client(local, set_as_default=False)
    client.wait_for_workers(2, timeout=60)
    assert set(client.run(_datalayer_file).values()) == {datalayer_module.__file__}
    yield client
    client.close()
    local.close()


def _datalayer_file() -> str:
    import superduper.runtime.datalayer

    return superduper.runtime.datalayer.__file__


pytestmark = [pytest.mark.sql_only('other clients write with plain SQL'),
              pytest.mark.requires(shared=True, reason='the Dask workers open the database themselves')]


def connect(db_uri, tmp_path, cluster, **overrides):
    return superduper(db_uri, compute=f'dask://{cluster.scheduler.address}',
                      artifact_store=f'filesystem://{tmp_path}/artifacts', progress=False, **overrides)


@pytest.fixture
def ddb(db_uri, tmp_path, cluster):
    db = connect(db_uri, tmp_path, cluster, follow_changes=False)
    yield db
    db.close()


def worker_pids(cluster) -> set[int]:
    return set(cluster.run(os.getpid).values())


def numbers_table(db, rows: int = ROWS) -> None:
    db.apply(Table('nums', fields={'n': 'int'}, folds=False))
    db['nums'].insert([{'id': f'r{i:04d}', 'n': i} for i in range(rows)]).execute()


def outputs(db, listener) -> dict:
    rows = db[listener.outputs].select().execute().tolist()
    assert len(rows) == len({r['_source'] for r in rows})
    return {r['_source']: r[listener.outputs] for r in rows}


class Tagger:
    """``n -> '2n@pid'``: says which process computed each output; notes each process that loads it."""

    def __init__(self, loads: str):
        self.loads = loads

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        with open(self.loads, 'a') as f:
            f.write(f'{os.getpid()}\n')

    def __call__(self, n: int) -> str:
        time.sleep(0.003)
        return f'{2 * n}@{os.getpid()}'


class JobWatcher(threading.Thread):
    """Polls ``db.jobs()`` from another thread while the client waits for the cluster."""

    def __init__(self, db):
        super().__init__(daemon=True)
        self.db, self.seen, self.stop = db, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.seen += [(j['status'], j['done'], j['total']) for j in self.db.jobs()]
            time.sleep(0.02)


def test_backfill_and_follow_up_writes_are_computed_by_the_workers(ddb, cluster, tmp_path):
    db = ddb
    assert f'scheduler at {cluster.scheduler.address}, 2 workers' in repr(db.compute)
    numbers_table(db)
    loads = tmp_path / 'loads'
    watcher = JobWatcher(db)
    watcher.start()
    listener = db.apply(ObjectModel('tag', object=Tagger(str(loads))).to_listener('nums', key='n', identifier='tag'))
    watcher.stop.set()
    watcher.join()

    workers = worker_pids(cluster)
    found = outputs(db, listener)
    assert set(found) == {f'r{i:04d}' for i in range(ROWS)}
    assert all(found[f'r{i:04d}'].split('@')[0] == str(2 * i) for i in range(ROWS))
    assert {int(v.split('@')[1]) for v in found.values()} <= workers  # computed by the workers, not here
    (job,) = db.jobs('tag')
    assert (job['kind'], job['status'], job['done'], job['total']) == ('backfill', 'success', ROWS, ROWS)
    assert job['failed'] == 0
    assert any(status == 'running' and 0 < done < ROWS for status, done, _ in watcher.seen)  # progress while it ran

    nums = db['nums']
    nums.insert([{'id': f's{i}', 'n': 1000 + i} for i in range(50)]).execute()
    nums.filter(nums['id'] == 'r0001').update({'n': 5000}).execute()
    nums.filter(nums['id'] == 'r0002').delete().execute()
    found = outputs(db, listener)  # current as soon as execute() returns
    assert len(found) == ROWS + 50 - 1 and 'r0002' not in found
    assert found['s7'].split('@')[0] == '2014' and found['r0001'].split('@')[0] == '10000'
    assert {int(v.split('@')[1]) for v in found.values()} <= workers
    loaded_by = loads.read_text().split()
    assert len(loaded_by) == len(set(loaded_by)) and {int(p) for p in loaded_by} <= workers  # once per worker


def test_rows_the_model_fails_on_are_recorded_per_row(ddb, tmp_path):
    db = ddb
    numbers_table(db)
    broken = tmp_path / 'broken'
    broken.touch()

    def fragile(n, broken=str(broken)):
        if os.path.exists(broken) and n % 50 == 7:
            raise ValueError(f'bad {n}')
        return n

    listener = db.apply(ObjectModel('fragile', object=fragile).to_listener('nums', key='n', identifier='fragile'))
    bad = [i for i in range(ROWS) if i % 50 == 7]
    assert len(outputs(db, listener)) == ROWS - len(bad)
    failures = db.failures('fragile')
    assert [(f['source'], f['error'], f['attempts']) for f in failures] == [
        (f'r{i:04d}', f'ValueError: bad {i}', 1) for i in bad
    ]
    (job,) = db.jobs('fragile')
    assert (job['status'], job['done'], job['failed']) == ('success', ROWS, len(bad))
    db['nums'].insert([{'id': 'x', 'n': 57}, {'id': 'y', 'n': 58}]).execute()
    assert 'y' in outputs(db, listener) and db.status()[0]['failed'] == len(bad) + 1

    broken.unlink()  # the model is fixed
    assert db.retry('fragile') == 0
    assert len(outputs(db, listener)) == ROWS + 2 and db.failures('fragile') == []


def test_a_worker_killed_mid_backfill_is_replaced_and_nothing_is_duplicated(ddb, cluster, tmp_path):
    db = ddb
    numbers_table(db)
    marker = tmp_path / 'killed'

    def fatal_once(n, marker=str(marker)):
        if n == 123 and not os.path.exists(marker):  # the worker dies on its first try of this row
            with open(marker, 'w') as f:
                f.write(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return 2 * n

    before = worker_pids(cluster)
    listener = db.apply(ObjectModel('fatal', object=fatal_once).to_listener('nums', key='n', identifier='fatal'))
    killed = int(marker.read_text())
    assert killed in before
    assert outputs(db, listener) == {f'r{i:04d}': 2 * i for i in range(ROWS)}
    (job,) = db.jobs('fatal')
    assert (job['status'], job['done'], job['failed']) == ('success', ROWS, 0)
    assert db.failures('fatal') == [] and db.status()[0]['pending'] == 0
    cluster.wait_for_workers(2, timeout=60)  # the nanny started a new worker process
    assert killed not in worker_pids(cluster)


def test_writes_by_other_clients_are_computed_on_the_cluster(db_uri, tmp_path, cluster):
    db = connect(db_uri, tmp_path, cluster, poll_interval=0.1)  # follows changes in the background
    try:
        db.apply(Table('events', fields={'n': 'int'}, folds=False))
        listener = db.apply(ObjectModel('tag', object=Tagger(str(tmp_path / 'loads'))).to_listener('events', key='n'))
        engine = other_engine(db)
        with engine.begin() as conn:  # plain SQL, as another program would write
            conn.execute(sa.text('INSERT INTO events (id, n) VALUES (:id, :n)'),
                         [{'id': f'e{i}', 'n': i} for i in range(60)])
        engine.dispose()
        wait_for(lambda: db.databackend.count(listener.outputs) == 60, 60)
        assert {int(v.split('@')[1]) for v in outputs(db, listener).values()} <= worker_pids(cluster)
    finally:
        db.close()


def test_cli_worker_sends_change_batches_to_the_cluster(db_uri, tmp_path, cluster):
    db = connect(db_uri, tmp_path, cluster, follow_changes=False)
    db.apply(Table('events', fields={'n': 'int'}, folds=False))
    listener = db.apply(ObjectModel('tag', object=Tagger(str(tmp_path / 'loads'))).to_listener('events', key='n'))
    with db.databackend.engine.begin() as conn:
        conn.execute(sa.text('INSERT INTO events (id, n) VALUES (:id, :n)'),
                     [{'id': f'e{i}', 'n': i} for i in range(30)])
    env = {**os.environ, 'SUPERDUPER_ARTIFACT_STORE': f'filesystem://{tmp_path}/artifacts', 'PYTHONPATH': CHECKOUT}
    worker = subprocess.run(
        [sys.executable, '-m', 'superduper.cli', 'start', db_uri, '--once',
         '--compute', f'dask://{cluster.scheduler.address}'],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert worker.returncode == 0, worker.stderr
    assert 'computing with DaskComputeBackend' in worker.stderr
    found = outputs(db, listener)
    assert len(found) == 30 and {int(v.split('@')[1]) for v in found.values()} <= worker_pids(cluster)
    db.close()


class MeanClassifier:
    """A tiny estimator that remembers which process fitted it."""

    def fit(self, X, y):
        self.threshold_ = float(np.mean(X))
        self.fitted_by_ = os.getpid()
        return self

    def predict(self, X):
        return (np.asarray(X).reshape(len(X)) > self.threshold_).astype(int)


@pytest.mark.backends('any')
def test_training_runs_on_a_worker(ddb, cluster):
    db = ddb
    db.apply(Table('points', fields={'x': 'float', 'label': 'int'}))
    db['points'].insert([{'x': float(i), 'label': int(i >= 50)} for i in range(100)]).execute()
    model = SklearnModel('clf', object=MeanClassifier())
    model.fit(X='x', y='label', db=db, select=db['points'].select())
    assert model.object.fitted_by_ in worker_pids(cluster)  # the caller's model is the version fitted there
    assert db.show('Model', 'clf') == [0] and model.version == 0 and db.load('Model', 'clf').uuid == model.uuid
    train = db['points'].filter(db['points']['_fold'] == 'train').count().execute()
    (job,) = db.jobs('clf')
    assert (job['kind'], job['status'], job['done'], job['total']) == ('fit', 'success', train, train)
    assert model.predict(99.0) == 1 and model.predict(1.0) == 0


def embed(text: str) -> np.ndarray:
    seed = sum(map(ord, text))
    return np.random.default_rng(seed).normal(size=8).astype(np.float32)


@pytest.mark.backends('any')
def test_a_vector_index_follows_the_outputs_the_workers_write(ddb):
    db = ddb
    db.apply(Table('items', fields={'txt': 'str'}, folds=False))
    db['items'].insert([{'id': f'i{i}', 'txt': f'item {i}'} for i in range(100)]).execute()
    db.apply(VectorIndex('idx', indexing_listener=ObjectModel('emb', object=embed).to_listener('items', key='txt')))
    items = db['items']
    items.insert([{'id': 'new', 'txt': 'a zebra crossing'}]).execute()
    (best,) = items.like({'txt': 'a zebra crossing'}, vector_index='idx', n=1).execute().tolist()
    assert best['id'] == 'new'
    items.filter(items['id'] == 'new').delete().execute()
    assert [r['id'] for r in items.like({'txt': 'a zebra crossing'}, vector_index='idx', n=3).execute()] != ['new']


@pytest.mark.backends('any')
def test_backfill_tasks_carry_keys_covering_every_selected_row_once(ddb, monkeypatch):
    sent = []
    original = DaskComputeBackend._send

    def send(self, db, batch, name):
        sent.append(batch)
        return original(self, db, batch, name)

    monkeypatch.setattr(DaskComputeBackend, '_send', send)
    numbers_table(ddb, 103)
    nums = ddb['nums']
    listener = ddb.apply(ObjectModel('m', object=lambda n: n).to_listener(nums.filter(nums['n'] >= 10), key='n'))
    keys = [c.key for batch in sent for c in batch.changes]
    assert sorted(keys) == [f'r{i:04d}' for i in range(10, 103)]  # each selected row once, nothing else
    assert len(sent) > 1 and all(isinstance(k, str) for k in keys)  # several tasks, carrying keys, not rows
    assert sorted(outputs(ddb, listener)) == keys and ddb.jobs()[0]['status'] == 'success'


def test_workers_get_the_clients_settings_with_absolute_paths():
    cfg = load_config(data_backend='sqlite://data/my.db', artifact_store='filesystem://art', compute='dask://local',
                      read_batch_size=7)
    settings = worker_settings(cfg, '/srv/app')
    assert (settings['data_backend'], settings['artifact_store'], settings['home']) == (
        'sqlite:///srv/app/data/my.db', 'filesystem:///srv/app/art', '/srv/app/.superduper')
    assert (settings['compute'], settings['follow_changes'], settings['read_batch_size']) == ('local', False, 7)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_dask_local_and_bad_configuration(tmp_path):
    uri = f'sqlite://{tmp_path}/data.db'
    db = superduper(uri, compute='dask://local?n_workers=1', progress=False, follow_changes=False)
    assert repr(db.compute).startswith("DaskComputeBackend('dask://local?n_workers=1', LocalCluster at tcp://")
    numbers_table(db, 20)
    listener = db.apply(ObjectModel('double', object=lambda n: 2 * n).to_listener('nums', key='n'))
    assert outputs(db, listener) == {f'r{i:04d}': 2 * i for i in range(20)}
    cluster = db.compute.cluster
    db.close()
    assert cluster.status.name == 'closed'

    port = free_port()
    with pytest.raises(ConfigError, match=f"cannot reach the Dask scheduler at 'tcp://127.0.0.1:{port}'"):
        superduper(uri, compute=f'dask://tcp://127.0.0.1:{port}?timeout=1')
    with pytest.raises(ConfigError, match='names no Dask scheduler'):
        superduper(uri, compute='dask://')
    with pytest.raises(ConfigError, match="in-memory database 'sqlite://:memory:'"):
        superduper('sqlite://:memory:', compute='dask://local')
    with pytest.raises(ConfigError, match='DuckDB opens'):
        superduper(f'duckdb://{tmp_path}/x.duckdb', compute='dask://local')
    with pytest.raises(ConfigError, match="in-memory artifact store 'memory://x'"):
        superduper(uri, artifact_store='memory://x', compute='dask://local')
    with pytest.raises(ConfigError, match="cannot start a LocalCluster with {'nonsense': 1}"):
        superduper(uri, compute='dask://local?nonsense=1')
    db = superduper(uri, follow_changes=False)  # nothing stored was lost
    assert len(outputs(db, db.load('Listener', 'double'))) == 20
    db.close()


def test_local_compute_needs_no_dask(tmp_path, monkeypatch):
    for name in ('dask', 'distributed'):  # as if dask were not installed
        monkeypatch.setitem(sys.modules, name, None)
    uri = f'sqlite://{tmp_path}/data.db'
    hint = r"'dask://' needs the dask\[distributed\] package.*pip install 'superduper\[dask\]'"
    with pytest.raises(MissingDependency, match=hint):
        superduper(uri, compute='dask://local')
    db = superduper(uri, follow_changes=False, progress=False)
    numbers_table(db, 5)
    listener = db.apply(ObjectModel('double', object=lambda n: 2 * n).to_listener('nums', key='n'))
    assert len(outputs(db, listener)) == 5
    db.close()
