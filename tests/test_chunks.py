"""Chunks: ``Listener(..., flatten=True)`` stores one output row per item of a model's list, and an index over the
chunks searches the rows they come from. On every backend: the chunks' rows, their replacement on update and removal
on delete (through the API, and in plain SQL where other writers are followed), a vector index over the chunks
following both, ``like()`` returning each row once with its best chunk (exact under filters) or the chunks
themselves, ``select().outputs()`` of a flattening listener, a model that returns no list; and, on the databases
that record changes, crashes around the finishing transaction that leave no chunk lost, duplicated or stale."""

from __future__ import annotations

import signal
import subprocess
import sys

import cloudpickle
import numpy as np
import pytest
import sqlalchemy as sa

from conftest import other_engine, plain_sql, wait_at_gate, wait_for
from superduper import KeywordIndex, Listener, ObjectModel, Table, VectorIndex, superduper

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # worker processes cannot import this module
CLI = [sys.executable, '-m', 'superduper.cli']
VOCAB = ('apple', 'banana', 'cherry', 'date', 'elder', 'fig', 'grape')


def sentences(text: str) -> list[str]:
    """The test's splitter: a text's sentences (cut at '.')."""
    return [part.strip() for part in text.split('.') if part.strip()]


def embed(text: str) -> np.ndarray:
    """A cheap deterministic embedding: counts of the vocabulary's words, plus a constant so no vector is zero."""
    vector = np.zeros(len(VOCAB) + 1, dtype=np.float32)
    for word in text.split():
        if word in VOCAB:
            vector[VOCAB.index(word)] += 1
    vector[-1] = 0.01
    return vector


DOCS = [
    {'id': 'a', 'txt': 'apple banana. cherry date', 'brand': 'x'},
    {'id': 'b', 'txt': 'apple fig. grape', 'brand': 'y'},
    {'id': 'c', 'txt': 'cherry. cherry elder. fig', 'brand': 'x'},
]


def docs(db, pk: str, rows=DOCS) -> list:
    db.apply(Table('docs', fields={'id': 'str', 'txt': 'str', 'brand': 'str'}))
    db['docs'].insert([dict(r) for r in rows]).execute()
    return db['docs'].select(*dict.fromkeys([pk, 'id'])).execute().tolist()


def splitter(db, **kwargs):
    return db.apply(ObjectModel('sentences', object=sentences).to_listener('docs', key='txt', identifier='chunks',
                                                                          flatten=True, **kwargs))


def chunk_index(db, chunks):
    model = ObjectModel('embed', object=embed, datatype=f'vector[float32:{len(VOCAB) + 1}]')
    embedding = Listener(model=model, select=db[chunks.outputs].select(), key=chunks.outputs, upstream=[chunks],
                         identifier='embed')
    return db.apply(VectorIndex('chunk_index', indexing_listener=embedding))


def by_source(db, chunks, ids: dict) -> dict:
    """{doc id: [(position, chunk), ...]} from the chunks' table, checking each chunk's key."""
    found: dict = {}
    for row in db[chunks.outputs].select().execute():
        assert row['_chunk_id'] == f"{row['_source']}#{row['_position']}"
        found.setdefault(ids[row['_source']], []).append((row['_position'], row[chunks.outputs]))
    return {k: sorted(v) for k, v in found.items()}


def expected(rows) -> dict:
    return {r['id']: list(enumerate(sentences(r['txt']))) for r in rows if sentences(r['txt'])}


def key_of(pk: str, rows) -> dict:
    """{primary key: doc id} (on MongoDB the key is ``_id``, not the ``id`` field)."""
    return {r[pk]: r['id'] for r in rows}


def test_each_item_is_a_row_with_its_source_and_position(db, pk):
    ids = key_of(pk, docs(db, pk))
    chunks = splitter(db)
    assert by_source(db, chunks, ids) == expected(DOCS)
    (status,) = db.status()
    assert (status['done'], status['chunks'], status['failed']) == (3, 7, 0)
    db['docs'].insert([{'id': 'd', 'txt': 'elder. fig. grape. apple', 'brand': 'z'}, {'id': 'e', 'txt': '', 'brand': 'z'}]).execute()
    ids = key_of(pk, db['docs'].select(*dict.fromkeys([pk, 'id'])).execute())
    assert by_source(db, chunks, ids)['d'] == [(0, 'elder'), (1, 'fig'), (2, 'grape'), (3, 'apple')]
    assert 'e' not in by_source(db, chunks, ids)  # an empty list: no chunk


def test_an_update_replaces_every_chunk_and_a_delete_removes_them(db, pk):
    ids = key_of(pk, docs(db, pk))
    chunks = splitter(db)
    t = db['docs']
    t.filter(t['id'] == 'c').update({'txt': 'grape'}).execute()  # three chunks -> one
    t.filter(t['id'] == 'b').update({'txt': 'a. b. c. d. e'}).execute()  # two -> five
    t.filter(t['id'] == 'a').delete().execute()
    rows = [{'id': 'b', 'txt': 'a. b. c. d. e'}, {'id': 'c', 'txt': 'grape'}]
    assert by_source(db, chunks, ids) == expected(rows)
    t.filter(t['id'] == 'b').update({'txt': ''}).execute()  # no chunks at all
    assert by_source(db, chunks, ids) == expected(rows[1:])


@pytest.mark.sql_only('another client writes with plain SQL')
@pytest.mark.requires('follows_other_writers', reason='writes by other clients reach listeners')
def test_plain_sql_updates_and_deletes_replace_and_remove_chunks(db, pk):
    ids = key_of(pk, docs(db, pk))
    chunks = splitter(db)
    index = chunk_index(db, chunks)
    plain_sql(db, ("UPDATE docs SET txt = 'fig' WHERE id = 'c'", {}), ("DELETE FROM docs WHERE id = 'a'", {}),
              ("INSERT INTO docs (id, txt, brand, _fold) VALUES ('n', 'date. elder', 'z', 'train')", {}))
    ids['n'] = 'n'
    want = expected([{'id': 'b', 'txt': 'apple fig. grape'}, {'id': 'c', 'txt': 'fig'}, {'id': 'n', 'txt': 'date. elder'}])
    wait_for(lambda: by_source(db, chunks, ids) == want)
    wait_for(lambda: indexed(db, index) == {'b#0', 'b#1', 'c#0', 'n#0', 'n#1'})


def indexed(db, index) -> set:
    """The chunk ids the index holds, after it looked at its outputs (searched natively: those stored)."""
    loaded = db.vector_indexes.get(index.identifier)
    if loaded.native:
        outputs = index.indexing_listener.outputs
        return {r['_source'] for r in db[outputs].select('_source', outputs).execute() if r[outputs] is not None}
    searcher = loaded.searcher
    return {i for i, p in searcher.positions.items() if searcher.alive[p]}


def test_the_index_over_chunks_follows_their_replacement_and_removal(db, pk):
    rows = docs(db, pk)
    ids = key_of(pk, rows)
    text = {v: k for k, v in ids.items()}  # doc id -> the key text in chunk ids
    chunks = splitter(db)
    index = chunk_index(db, chunks)
    assert indexed(db, index) == {f'{text[d]}#{i}' for d, n in (('a', 2), ('b', 2), ('c', 3)) for i in range(n)}
    t = db['docs']
    t.filter(t['id'] == 'c').update({'txt': 'grape'}).execute()
    t.filter(t['id'] == 'a').delete().execute()
    assert indexed(db, index) == {f"{text['b']}#0", f"{text['b']}#1", f"{text['c']}#0"}
    hits = t.like({chunks.outputs: 'cherry'}, vector_index='chunk_index', n=10, chunks=True).execute()
    assert {h['_chunk'] for h in hits} == {'apple fig', 'grape'}  # no chunk of the old texts comes back


def test_like_returns_each_row_once_with_its_best_chunk(db, pk):
    ids = key_of(pk, docs(db, pk))
    chunks = splitter(db)
    chunk_index(db, chunks)
    t = db['docs']
    found = t.like({'txt': 'cherry'}, vector_index='chunk_index', n=2).execute().tolist()  # the field split
    assert [(ids[r[pk]], r['_chunk'], r['_position']) for r in found] == [('c', 'cherry', 0), ('a', 'cherry date', 1)]
    assert found[0]['txt'] == 'cherry. cherry elder. fig' and found[0]['_score'] == pytest.approx(1.0, abs=1e-3)
    # n rows come back when they exist, though the nearest chunks all belong to one
    three = t.like({chunks.outputs: 'cherry elder'}, vector_index='chunk_index', n=3).execute().tolist()
    assert sorted(ids[r[pk]] for r in three) == ['a', 'b', 'c'] and ids[three[0][pk]] == 'c'
    assert [r['_score'] for r in three] == sorted((r['_score'] for r in three), reverse=True)


def test_like_over_chunks_is_exact_under_filters(db, pk):
    many = [{'id': f'r{i:02d}', 'txt': f'{VOCAB[i % 7]}. {VOCAB[(i + 1) % 7]} {VOCAB[(i + 3) % 7]}',
             'brand': 'x' if i % 4 else 'y'} for i in range(40)]
    docs(db, pk, many)
    chunks = splitter(db)
    chunk_index(db, chunks)
    t = db['docs']
    query = embed('cherry fig')
    best = {}  # the exact answer, by hand: each y row's best chunk
    for r in many:
        if r['brand'] == 'y':
            best[r['id']] = max(_cosine(query, embed(c)) for c in sentences(r['txt']))
    want = sorted(best, key=lambda k: (-best[k], k))[:4]
    found = t.like({chunks.outputs: 'cherry fig'}, vector_index='chunk_index', n=4).filter(t['brand'] == 'y').execute().tolist()
    assert [r['brand'] for r in found] == ['y'] * 4
    assert [r['_score'] for r in found] == pytest.approx([best[k] for k in want], abs=1e-5)
    some = t.like({chunks.outputs: 'cherry fig'}, vector_index='chunk_index', n=3, chunks=True).filter(t['brand'] == 'y').execute().tolist()
    sources = {r[pk] for r in t.filter(t['brand'] == 'y').select(pk).execute()}
    assert len(some) == 3 and all(r['_source'] in sources for r in some)
    assert some[0]['_score'] == pytest.approx(best[want[0]], abs=1e-5)


def _cosine(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_hybrid_search_through_chunks_fuses_rows_with_their_best_chunk(db, pk):
    ids = key_of(pk, docs(db, pk))
    chunk_index(db, splitter(db))
    db.apply(KeywordIndex('kw', select='docs', key='txt'))
    t = db['docs']
    vector = t.like({'txt': 'cherry fig'}, vector_index='chunk_index', n=3).execute().tolist()
    keyword = [r[pk] for r in t.match('fig grape', keyword_index='kw', n=3).execute()]
    fused = {}  # RRF by hand from the two parts' own rankings (k = 60, weights 1)
    for ranking in ([r[pk] for r in vector], keyword):
        for rank, key in enumerate(ranking, 1):
            fused[key] = fused.get(key, 0) + 1 / (60 + rank)
    found = t.like({'txt': 'cherry fig'}, vector_index='chunk_index', n=3).match('fig grape', keyword_index='kw').execute().tolist()
    assert [r[pk] for r in found] == sorted(fused, key=lambda k: -fused[k])[:3]
    assert [r['_score'] for r in found] == pytest.approx(sorted(fused.values(), reverse=True)[:3])
    best = {r[pk]: (r['_chunk'], r['_position']) for r in vector}
    assert all((r['_chunk'], r['_position']) == best.get(r[pk], (None, None)) for r in found)
    assert {ids[r[pk]] for r in found if r['_keyword_rank'] is not None} == {'b', 'c'}


def test_chunks_on_request_and_by_searching_their_table(db, pk):
    ids = key_of(pk, docs(db, pk))
    chunks = splitter(db)
    chunk_index(db, chunks)
    t = db['docs']
    found = t.like({chunks.outputs: 'cherry'}, vector_index='chunk_index', n=3, chunks=True).execute().tolist()
    assert [(ids[r['_source']], r['_position'], r['_chunk']) for r in found] == [
        ('c', 0, 'cherry'), ('a', 1, 'cherry date'), ('c', 1, 'cherry elder')]
    assert found[0]['_chunk_id'] == f"{found[0]['_source']}#0"
    direct = db[chunks.outputs].like({chunks.outputs: 'cherry'}, vector_index='chunk_index', n=3).execute().tolist()
    assert [r['_chunk_id'] for r in direct] == [r['_chunk_id'] for r in found]


def test_select_outputs_of_a_flattening_listener_is_a_list_per_row(db, pk):
    docs(db, pk)
    chunks = splitter(db)
    rows = db['docs'].select('id').outputs(chunks.predict_id).execute()
    assert sorted((r['id'], r[chunks.outputs]) for r in rows) == [
        ('a', ['apple banana', 'cherry date']), ('b', ['apple fig', 'grape']), ('c', ['cherry', 'cherry elder', 'fig'])]
    assert all(set(r) == {'id', chunks.outputs} for r in rows)
    one = db['docs'].select('id').outputs(chunks.predict_id).get(id='b').execute()
    assert one == {'id': 'b', chunks.outputs: ['apple fig', 'grape']}


def test_a_model_returning_no_list_fails_per_row_naming_the_listener(db, pk):
    ids = key_of(pk, docs(db, pk))
    model = ObjectModel('maybe', object=lambda text: text if 'fig' in text else sentences(text))
    chunks = db.apply(model.to_listener('docs', key='txt', identifier='chunks', flatten=True))
    failed = db.failures('chunks')
    assert len(failed) == 2 and all("listener 'chunks' has flatten=True" in f['error'] and 'got str' in f['error']
                                    for f in failed)
    assert by_source(db, chunks, ids) == expected([DOCS[0]])  # the other row's chunks are stored


# ---- crashes and races (databases that record changes: another process finds what a dead one left) -----------


def chunk_faults(db, chunks) -> dict:
    """Chunks lost (a sentence of a row with no chunk), duplicated (two at one position of a row) and stale (a
    chunk of a row gone, or not the row's sentence at its position)."""
    with db.databackend.engine.connect() as conn:
        rows = dict(conn.execute(sa.text('SELECT id, txt FROM docs')).all())
        stored = conn.execute(sa.text(f'SELECT _source, _position, {chunks.outputs} FROM {chunks.outputs}')).all()
    seen: dict = {}
    duplicated = stale = 0
    for source, position, value in stored:
        duplicated += (source, position) in seen
        seen[(source, position)] = value
        want = sentences(rows[source]) if source in rows else []
        stale += position >= len(want) or want[position] != value
    lost = sum((k, i) not in seen for k, text in rows.items() for i, _ in enumerate(sentences(text)))
    return {'lost': lost, 'duplicated': duplicated, 'stale': stale}


@pytest.mark.sql_only('another client writes with plain SQL; the chunks are counted with SQL')
@pytest.mark.requires('workers_follow', reason='a worker finds the changes a dead process left')
@pytest.mark.requires(shared=True, reason='worker processes open the database')
@pytest.mark.parametrize('point', ['before_finish', 'after_finish'])
def test_a_worker_killed_around_storing_chunks_loses_and_duplicates_none(db_uri, tmp_path, env, point):
    db = superduper(db_uri, artifact_store=f'filesystem://{tmp_path}/artifacts', progress=False,
                    follow_changes=False, lease_seconds=2)
    try:
        db.apply(Table('docs', fields={'txt': 'str'}, folds=False))
        db['docs'].insert([{'id': f'r{i}', 'txt': '. '.join(['x'] * (i % 4 + 1))} for i in range(8)]).execute()
        chunks = db.apply(ObjectModel('sentences', object=sentences).to_listener('docs', key='txt',
                                                                                 identifier='chunks', flatten=True))
        plain_sql(db, ("UPDATE docs SET txt = 'one' WHERE id IN ('r3', 'r7')", {}),  # four chunks -> one
                  ("UPDATE docs SET txt = 'a. b. c' WHERE id = 'r0'", {}), ("DELETE FROM docs WHERE id = 'r2'", {}),
                  ("INSERT INTO docs (id, txt) VALUES ('new', 'p. q')", {}))
        died = subprocess.run(CLI + ['start', db_uri], timeout=120, env={**env, 'SUPERDUPER_FAULT': point})
        assert died.returncode == -signal.SIGKILL
        subprocess.run(CLI + ['start', db_uri, '--once'], env=env, check=True, timeout=120)
        assert chunk_faults(db, chunks) == {'lost': 0, 'duplicated': 0, 'stale': 0}
        assert db.status()[0]['pending'] == 0
    finally:
        db.close()


def gated_sentences(text: str) -> list[str]:
    """``sentences``; on a text starting with 'slow' it waits while the gate file exists (a model held where the
    test chooses)."""
    import os
    import time

    gate = os.environ.get('SD_TEST_GATE')
    if gate and text.startswith('slow'):
        open(gate + '.entered', 'w').close()
        while os.path.exists(gate):
            time.sleep(0.01)
    return sentences(text)


@pytest.mark.sql_only('another client writes with plain SQL; the chunks are counted with SQL')
@pytest.mark.requires('follows_other_writers', reason='writes by other clients reach listeners')
def test_an_older_change_never_overwrites_newer_chunks(db_uri, tmp_path, monkeypatch):
    """Consumer A takes an insert and splits it slowly; the row changes to fewer sentences; consumer B stores the
    newer chunks first; A finishes last: its older, longer list must not come back (nor any of its chunks)."""
    import threading

    gate = tmp_path / 'gate'
    monkeypatch.setenv('SD_TEST_GATE', str(gate))
    a, b = [superduper(db_uri, artifact_store=f'filesystem://{tmp_path}/artifacts', progress=False,
                       follow_changes=False, lease_seconds=2) for _ in range(2)]
    try:
        a.apply(Table('docs', fields={'txt': 'str'}, folds=False))
        chunks = a.apply(ObjectModel('gated', object=gated_sentences).to_listener('docs', key='txt', identifier='chunks',
                                                                                 flatten=True))
        gate.touch()
        plain_sql(a, ("INSERT INTO docs (id, txt) VALUES ('r', 'slow one. two. three')", {}))
        first = threading.Thread(target=a.listening.work)
        first.start()
        wait_at_gate(gate, first)
        plain_sql(a, ("UPDATE docs SET txt = 'fast' WHERE id = 'r'", {}))
        while b.listening.work():
            pass
        gate.unlink()
        first.join(timeout=60)
        while a.listening.work() + b.listening.work():
            pass
        assert chunk_faults(a, chunks) == {'lost': 0, 'duplicated': 0, 'stale': 0}
        assert [(r['_chunk_id'], r[chunks.outputs]) for r in a[chunks.outputs].select().execute()] == [('r#0', 'fast')]
    finally:
        a.close()
        b.close()


BROKEN = {'on': True}


def flaky_sentences(text: str) -> list[str]:
    if BROKEN['on'] and 'fig' in text:
        raise RuntimeError('the splitter is down')
    return sentences(text)


def test_failed_rows_keep_no_chunks_and_a_retry_stores_them(db, pk):
    ids = key_of(pk, docs(db, pk))
    BROKEN['on'] = True
    try:
        chunks = db.apply(ObjectModel('flaky', object=flaky_sentences).to_listener('docs', key='txt',
                                                                                  identifier='chunks', flatten=True))
        assert sorted(by_source(db, chunks, ids)) == ['a']
        t = db['docs']
        t.filter(t['id'] == 'a').update({'txt': 'fig. apple'}).execute()  # now failing: its old chunks go
        assert by_source(db, chunks, ids) == {} and len(db.failures('chunks')) == 3
        BROKEN['on'] = False
        assert db.retry('chunks') == 0
        want = expected([{'id': 'a', 'txt': 'fig. apple'}, *DOCS[1:]])
        assert by_source(db, chunks, ids) == want
    finally:
        BROKEN['on'] = True


@pytest.mark.backends('any')
def test_a_search_through_chunks_reranks_by_the_best_chunk(db, pk):
    from superduper.components.model import ObjectReranker

    docs(db, pk)
    chunks = splitter(db)
    chunk_index(db, chunks)
    t = db['docs']
    # the reranker scores each row's best chunk (its '_chunk') by its count of 'fig'
    figs = ObjectReranker('figs', object=lambda q, texts: [x.split().count('fig') for x in texts])
    found = t.like({'txt': 'fig'}, vector_index='chunk_index', n=1).rerank(figs, 'fig', key='_chunk').execute().tolist()
    assert [(r['id'], r['_chunk'], r['_rerank_score']) for r in found] == [('c', 'fig', 1.0)]
    top = t.like({'txt': 'fig'}, vector_index='chunk_index', n=2, chunks=True).rerank(figs, 'fig', key='_chunk')
    assert [r['_chunk'] for r in top.execute()] == ['fig', 'apple fig']


@pytest.mark.backends('parquet')
@pytest.mark.requires(change_capture='versions', reason="another program's Delta commits reach listeners")
def test_another_programs_delta_commits_replace_and_remove_chunks(db, pk, db_uri):
    import os
    import textwrap

    ids = key_of(pk, docs(db, pk))
    chunks = splitter(db)
    index = chunk_index(db, chunks)
    path = os.path.join(db_uri.split('://', 1)[1], 'docs')
    subprocess.run([sys.executable, '-c', textwrap.dedent(f"""
        import pyarrow as pa
        from deltalake import DeltaTable, write_deltalake
        DeltaTable({path!r}).update(updates={{'txt': "'fig'"}}, predicate="id = 'c'")
        DeltaTable({path!r}).delete("id = 'a'")
        table = DeltaTable({path!r}).to_pyarrow_table()
        write_deltalake({path!r}, pa.table({{'id': ['n'], 'txt': ['date. elder'], 'brand': ['z'], '_fold': ['train']}},
                                           schema=table.schema), mode='append')
    """)], check=True, timeout=120)
    ids['n'] = 'n'
    want = expected([{'id': 'b', 'txt': 'apple fig. grape'}, {'id': 'c', 'txt': 'fig'}, {'id': 'n', 'txt': 'date. elder'}])
    wait_for(lambda: by_source(db, chunks, ids) == want)
    wait_for(lambda: indexed(db, index) == {'b#0', 'b#1', 'c#0', 'n#0', 'n#1'})


@pytest.mark.backends('mongomock')
def test_change_stream_events_replace_and_remove_chunks(db, pk):
    """Another client's writes to a collection, as a change stream reports them (the server's stream stood in for,
    as in ``test_mongodb``): the chunks and the index over them follow."""
    from test_mongodb import Oplog, with_stream

    ids = key_of(pk, docs(db, pk))
    text = {v: str(k) for k, v in ids.items()}
    oplog = Oplog()
    consumer = with_stream(db, oplog)
    chunks = splitter(db)
    index = chunk_index(db, chunks)
    raw = db.databackend.database['docs']
    key = {v: k for k, v in ids.items()}
    raw.update_one({'_id': key['c']}, {'$set': {'txt': 'fig'}})
    oplog.add('update', 'docs', key['c'], 10)
    raw.delete_one({'_id': key['a']})
    oplog.add('delete', 'docs', key['a'], 11)
    new = raw.insert_one({'_id': 'n', 'id': 'n', 'txt': 'date. elder', 'brand': 'z'}).inserted_id  # keyed as superduper keys it
    oplog.add('insert', 'docs', new, 12)
    ids[new] = 'n'
    while consumer.consume():
        pass
    want = expected([{'id': 'b', 'txt': 'apple fig. grape'}, {'id': 'c', 'txt': 'fig'}, {'id': 'n', 'txt': 'date. elder'}])
    assert by_source(db, chunks, ids) == want
    assert indexed(db, index) == {f"{text['b']}#0", f"{text['b']}#1", f"{text['c']}#0", f'{new}#0', f'{new}#1'}


@pytest.mark.sql_only('another client writes with plain SQL; the chunks are counted with SQL')
@pytest.mark.requires('follows_other_writers', reason='writes by other clients reach listeners')
def test_two_consumers_and_a_writer_at_once_leave_each_rows_chunks_exactly_once(db_uri, tmp_path):
    import random
    import threading

    a, b = [superduper(db_uri, artifact_store=f'filesystem://{tmp_path}/artifacts', progress=False,
                       follow_changes=False, lease_seconds=2) for _ in range(2)]
    try:
        a.apply(Table('docs', fields={'txt': 'str'}, folds=False))
        a['docs'].insert([{'id': f'r{i}', 'txt': 'x. y'} for i in range(20)]).execute()
        chunks = a.apply(ObjectModel('sentences', object=sentences).to_listener('docs', key='txt',
                                                                               identifier='chunks', flatten=True))
        rng = random.Random(7)
        done = threading.Event()

        def write() -> None:  # another client: one connection, a transaction a step
            engine = other_engine(a)
            try:
                for _ in range(40):
                    key, text = f'r{rng.randrange(25)}', '. '.join(['w'] * rng.randrange(0, 5))
                    with engine.begin() as conn:
                        conn.execute(sa.text('DELETE FROM docs WHERE id = :k'), {'k': key})
                        if rng.random() > 0.15:
                            conn.execute(sa.text('INSERT INTO docs (id, txt) VALUES (:k, :t)'), {'k': key, 't': text})
            finally:
                engine.dispose()
                done.set()

        def consume(db) -> None:
            while not done.is_set():
                db.listening.work(limit=5)

        threads = [threading.Thread(target=write), threading.Thread(target=consume, args=(a,)),
                   threading.Thread(target=consume, args=(b,))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        while a.listening.work() + b.listening.work():
            pass
        assert chunk_faults(a, chunks) == {'lost': 0, 'duplicated': 0, 'stale': 0}
    finally:
        a.close()
        b.close()


def test_the_rest_search_goes_through_chunks_to_the_rows_they_were_cut_from(tmp_path):
    from fastapi.testclient import TestClient

    from superduper.server import create_app
    from superduper.server.settings import ServeSettings

    db = superduper(f'sqlite://{tmp_path}/db.sqlite', artifact_store=f'filesystem://{tmp_path}/a', progress=False)
    try:
        docs(db, 'id')
        chunks = splitter(db)
        chunk_index(db, chunks)
        with TestClient(create_app(db, ServeSettings(anonymous='read'))) as c:
            search = {'query': {'txt': 'cherry'}, 'n': 2, 'columns': ['id']}
            rows = c.post('/api/v1/indexes/chunk_index/search', json={**search, 'table': 'docs'}).json()['results']
            assert [(h['row']['id'], h['chunk'], h['position']) for h in rows] == [('c', 'cherry', 0), ('a', 'cherry date', 1)]
            direct = c.post('/api/v1/indexes/chunk_index/search',  # the index's own table: the chunks
                            json={'query': {chunks.outputs: 'cherry'}, 'n': 2}).json()['results']
            assert [h['row']['_chunk_id'] for h in direct] == ['c#0', 'a#1'] and 'chunk' not in direct[0]
            unknown = c.post('/api/v1/indexes/chunk_index/search', json={**search, 'table': 'nope'})
            assert unknown.status_code in (404, 422) and 'nope' in unknown.json()['error']
    finally:
        db.close()
