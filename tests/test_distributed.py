"""The distributed engines, Dask and Ray, on one shared suite: each case runs on a Dask ``LocalCluster`` and on a local
Ray instance (2 worker processes each), on SQLite and PostgreSQL: backfills and follow-up writes computed by the
workers, a worker killed mid-job, a model failing on some rows, training on a worker, a vector index following the
workers' writes, other clients' writes, and the errors of a bad configuration; local compute needs neither."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import cloudpickle
import numpy as np
import pytest
import sqlalchemy as sa

import superduper.runtime.datalayer as datalayer_module
from superduper import ObjectModel, Table, VectorIndex, superduper
from superduper.base.config import load_config
from superduper.base.exceptions import ConfigError, MissingDependency
from superduper.compute.base import DistributedCompute, worker_settings
from superduper.ext.sklearn import SklearnModel

from conftest import RAY_CPUS, in_checkout, other_engine, wait_for

# the models below are stored (and sent to the workers) by value: the workers cannot import this test module
cloudpickle.register_pickle_by_value(sys.modules[__name__])

ROWS = 400
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(datalayer_module.__file__)))
ENGINES = ('dask', 'ray')


@dataclass
class Engine:
    """A running cluster of 2 worker processes, and how clients reach it."""

    name: str
    uri: str  # compute= for this process's clients
    other_uri: str  # compute= for another process's clients
    wait_for_workers: Callable[[], Any]


@pytest.fixture(scope='module')
def dask_cluster():
    pytest.importorskip('distributed')
    from distributed import Client, LocalCluster

    local = in_checkout(lambda: LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                              dashboard_address=':0'))
    client = Client(local, set_as_default=False)
    client.wait_for_workers(2, timeout=60)
    assert set(client.run(_datalayer_file).values()) == {datalayer_module.__file__}
    address = f'dask://{local.scheduler_address}'
    yield Engine('dask', address, address, lambda: client.wait_for_workers(2, timeout=60))
    client.close()
    local.close()


@pytest.fixture(scope='module')
def ray_cluster(ray_instance):
    import ray
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray pickles task arguments with its own copy
    assert ray.get(ray.remote(_datalayer_file).remote()) == datalayer_module.__file__
    yield Engine('ray', 'ray://local?workers=2', f'ray://{ray_instance}?workers=2', lambda: None)


@pytest.fixture(params=ENGINES)
def engine(request) -> Engine:
    return request.getfixturevalue(f'{request.param}_cluster')


def _datalayer_file() -> str:
    import superduper.runtime.datalayer

    return superduper.runtime.datalayer.__file__


pytestmark = [pytest.mark.sql_only('other clients write with plain SQL'),
              pytest.mark.requires(shared=True, reason='the workers open the database themselves')]


def connect(db_uri, tmp_path, engine, **overrides):
    return superduper(db_uri, compute=engine.uri, artifact_store=f'filesystem://{tmp_path}/artifacts', progress=False,
                      **overrides)


@pytest.fixture
def ddb(db_uri, tmp_path, engine):
    db = connect(db_uri, tmp_path, engine, follow_changes=False)
    yield db
    db.close()


def worker_pids(db) -> set[int]:
    return set(db.compute.on_each_worker(os.getpid))


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


def test_backfill_and_follow_up_writes_are_computed_by_the_workers(ddb, tmp_path):
    db = ddb
    assert repr(db.compute).endswith(', 2 workers)')
    numbers_table(db)
    loads = tmp_path / 'loads'
    watcher = JobWatcher(db)
    watcher.start()
    listener = db.apply(ObjectModel('tag', object=Tagger(str(loads))).to_listener('nums', key='n', identifier='tag'))
    watcher.stop.set()
    watcher.join()

    workers = worker_pids(db)
    found = outputs(db, listener)
    assert set(found) == {f'r{i:04d}' for i in range(ROWS)}
    assert all(found[f'r{i:04d}'].split('@')[0] == str(2 * i) for i in range(ROWS))
    assert {int(v.split('@')[1]) for v in found.values()} == workers  # computed by both workers, not here
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


def test_a_worker_killed_mid_backfill_is_replaced_and_nothing_is_duplicated(ddb, engine, tmp_path):
    db = ddb
    numbers_table(db)
    marker = tmp_path / 'killed'

    def fatal_once(n, marker=str(marker)):
        if n == 123 and not os.path.exists(marker):  # the worker dies on its first try of this row
            with open(marker, 'w') as f:
                f.write(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return 2 * n

    before = worker_pids(db)
    listener = db.apply(ObjectModel('fatal', object=fatal_once).to_listener('nums', key='n', identifier='fatal'))
    killed = int(marker.read_text())
    assert killed in before
    assert outputs(db, listener) == {f'r{i:04d}': 2 * i for i in range(ROWS)}
    (job,) = db.jobs('fatal')
    assert (job['status'], job['done'], job['failed']) == ('success', ROWS, 0)
    assert db.failures('fatal') == [] and db.status()[0]['pending'] == 0
    engine.wait_for_workers()  # Dask's nanny started a new worker process; Ray restarted the actor
    assert killed not in worker_pids(db) and len(worker_pids(db)) == 2


def test_writes_by_other_clients_are_computed_on_the_cluster(db_uri, tmp_path, engine):
    db = connect(db_uri, tmp_path, engine, poll_interval=0.1)  # follows changes in the background
    try:
        db.apply(Table('events', fields={'n': 'int'}, folds=False))
        listener = db.apply(ObjectModel('tag', object=Tagger(str(tmp_path / 'loads'))).to_listener('events', key='n'))
        writer = other_engine(db)
        with writer.begin() as conn:  # plain SQL, as another program would write
            conn.execute(sa.text('INSERT INTO events (id, n) VALUES (:id, :n)'),
                         [{'id': f'e{i}', 'n': i} for i in range(60)])
        writer.dispose()
        wait_for(lambda: db.databackend.count(listener.outputs) == 60, 60)
        assert {int(v.split('@')[1]) for v in outputs(db, listener).values()} <= worker_pids(db)
    finally:
        db.close()


def test_cli_worker_sends_change_batches_to_the_cluster(db_uri, tmp_path, engine):
    db = connect(db_uri, tmp_path, engine, follow_changes=False)
    db.apply(Table('events', fields={'n': 'int'}, folds=False))
    listener = db.apply(ObjectModel('tag', object=Tagger(str(tmp_path / 'loads'))).to_listener('events', key='n'))
    with db.databackend.engine.begin() as conn:
        conn.execute(sa.text('INSERT INTO events (id, n) VALUES (:id, :n)'),
                     [{'id': f'e{i}', 'n': i} for i in range(30)])
    env = {**os.environ, 'SUPERDUPER_ARTIFACT_STORE': f'filesystem://{tmp_path}/artifacts', 'PYTHONPATH': CHECKOUT}
    worker = subprocess.Popen(
        [sys.executable, '-m', 'superduper.cli', 'start', db_uri, '--once', '--compute', engine.other_uri],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    _, stderr = worker.communicate(timeout=120)
    assert worker.returncode == 0, stderr
    assert f'computing with {engine.name.capitalize()}ComputeBackend' in stderr
    found = outputs(db, listener)
    computed_by = {int(v.split('@')[1]) for v in found.values()}
    assert len(found) == 30 and not computed_by & {os.getpid(), worker.pid}  # by the cluster's workers
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
def test_training_runs_on_a_worker(ddb):
    db = ddb
    db.apply(Table('points', fields={'x': 'float', 'label': 'int'}))
    db['points'].insert([{'x': float(i), 'label': int(i >= 50)} for i in range(100)]).execute()
    model = SklearnModel('clf', object=MeanClassifier())
    model.fit(X='x', y='label', db=db, select=db['points'].select())
    assert model.object.fitted_by_ in worker_pids(db)  # the caller's model is the version fitted there
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
    original = DistributedCompute._send

    def send(self, db, batch, name):
        sent.append(batch)
        return original(self, db, batch, name)

    monkeypatch.setattr(DistributedCompute, '_send', send)
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


UNREACHABLE = {  # compute=, and the error it gives
    'dask': ('dask://tcp://127.0.0.1:{port}?timeout=1', "cannot reach the Dask scheduler at 'tcp://127.0.0.1:{port}'"),
    'ray': ('ray://127.0.0.1:{port}?timeout=1', "cannot reach the Ray cluster at '127.0.0.1:{port}'"),
}


@pytest.mark.parametrize('name', ENGINES)
def test_bad_configuration_names_the_uri_and_loses_nothing(tmp_path, name):
    pytest.importorskip({'dask': 'distributed', 'ray': 'ray'}[name])
    uri = f'sqlite://{tmp_path}/data.db'
    db = superduper(uri, follow_changes=False, progress=False)
    numbers_table(db, 20)
    db.close()

    port = free_port()
    compute, message = (text.format(port=port) for text in UNREACHABLE[name])
    with pytest.raises(ConfigError, match=re.escape(message) + '.*' + re.escape(f'compute={compute!r}')):
        superduper(uri, compute=compute)
    with pytest.raises(ConfigError, match=f"compute='{name}://' names no {name.capitalize()} cluster"):
        superduper(uri, compute=f'{name}://')
    with pytest.raises(ConfigError, match="in-memory database 'sqlite://:memory:'"):
        superduper('sqlite://:memory:', compute=f'{name}://local')
    with pytest.raises(ConfigError, match='DuckDB opens'):
        superduper(f'duckdb://{tmp_path}/x.duckdb', compute=f'{name}://local')
    with pytest.raises(ConfigError, match="in-memory artifact store 'memory://x'"):
        superduper(uri, artifact_store='memory://x', compute=f'{name}://local')
    db = superduper(uri, follow_changes=False)  # nothing stored was lost
    assert db['nums'].count().execute() == 20
    db.close()


@pytest.mark.parametrize('name', ENGINES)
def test_local_compute_needs_neither_engine(tmp_path, monkeypatch, name):
    modules = {'dask': ('dask', 'distributed'), 'ray': ('ray',)}[name]
    for module in modules:  # as if the engine were not installed
        monkeypatch.setitem(sys.modules, module, None)
    uri = f'sqlite://{tmp_path}/data.db'
    package = {'dask': r'dask\[distributed\]', 'ray': 'ray'}[name]
    hint = rf"'{name}://' needs the {package} package.*pip install 'superduper\[{name}\]'"
    with pytest.raises(MissingDependency, match=hint):
        superduper(uri, compute=f'{name}://local')
    db = superduper(uri, follow_changes=False, progress=False)
    numbers_table(db, 5)
    listener = db.apply(ObjectModel('double', object=lambda n: 2 * n).to_listener('nums', key='n'))
    assert len(outputs(db, listener)) == 5
    db.close()


# ---- engine-specific: starting a cluster of one's own -----------------------------------------------------------
def test_dask_local_starts_and_closes_a_local_cluster(tmp_path):
    pytest.importorskip('distributed')
    uri = f'sqlite://{tmp_path}/data.db'
    db = superduper(uri, compute='dask://local?n_workers=1', progress=False, follow_changes=False)
    assert repr(db.compute).startswith("DaskComputeBackend('dask://local?n_workers=1', LocalCluster at tcp://")
    numbers_table(db, 20)
    listener = db.apply(ObjectModel('double', object=lambda n: 2 * n).to_listener('nums', key='n'))
    assert outputs(db, listener) == {f'r{i:04d}': 2 * i for i in range(20)}
    cluster = db.compute.cluster
    db.close()
    assert cluster.status.name == 'closed'
    with pytest.raises(ConfigError, match="cannot start a LocalCluster with {'nonsense': 1}"):
        superduper(uri, compute='dask://local?nonsense=1')


RAY_LOCAL = textwrap.dedent("""
    import sys
    import ray
    from superduper import ObjectModel, Table, superduper
    from superduper.base.exceptions import ConfigError

    uri = sys.argv[1]
    try:
        superduper(uri, compute='ray://local?nonsense=1')
    except ConfigError as e:
        print('refused:', e)
    db = superduper(uri, compute='ray://local?num_cpus=1&object_store_memory=100000000', progress=False,
                    follow_changes=False)
    print(repr(db.compute))
    db.apply(Table('nums', fields={'n': 'int'}, folds=False))
    db['nums'].insert([{'id': f'r{i}', 'n': i} for i in range(20)]).execute()
    listener = db.apply(ObjectModel('double', object=lambda n: 2 * n).to_listener('nums', key='n'))
    print('outputs:', db.databackend.count(listener.outputs), 'cpus:', ray.cluster_resources()['CPU'])
    db.close()
    print('still running:', ray.is_initialized())
""")


def test_ray_local_starts_and_stops_ray_in_the_process(tmp_path):
    """In a process of its own: Ray is one per process, and this one already runs the suite's."""
    pytest.importorskip('ray')
    env = {**os.environ, 'PYTHONPATH': CHECKOUT}
    done = subprocess.run([sys.executable, '-c', RAY_LOCAL, f'sqlite://{tmp_path}/data.db'], cwd=CHECKOUT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("refused: compute='ray://local?nonsense=1': cannot start Ray with {'nonsense': 1}")
    assert lines[1].startswith("RayComputeBackend('ray://local?num_cpus=1&object_store_memory=100000000', "
                               'started here at ') and lines[1].endswith(', 1 workers)')
    assert lines[2:] == ['outputs: 20 cpus: 1.0', 'still running: False']


def test_ray_joins_a_running_instance_only_at_its_address(ray_cluster, tmp_path):
    gcs = ray_cluster.other_uri.split('://')[1].split('?')[0]
    uri = f'sqlite://{tmp_path}/data.db'
    db = superduper(uri, compute=f'ray://{gcs}?workers=1', follow_changes=False)
    assert repr(db.compute).endswith(f'cluster at {gcs}, 1 workers)')
    db.close()
    with pytest.raises(ConfigError, match='this process already uses the Ray instance at'):
        superduper(uri, compute='ray://local?num_cpus=1')
    too_many = f'ray://local?workers={RAY_CPUS + 1}&timeout=2'  # one actor more than the CPUs: it never starts
    with pytest.raises(ConfigError, match=re.escape(f'compute={too_many!r}: ') + rf'\d of {RAY_CPUS + 1} Ray workers '
                                          r'started \(each takes one CPU; [\d.]+ free\): ask for fewer'):
        superduper(uri, compute=too_many)
    db = superduper(uri, compute='ray://local?workers=2', follow_changes=False)  # their CPUs were given back
    db.close()
