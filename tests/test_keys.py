"""Tables another program made with the keys databases have: UUID and composite primary keys, on listeners (backfill,
writes by other clients, key changes), failures and retries, vector indexes and ``like()`` with and without
filters."""

from __future__ import annotations

import sys
import uuid

import cloudpickle
import numpy as np
import pytest
import sqlalchemy as sa

from conftest import SQL_BACKENDS
from superduper import ObjectModel, VectorIndex, superduper

cloudpickle.register_pickle_by_value(sys.modules[__name__])

COMPOSITE = 'CREATE TABLE things (a INTEGER, b VARCHAR(20), txt TEXT, n INTEGER, PRIMARY KEY (a, b))'
#: a key the database makes: its UUID type, or on SQLite (no such type) text holding a random UUID
DDL = {
    'uuid': {
        'postgresql': 'CREATE TABLE things (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), txt text, n int)',
        'mariadb': 'CREATE TABLE things (id UUID PRIMARY KEY DEFAULT UUID(), txt text, n int)',
        'duckdb': 'CREATE TABLE things (id UUID PRIMARY KEY DEFAULT gen_random_uuid(), txt text, n int)',
        'fakesnow': 'CREATE TABLE things (id VARCHAR(36) PRIMARY KEY DEFAULT UUID_STRING(), txt text, n int)',
        'sqlite': "CREATE TABLE things (id TEXT PRIMARY KEY DEFAULT (lower(hex(randomblob(4)) || '-' || hex(randomblob(2))"
                  " || '-4' || substr(hex(randomblob(2)), 2) || '-a' || substr(hex(randomblob(2)), 2) || '-'"
                  " || hex(randomblob(6)))), txt TEXT, n INTEGER)",
    },
    'composite': {backend: COMPOSITE for backend in SQL_BACKENDS},
}

pytestmark = [pytest.mark.sql_only('tables made by another program with SQL DDL, written to with plain SQL'),
              pytest.mark.requires('follows_other_writers', reason="other clients' writes reach listeners")]


def embed(text: str) -> np.ndarray:
    if text.startswith('bad'):
        raise ValueError(f'cannot embed {text!r}')
    vector = np.zeros(16, dtype=np.float32)
    for i, ch in enumerate(text.encode()):
        vector[(ch + i) % 16] += 1
    return vector / np.linalg.norm(vector)




def key_of(kind: str, row) -> object:
    return row['id'] if kind == 'uuid' else (row['a'], row['b'])


@pytest.mark.backends('sql', 'fakesnow')  # Snowflake on fakesnow too: a key the database makes, polled
def test_listener_failures_retry_and_search_on_a_uuid_key(backend, db_uri, tmp_path):
    failures_retry_and_search('uuid', backend, db_uri, tmp_path)


@pytest.mark.backends('sql', 'pgvector')  # pgvector: the search joins the outputs by the key's text
@pytest.mark.requires(change_capture='triggers', reason='composite keys are followed where triggers record changes')
def test_listener_failures_retry_and_search_on_a_composite_key(backend, db_uri, tmp_path):
    failures_retry_and_search('composite', backend, db_uri, tmp_path)


def test_a_composite_key_on_pgvector_0_8(pglite_uri, tmp_path):
    """pgvector 0.8 (PGlite's): a composite key's filtered search takes the index's candidates (its text has no
    index to join the iterative scan by), as on 0.6.2."""
    failures_retry_and_search('composite', 'pgvector', pglite_uri, tmp_path)


def failures_retry_and_search(kind: str, backend: str, db_uri: str, tmp_path) -> None:
    db = superduper(db_uri, artifact_store=f'filesystem://{tmp_path}/artifacts', progress=False, follow_changes=False)
    engine = db.databackend.engine
    texts = ['red shoes', 'blue shoes', 'green hat', 'bad row', 'yellow scarf']
    with engine.begin() as conn:
        conn.exec_driver_sql(DDL[kind][backend])
        if kind == 'uuid':
            conn.execute(sa.text('INSERT INTO things (txt, n) VALUES (:t, :n)'),
                         [{'t': t, 'n': i} for i, t in enumerate(texts)])
        else:
            conn.execute(sa.text('INSERT INTO things (a, b, txt, n) VALUES (:a, :b, :t, :n)'),
                         [{'a': i % 2, 'b': f'k{i}', 't': t, 'n': i} for i, t in enumerate(texts)])
    try:
        things = db['things']
        listener = ObjectModel('embed', object=embed, datatype='vector[float32:16]').to_listener(
            'things', key='txt', identifier='embed')
        db.apply(VectorIndex('idx', indexing_listener=listener))
        rows = {r['txt']: r for r in things.select().execute()}
        bad = key_of(kind, rows['bad row'])
        assert [f['source'] for f in db.failures('embed')] == [bad] and db.databackend.count(listener.outputs) == 4

        def nearest(candidates):
            return sorted(candidates, key=lambda t: -float(embed(t) @ embed('red shoes')))[:2]

        best = things.like({'txt': 'red shoes'}, vector_index='idx', n=2).execute().tolist()
        assert [r['txt'] for r in best] == nearest([t for t in texts if t != 'bad row'])
        assert all('_score' in r and key_of(kind, r) == key_of(kind, rows[r['txt']]) for r in best)
        filtered = things.like({'txt': 'red shoes'}, vector_index='idx', n=2).filter(things['n'] >= 1).execute()
        assert [r['txt'] for r in filtered] == nearest([t for t in texts[1:] if t != 'bad row'])
        db.cfg.exact_filter_limit = 1  # the other path: index candidates, then checked against the filter
        filtered = things.like({'txt': 'red shoes'}, vector_index='idx', n=2).filter(things['n'] >= 1).execute()
        assert [r['txt'] for r in filtered] == nearest([t for t in texts[1:] if t != 'bad row'])
        if backend == 'pgvector' and kind == 'composite':  # no iterative scan on 0.8 either: the key's text
            assert filtered.plan['strategy'] == 'ann, candidates checked against the filter', filtered.plan
        joined = things.select().outputs(listener.predict_id).execute().tolist()
        assert sum(r[listener.outputs] is not None for r in joined) == 4

        # another client fixes the bad row and moves a row to another key
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE things SET txt = 'fixed row' WHERE txt = 'bad row'"))
            if kind == 'uuid':
                conn.execute(sa.text("UPDATE things SET id = :new WHERE txt = 'green hat'"), {'new': str(uuid.uuid4())})
            else:
                conn.execute(sa.text("UPDATE things SET b = 'moved' WHERE txt = 'green hat'"))
        while db.listening.work():
            pass
        assert db.failures('embed') == [] and db.databackend.count(listener.outputs) == 5
        moved = things.like({'txt': 'green hat'}, vector_index='idx', n=1).execute().tolist()[0]
        assert moved['txt'] == 'green hat' and key_of(kind, moved) != key_of(kind, rows['green hat'])

        with engine.begin() as conn:  # fail again, then retry with the model fixed
            conn.execute(sa.text("UPDATE things SET txt = 'bad again' WHERE n = 0"))
        while db.listening.work():
            pass
        assert len(db.failures('embed')) == 1 and db.databackend.count(listener.outputs) == 4
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE things SET txt = 'good again' WHERE n = 0"))
        assert db.retry('embed') == 0 and db.databackend.count(listener.outputs) == 5
    finally:
        db.close()
