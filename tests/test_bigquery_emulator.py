"""BigQuery on the local emulator (``local-bigquery`` 0.3.2, in a Python 3.13 venv of its own: ``bigquery_emulator``).

The emulator is started for the session on free ports from the venv ``python tests/bigquery_emulator.py setup`` makes
(the README's test command runs it); without that venv the tests are skipped on a developer's machine and fail in
CI (``CI`` set). ``SUPERDUPER_TEST_BIGQUERY_EMULATOR`` names a running emulator to use instead
(``http://127.0.0.1:9050``). Each test works in a dataset of its own.
"""

from __future__ import annotations

import os
import time
import uuid

import numpy as np
import pytest

import bigquery_emulator
from bigquery_emulator import PROJECT
from conftest import IN_CI

GIVEN = os.environ.get('SUPERDUPER_TEST_BIGQUERY_EMULATOR')  # read before the tests clear SUPERDUPER_* settings
pytestmark = pytest.mark.filterwarnings('ignore::UserWarning')  # no BigQuery Storage client


@pytest.fixture(scope='session')
def endpoint():
    if GIVEN:
        yield GIVEN
        return
    if not bigquery_emulator.ready():
        message = (f'no BigQuery emulator venv at {bigquery_emulator.VENV}: run `{bigquery_emulator.SETUP_COMMAND}` '
                   f'(needs Python 3.13), or name a running emulator in SUPERDUPER_TEST_BIGQUERY_EMULATOR')
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    emulator = bigquery_emulator.Emulator()
    yield emulator.endpoint
    emulator.stop()


@pytest.fixture
def client(endpoint):
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    return bigquery.Client(project=PROJECT, credentials=AnonymousCredentials(),
                           client_options=ClientOptions(api_endpoint=endpoint))


@pytest.fixture
def dataset(client):
    name = 'sd' + uuid.uuid4().hex[:10]
    client.create_dataset(name)
    yield name
    client.delete_dataset(name, delete_contents=True, not_found_ok=True)


@pytest.fixture
def open_db(endpoint, dataset):
    """Opens the test's dataset (again, for a second look); each one opened is closed after the test. Where other
    clients' writes are not what a test is about, it opens with ``follow_changes=False``: each poll is a few queries,
    which take the emulator's time from the test's own."""
    from superduper import superduper

    opened = []

    def open_db(**settings):
        opened.append(superduper(f'bigquery://{PROJECT}/{dataset}?api_endpoint={endpoint}', progress=False, **settings))
        return opened[-1]

    yield open_db
    for db in opened:
        db.close()


def wait_until(check, seconds: float = 120.0) -> None:
    deadline = time.time() + seconds
    while not check():
        assert time.time() < deadline, 'not reached in time'
        time.sleep(0.5)


def test_tables_keys_and_reads(open_db):
    from superduper import Table

    db = open_db(follow_changes=False)
    db.apply(Table('docs', fields={'id': 'str', 'n': 'int', 'doc': 'json', 'v': 'vector[float32:3]'}))
    t = db['docs']
    t.insert([{'id': 'a', 'n': 1, 'doc': {'k': [1]}, 'v': np.float32([1, 2, 3])},
              {'id': 'b', 'n': 2, 'doc': None, 'v': None}]).execute()
    got = {r['id']: r for r in t.filter(t['n'] >= 1).execute()}
    assert got['a']['doc'] == {'k': [1]} and np.array_equal(got['a']['v'], np.float32([1, 2, 3]))
    assert got['b']['v'] is None and got['b']['doc'] is None
    reopened = open_db(follow_changes=False).databackend
    assert reopened._reflect('docs').primary_key.columns.keys() == ['id']  # declared NOT ENFORCED, read back


def test_other_clients_writes_are_polled(open_db, dataset, client):
    """Another client's inserts, then its update and delete, reach the listener's outputs (by polling)."""
    from superduper import ObjectModel, Table

    db = open_db(poll_interval=1)
    db.apply(Table('docs', fields={'id': 'str', 'txt': 'str'}))
    listener = ObjectModel('upper', object=str.upper).to_listener('docs', key='txt', identifier='upper')
    db.apply(listener)

    def outputs():
        return {r['_source']: r[listener.outputs] for r in db[listener.outputs].select().execute()}

    client.query(f"INSERT INTO {dataset}.docs (id, txt) VALUES ('a', 'one'), ('b', 'two')").result()
    wait_until(lambda: outputs() == {'a': 'ONE', 'b': 'TWO'})
    client.query(f"UPDATE {dataset}.docs SET txt = 'uno' WHERE id = 'a'").result()
    client.query(f"DELETE FROM {dataset}.docs WHERE id = 'b'").result()
    wait_until(lambda: outputs() == {'a': 'UNO'})


def searched_as_numpy_does(db, measures: list[str]) -> None:
    """Each measure (an index of its own over the same outputs) ranks and scores a filtered search as numpy does,
    in one query in the warehouse."""
    from superduper import ObjectModel, Table, VectorIndex

    rng = np.random.default_rng(7)
    matrix = rng.normal(size=(12, 4)).astype(np.float32)
    db.apply(Table('vecs', fields={'v': 'vector[float32:4]', 'cat': 'int'}))
    ids = db['vecs'].insert([{'v': matrix[i], 'cat': i % 3} for i in range(12)]).execute()
    listener = ObjectModel('ident', object=lambda v: v, datatype='vector[float32:4]').to_listener(
        'vecs', key='v', identifier='ident')
    q = rng.normal(size=4).astype(np.float32)
    v = matrix[1::3].astype(np.float64)
    numpy_scores = {'cosine': v @ q / np.linalg.norm(v, axis=1) / np.linalg.norm(q), 'dot': v @ q,
                    'l2': -((v - q) ** 2).sum(axis=1)}
    t = db['vecs']
    for measure in measures:
        db.apply(VectorIndex(f'nat-{measure}', indexing_listener=listener, measure=measure))
        assert db.vector_indexes.get(f'nat-{measure}').native
        got = [(r['id'], r['_score'])
               for r in t.like(q, vector_index=f'nat-{measure}', n=3).filter(t['cat'] == 1).execute()]
        expected = sorted(zip(ids[1::3], numpy_scores[measure]), key=lambda p: -p[1])[:3]
        assert [i for i, _ in got] == [i for i, _ in expected], measure
        assert [s for _, s in got] == pytest.approx([s for _, s in expected], rel=1e-4, abs=1e-4), measure


def test_filtered_search_in_the_warehouse_is_exact(open_db):
    """``COSINE_DISTANCE``, and ``EUCLIDEAN_DISTANCE`` alone (l2) and with the norms that make it a dot product."""
    searched_as_numpy_does(open_db(follow_changes=False), ['cosine', 'dot', 'l2'])
