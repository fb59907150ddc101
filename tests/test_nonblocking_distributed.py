"""Non-blocking applies on a distributed engine: ``db.apply(..., wait=False)`` returns while the cluster computes the
backfill (driven from this process's background thread); the job handle follows it. One small cluster per engine,
in processes started in this checkout (the engines are a parameter: another joins with one entry in ``ENGINES``)."""

from __future__ import annotations

import os
import sys
import time

import cloudpickle
import pytest

import superduper.runtime.datalayer as datalayer_module
from superduper import ObjectModel, Table, superduper

from conftest import wait_for

# the model below is stored (and sent to the workers) by value: the workers cannot import this test module
cloudpickle.register_pickle_by_value(sys.modules[__name__])

ROWS = 40
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(datalayer_module.__file__)))

pytestmark = [pytest.mark.sql_only('the cluster fixture is started once per engine; SQL databases suffice'),
              pytest.mark.requires(shared=True, reason="the cluster's workers open the database themselves")]


def dask_cluster():
    """A LocalCluster of one worker process; yields the compute URI."""
    pytest.importorskip('distributed')
    from distributed import LocalCluster

    local = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=':0')
    try:
        yield f'dask://{local.scheduler_address}'
    finally:
        local.close()


def ray_cluster(request):
    """The test process's Ray instance (``ray_instance``); this client starts its own actor on it."""
    request.getfixturevalue('ray_instance')
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray pickles task arguments with its own copy
    yield 'ray://local?workers=1'


ENGINES = {'dask': lambda request: dask_cluster(), 'ray': ray_cluster}


@pytest.fixture(scope='module', params=sorted(ENGINES))
def compute(request):
    here = os.getcwd()
    os.chdir(CHECKOUT)  # the workers start here, so they import this superduper
    try:
        started = ENGINES[request.param](request)
        uri = next(started)
    finally:
        os.chdir(here)
    yield uri
    next(started, None)


#: the file the model waits on while it exists (set by the test before the model is stored, which keeps its value)
GATE_FILE = ''


def gated(text: str) -> str:
    open(GATE_FILE + '.entered', 'w').close()
    while os.path.exists(GATE_FILE):
        time.sleep(0.01)
    return text.upper()


def test_apply_returns_while_the_cluster_backfills(db_uri, tmp_path, compute):
    global GATE_FILE
    GATE_FILE = str(tmp_path / 'gate')
    open(GATE_FILE, 'w').close()
    db = superduper(db_uri, compute=compute, artifact_store=f'filesystem://{tmp_path}/artifacts', progress=False,
                    follow_changes=False)
    try:
        db.apply(Table('docs', fields={'txt': 'str'}))
        db['docs'].insert([{'txt': f'text {i}'} for i in range(ROWS)]).execute()
        model = ObjectModel('gated', object=gated, datatype='str')
        (job,), listener = db.apply(model.to_listener('docs', key='txt', identifier='gated'), wait=False)
        wait_for(lambda: os.path.exists(GATE_FILE + '.entered'), timeout=60)  # a worker computes it, held
        assert (job.status()['status'], job.status()['done']) == ('running', 0)
        os.unlink(GATE_FILE)
        assert job.wait(timeout=120)['done'] == ROWS
        assert sorted(r[listener.outputs] for r in db[listener.outputs].select().execute()) == sorted(
            f'TEXT {i}' for i in range(ROWS))
    finally:
        db.close()
