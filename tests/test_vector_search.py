"""Vector search on the user's own database: like() with filters, follow-up, reload, compatible listeners."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import threading

import numpy as np
import pytest
import sqlalchemy as sa

from superduper import ObjectModel, Table, VectorIndex, superduper
from superduper.base.exceptions import ComponentError, InvalidValue, NotFound, QueryError
from superduper.runtime.vector_indexes import VectorIndexes

DIM = 16


#: every backend, plus PostgreSQL with pgvector (search pushed down to the database)
pytestmark = pytest.mark.backends('all', 'pgvector')


def embed(text: str) -> np.ndarray:
    """A deterministic pseudo-embedding: the same text always gives the same vector."""
    seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
    return np.random.default_rng(seed).normal(size=DIM).astype(np.float32)


def counted_embed(text: str) -> np.ndarray:
    with open(os.environ['EMBED_CALLS'], 'a') as f:
        f.write('.')
    return embed(text)


def brute_force(texts: dict, query: np.ndarray, n: int, allowed=None) -> list:
    q = query / np.linalg.norm(query)
    scored = []
    for id_, text in texts.items():
        if allowed is not None and id_ not in allowed:
            continue
        v = embed(text)
        scored.append((float(v @ q / np.linalg.norm(v)), id_))
    return [id_ for _, id_ in sorted(scored, reverse=True)[:n]]


@pytest.fixture
def items(db):
    db.apply(Table('items', fields={'txt': 'str', 'brand': 'str', 'price': 'int'}))
    rows = [{'txt': f'item {i}', 'brand': ['nike', 'puma', 'adidas', 'asics'][i % 4], 'price': i} for i in range(400)]
    ids = db['items'].insert(rows).execute()
    index = VectorIndex('idx', indexing_listener=ObjectModel('emb', object=embed).to_listener('items', key='txt'))
    db.apply(index)
    return db['items'], dict(zip(ids, [r['txt'] for r in rows])), index


def test_self_search_and_scores(items, pk):
    t, texts, _ = items
    for id_, text in list(texts.items())[:5]:
        (best,) = t.like({'txt': text}, vector_index='idx', n=1).execute().tolist()
        assert best[pk] == id_ and best['_score'] == pytest.approx(1.0, abs=1e-5)
    rows = t.like({'txt': 'item 7'}, vector_index='idx', n=10).select('txt').execute().tolist()
    assert [r['_score'] for r in rows] == sorted((r['_score'] for r in rows), reverse=True)
    assert set(rows[0]) == {'txt', '_score'}


@pytest.mark.parametrize('brands', [['nike'], ['nike', 'puma', 'adidas', 'asics'], []])
def test_filtered_search_matches_brute_force(items, brands, pk):
    t, texts, _ = items
    query = embed('a query')
    allowed = {i for i, txt in texts.items() if ['nike', 'puma', 'adidas', 'asics'][int(txt.split()[1]) % 4] in brands}
    for built in (t.like(query, vector_index='idx', n=10).filter(t['brand'].isin(brands)),
                  t.filter(t['brand'].isin(brands)).like(query, vector_index='idx', n=10)):
        got = [r[pk] for r in built.execute()]
        assert got == brute_force(texts, query, 10, allowed)


def test_exact_count_for_selective_filters(db, items, pk):
    t, texts, _ = items
    db.cfg.exact_filter_limit = 50  # force the ANN-then-check path for filters matching more rows
    query = embed('another query')
    for cond, allowed in [
        (t['price'] < 3, {i for i, x in texts.items() if int(x.split()[1]) < 3}),
        (t['price'] >= 100, {i for i, x in texts.items() if int(x.split()[1]) >= 100}),
    ]:
        got = [r[pk] for r in t.like(query, vector_index='idx', n=10).filter(cond).execute()]
        expected = brute_force(texts, query, 10, allowed)
        assert len(got) == min(10, len(allowed)) and got == expected


def test_follows_inserts_updates_deletes(items, pk):
    t, texts, _ = items
    (new_id,) = t.insert([{'txt': 'brand new', 'brand': 'nike', 'price': 1}]).execute()
    assert t.like({'txt': 'brand new'}, vector_index='idx', n=1).execute().tolist()[0][pk] == new_id
    victim = next(iter(texts))
    t.filter(t[pk] == victim).update({'txt': 'renamed thing'}).execute()
    assert t.like({'txt': 'renamed thing'}, vector_index='idx', n=1).execute().tolist()[0][pk] == victim
    assert t.like({'txt': texts[victim]}, vector_index='idx', n=1).execute().tolist()[0][pk] != victim
    t.filter(t[pk] == new_id).delete().execute()
    assert new_id not in [r[pk] for r in t.like({'txt': 'brand new'}, vector_index='idx', n=50).execute()]


@pytest.mark.requires(native_vectors=False, reason='an index of its own to keep current (native: the database searches)')
def test_an_index_update_that_fails_is_shown_and_caught_up(db, items, pk):
    t, _, index = items
    loaded = db.vector_indexes.get('idx')
    original = loaded.searcher.upsert

    def broken(ids, vectors):
        raise MemoryError('no room for the new vectors')

    loaded.searcher.upsert = broken
    (new_id,) = t.insert([{'txt': 'arrived while broken', 'brand': 'nike', 'price': 1}]).execute()  # stored anyway
    (best,) = t.like({'txt': 'arrived while broken'}, vector_index='idx', n=1).execute().tolist()
    assert best[pk] != new_id  # the search answers from what the index holds
    (status,) = db.status()
    assert "VectorIndex 'idx'" in status['problem'] and 'no room for the new vectors' in status['problem']
    loaded.searcher.upsert = original
    (best,) = t.like({'txt': 'arrived while broken'}, vector_index='idx', n=1).execute().tolist()
    assert best[pk] == new_id and 'VectorIndex' not in (db.status()[0]['problem'] or '')


def test_limit_select_outputs_and_get(items):
    t, _, index = items
    listener = index.indexing_listener
    rows = t.like({'txt': 'item 3'}, vector_index='idx', n=10).select('txt').outputs(listener.predict_id).limit(3).execute().tolist()
    assert len(rows) == 3 and rows[0]['txt'] == 'item 3'
    assert rows[0][listener.outputs].shape == (DIM,)
    assert t.like({'txt': 'item 3'}, vector_index='idx', n=5).get().execute()['txt'] == 'item 3'


@pytest.mark.requires('opened_by_uri', reason='the database is opened again by its URI')
def test_reopened_index_catches_up_with_what_changed_without_recomputing(db, db_uri, tmp_path, backend, pk,
                                                                         monkeypatch):
    calls = tmp_path / 'calls.txt'
    monkeypatch.setenv('EMBED_CALLS', str(calls))
    db.apply(Table('docs', fields={'txt': 'str'}))
    ids = db['docs'].insert([{'txt': f'doc {i}'} for i in range(50)]).execute()
    index = VectorIndex('docs-idx', indexing_listener=ObjectModel('cemb', object=counted_embed).to_listener('docs', key='txt'),
                        searcher='pgvector' if backend == 'pgvector' else 'hnsw')
    db.apply(index)
    db.vector_indexes.get('docs-idx')  # opened here, so its state is saved when this process closes
    db.close()
    other = superduper(db_uri, artifact_store=f'filesystem://{tmp_path}/artifacts', progress=False)
    # while the searching process is down, another one changes a row and deletes another (computing outputs)
    other['docs'].filter(other['docs'][pk] == ids[0]).update({'txt': 'moved'}).execute()
    other['docs'].filter(other['docs'][pk] == ids[1]).delete().execute()
    other.close()
    calls_before = calls.read_text()

    rescans = []
    original = VectorIndexes._rescan
    monkeypatch.setattr(VectorIndexes, '_rescan', lambda self, *a: (rescans.append(1), original(self, *a))[1])
    again = superduper(db_uri, artifact_store=f'filesystem://{tmp_path}/artifacts', progress=False)
    try:
        docs = again['docs']
        assert docs.like(embed('moved'), vector_index='docs-idx', n=1).execute().tolist()[0][pk] == ids[0]
        assert ids[1] not in [r[pk] for r in docs.like(embed('doc 1'), vector_index='docs-idx', n=50).execute()]
        assert docs.like(embed('doc 7'), vector_index='docs-idx', n=1).execute().tolist()[0][pk] == ids[7]
        assert calls.read_text() == calls_before  # no embedding was recomputed
        assert rescans == []  # only what changed was read
        expected = 'pgvector' if backend == 'pgvector' else 'hnsw'
        assert again.vector_indexes.get('docs-idx').searcher.kind == expected
    finally:
        again.close()


@pytest.mark.requires('opened_by_uri', reason='the database is opened again by its URI')
def test_a_searcher_behind_forgotten_deletions_compares_with_the_whole_table(db, db_uri, tmp_path, items, pk):
    t, texts, _ = items
    away = superduper(db_uri, artifact_store=f'filesystem://{tmp_path}/artifacts', progress=False, poll_interval=0.01)
    try:
        assert len(away['items'].like(embed('item 1'), vector_index='idx', n=400).execute().tolist()) == 400
        gone = list(texts)[:5]
        t.filter(t[pk].isin(gone)).delete().execute()
        db.databackend.output_log().trim(-1.0)  # every deletion forgotten: the away process cannot read them
        found = [r[pk] for r in away['items'].like(embed('item 1'), vector_index='idx', n=400).execute()]
        assert len(found) == 395 and not set(gone) & set(found)
        assert len(away.vector_indexes.get('idx').searcher) == 395  # the deleted vectors left the index itself
    finally:
        away.close()


def test_compatible_listener_encodes_the_other_key(db):
    db.apply(Table('pics', fields={'caption': 'str', 'code': 'int'}))
    db['pics'].insert([{'caption': f'picture {i}', 'code': i} for i in range(30)]).execute()
    text_model = ObjectModel('text', object=embed)
    code_model = ObjectModel('code', object=lambda c: embed(f'picture {c}'))
    index = VectorIndex(
        'pics-idx',
        indexing_listener=text_model.to_listener('pics', key='caption'),
        compatible_listener=code_model.to_listener('pics', key='code'),
    )
    db.apply(index)
    (best,) = db['pics'].like({'code': 12}, vector_index='pics-idx', n=1).execute().tolist()
    assert best['caption'] == 'picture 12'


@pytest.mark.backends('postgresql', 'pgvector')
@pytest.mark.requires(native_vectors=True, reason='vectors stored and searched natively')
def test_pgvector_stores_and_searches_natively(db, backend):
    db.apply(Table('nat', fields={'txt': 'str', 'v': f'vector[float32:{DIM}]'}))
    db['nat'].insert([{'txt': 'a', 'v': embed('a')}]).execute()
    with db.databackend.engine.connect() as conn:
        kind = conn.exec_driver_sql("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                                    "WHERE attrelid = 'nat'::regclass AND attname = 'v'").scalar()
    assert kind == f'vector({DIM})'
    assert np.array_equal(db['nat'].get(txt='a').execute()['v'], embed('a'))
    listener = ObjectModel('emb', object=embed).to_listener('nat', key='txt')
    db.apply(VectorIndex('nat-idx', indexing_listener=listener))
    assert db.vector_indexes.get('nat-idx').searcher.kind == 'pgvector'


@pytest.mark.backends('pgvector')
def test_a_vector_table_described_by_the_database_takes_vectors(db):
    # a table read from the database (not declared here: another program's, or one re-read after another process
    # applied a component) has its VECTOR(n) column as pgvector's type, not as an unknown type taking raw bytes
    with db.databackend.engine.begin() as conn:
        conn.exec_driver_sql('CREATE EXTENSION IF NOT EXISTS vector')
        conn.exec_driver_sql(f'CREATE TABLE theirs (id TEXT PRIMARY KEY, v VECTOR({DIM}))')
    db['theirs'].insert([{'id': 'a', 'v': embed('a')}]).execute()
    assert np.allclose(db['theirs'].get(id='a').execute()['v'], embed('a'))
    listener = ObjectModel('emb', object=embed).to_listener('theirs', key='id')
    db.apply(VectorIndex('theirs-idx', indexing_listener=listener))
    db.databackend.forget(listener.outputs)  # as after another process applied a component
    db['theirs'].insert([{'id': 'b', 'v': embed('b')}]).execute()
    assert [r['id'] for r in db['theirs'].like({'id': 'b'}, vector_index='theirs-idx', n=1).execute()] == ['b']


def test_hnsw_recall_against_exact(db, pk):
    db.apply(Table('many', fields={'txt': 'str'}))
    db['many'].insert([{'txt': f'vector {i}'} for i in range(2000)]).execute()
    listener = ObjectModel('emb', object=embed).to_listener('many', key='txt')
    db.apply(VectorIndex('hnsw-idx', indexing_listener=listener, searcher='hnsw'))
    db.apply(VectorIndex('exact-idx', indexing_listener=listener, searcher='exact'))
    hits = 0
    for i in range(20):
        query = embed(f'query {i}')
        ann = {r[pk] for r in db['many'].like(query, vector_index='hnsw-idx', n=10).execute()}
        exact = {r[pk] for r in db['many'].like(query, vector_index='exact-idx', n=10).execute()}
        hits += len(ann & exact)
    assert hits / 200 >= 0.95


@pytest.mark.backends('sqlite', 'postgresql')
def test_searches_from_many_threads_at_once(items):
    """A server answers from a pool of threads; connections kept for reads must not be held by each of them (40 threads
    pinning one each would exhaust the pool, and the 16th would wait for one until it timed out)."""
    t, texts, _ = items
    barrier = threading.Barrier(40)

    def search(text: str) -> str:
        (best,) = t.like({'txt': text}, vector_index='idx', n=1).execute().tolist()
        barrier.wait(timeout=60)  # every thread is still alive while the others search
        return best['txt']

    wanted = list(texts.values())[:40]
    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        assert list(pool.map(search, wanted)) == wanted


@pytest.mark.requires(native_vectors=True, reason='vectors stored natively')
def test_a_table_declared_again_keeps_its_vectors_native_for_other_threads_meanwhile(items, monkeypatch):
    """When another process applies a component, this one declares its tables again; a consumer thread writing
    outputs in the meantime must still see the declared vector type (a reflected one takes the values differently:
    vectors were sent as bytes, and CI failed on it)."""
    t, _, index = items
    db, outputs = t.db, index.indexing_listener.outputs
    seen = []
    build = db.databackend._build

    def build_while_another_thread_looks(name, *args):
        if name == outputs:  # what a consumer thread would find while the table is declared again
            seen.append(db.databackend.native_vectors(outputs, outputs))
        return build(name, *args)

    monkeypatch.setattr(db.databackend, '_build', build_while_another_thread_looks)
    db.tables.clear()
    db.table_info(outputs)
    assert seen == [True]
    t.insert([{'txt': 'more', 'brand': 'nike', 'price': 1}]).execute()
    assert t.like({'txt': 'more'}, vector_index='idx', n=1).execute().tolist()[0]['txt'] == 'more'


def test_bad_input(db, items):
    t, _, _ = items
    with pytest.raises(InvalidValue, match=r"vector index 'idx' holds vectors of 16 values; the query vector has shape \(3,\)"):
        t.like([1.0, 2.0, 3.0], vector_index='idx').execute()
    with pytest.raises(NotFound, match=r"no vector index named 'nope'; existing: idx"):
        t.like({'txt': 'x'}, vector_index='nope').execute()
    with pytest.raises(QueryError, match=r"vector index 'idx' cannot encode key 'brand'; it encodes 'txt'"):
        t.like({'brand': 'x'}, vector_index='idx').execute()
    with pytest.raises(QueryError, match='n >= 1'):
        t.like({'txt': 'x'}, vector_index='idx', n=0)
    db.apply(Table('other', fields={'txt': 'str'}))
    with pytest.raises(QueryError, match="indexes table 'items', not 'other'"):
        db['other'].like({'txt': 'x'}, vector_index='idx').execute()
    with pytest.raises(ComponentError, match='outputs str, not vectors'):
        db.apply(VectorIndex('bad', indexing_listener=ObjectModel('up', object=str.upper).to_listener('items', key='txt')))
    with pytest.raises(ComponentError, match='measure='):
        VectorIndex('bad', indexing_listener=t and ObjectModel('e', object=embed).to_listener('items', key='txt'), measure='hamming')
    assert db.show('VectorIndex') == ['idx']
    assert t.count().execute() == 400


@pytest.mark.requires('opened_by_uri', reason='the database is opened again by its URI')
def test_search_makes_no_metadata_query_once_loaded(db_uri, tmp_path):
    db = superduper(db_uri, artifact_store=f'filesystem://{tmp_path}/artifacts', metadata_store=f'sqlite://{tmp_path}/meta.db',
                    poll_interval=60)  # within one poll interval: a loaded machine must not make this flaky
    try:
        db.apply(Table('docs', fields={'txt': 'str', 'brand': 'str'}))
        db['docs'].insert([{'txt': f'doc {i}', 'brand': 'ab'[i % 2]} for i in range(30)]).execute()
        db.apply(VectorIndex('idx', indexing_listener=ObjectModel('emb', object=embed).to_listener('docs', key='txt')))
        t = db['docs']
        t.like({'txt': 'doc 1'}, vector_index='idx', n=3).execute().tolist()  # loads what it needs
        statements = []
        sa.event.listen(db.metadata.engine, 'before_cursor_execute', lambda *args: statements.append(args[2]))
        for i in range(5):
            t.like({'txt': f'doc {i}'}, vector_index='idx', n=3).filter(t['brand'] == 'a').select('txt').execute().tolist()
        assert statements == []
    finally:
        db.close()


def test_hnsw_searcher_follows_updates_and_deletes_before_and_after_a_flush(tmp_path):
    """Written vectors wait outside the graph (searched exactly) until flushed; saved and loaded, nothing changes."""
    from superduper.vector_search.exact import ExactSearcher
    from superduper.vector_search.hnsw import HnswSearcher

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3000, DIM)).astype(np.float32)
    ids = [f'v{i}' for i in range(3000)]
    hnsw, exact = HnswSearcher(DIM), ExactSearcher(DIM)
    for searcher in (hnsw, exact):
        searcher.upsert(ids, vectors)
    hnsw.flush()
    moved = rng.normal(size=(500, DIM)).astype(np.float32)
    for searcher in (hnsw, exact):
        searcher.upsert(ids[:500], moved)
        searcher.remove(ids[500:700])
    assert len(hnsw.pending) == 500 and len(hnsw) == len(exact) == 2800

    def agreement(searcher) -> float:
        queries = np.concatenate([moved[:20], vectors[700:720]])
        found = [{i for i, _ in searcher.search(q, 10)} for q in queries]
        truth = [{i for i, _ in exact.search(q, 10)} for q in queries]
        assert not set().union(*found) & set(ids[500:700])  # deleted rows are never found
        return np.mean([len(f & t) / 10 for f, t in zip(found, truth)])

    assert agreement(hnsw) >= 0.95
    hnsw.save(str(tmp_path))
    assert not hnsw.pending and agreement(hnsw) >= 0.95  # flushed into the graph
    again = HnswSearcher(DIM)
    again.load(str(tmp_path))
    assert len(again) == 2800 and agreement(again) >= 0.95
    again.upsert(['new'], vectors[:1] * 2)
    assert again.search(vectors[0], 1)[0][0] == 'new'  # v0 itself was moved


# ---- search inside the database (pgvector, ClickHouse, DuckDB) -------------------------------------------------
def identity(v):
    return v


def numpy_nearest(vectors: dict, query: np.ndarray, n: int, measure: str, allowed=None) -> list:
    """(id, score) of the ``n`` nearest, computed here in float64: nearest first, equal scores by id."""
    q = query.astype(np.float64)
    scored = []
    for id_, v in vectors.items():
        if allowed is not None and id_ not in allowed:
            continue
        v = v.astype(np.float64)
        if measure == 'cosine':
            norms = np.linalg.norm(v) * np.linalg.norm(q)
            score = float(v @ q / norms) if norms else 0.0  # a zero vector has no direction: orthogonal
        elif measure == 'dot':
            score = float(v @ q)
        else:
            score = -float(((v - q) ** 2).sum())
        scored.append((-score, id_))
    return [(id_, -s) for s, id_ in sorted(scored)[:n]]


def assert_nearest(got: list, ranked: list, n: int, eps: float = 1e-5, ties_by_id: bool = False) -> None:
    """``got`` are the ``n`` nearest of ``ranked`` (every allowed id with its score, nearest first), up to the
    float32 arithmetic of the database: its scores equal ours, it is in our order except among scores within
    ``eps`` of each other (and with ``ties_by_id``, rows at exactly the same place come by id)."""
    scores = dict(ranked)
    assert len(got) == min(n, len(ranked)) and len({i for i, _ in got}) == len(got)
    assert [s for _, s in got] == pytest.approx([scores[i] for i, _ in got], rel=1e-4, abs=1e-4)
    cutoff = ranked[min(n, len(ranked)) - 1][1] if ranked else None
    assert all(scores[i] >= cutoff - eps for i, _ in got)  # none of the rows beyond the n nearest
    for (a, _), (b, _) in zip(got, got[1:]):
        assert scores[a] >= scores[b] - eps and (not ties_by_id or scores[a] != scores[b] or a < b)


@pytest.fixture
def vectors_table(db):
    return make_vectors_table(db)


def make_vectors_table(db, zero: bool = False):
    """300 rows with a vector field, duplicated vectors (ties) among them, and with ``zero`` a zero vector."""
    rng = np.random.default_rng(7)
    matrix = rng.normal(size=(300, DIM)).astype(np.float32)
    matrix[10:14] = matrix[3]  # five rows at exactly the same place
    if zero:
        matrix[20] = 0.0
    db.apply(Table('vecs', fields={'v': f'vector[float32:{DIM}]', 'cat': 'int', 'price': 'int'}))
    rows = [{'v': matrix[i], 'cat': i % 10, 'price': i} for i in range(300)]
    ids = db['vecs'].insert(rows).execute()
    return db['vecs'], dict(zip(ids, matrix)), rows


def native_index(db, name: str, measure: str = 'cosine') -> str:
    listener = ObjectModel(f'ident-{measure}', object=identity, datatype=f'vector[float32:{DIM}]').to_listener(
        'vecs', key='v', identifier=f'ident-{measure}')
    db.apply(VectorIndex(name, indexing_listener=listener, measure=measure))
    loaded = db.vector_indexes.get(name)
    assert loaded.native and db.databackend.native_vectors(listener.outputs, listener.outputs)
    return listener.outputs


def check_native_search(db, measure: str, pk: str, zero: bool = False, ties_by_id: bool = False) -> None:
    t, vectors, rows = make_vectors_table(db, zero)
    native_index(db, 'nat', measure)
    ids = list(vectors)
    by_id = dict(zip(ids, rows))
    rng = np.random.default_rng(1)
    queries = [rng.normal(size=DIM).astype(np.float32), vectors[ids[3]], vectors[ids[20]], vectors[ids[42]] * 3]
    filters = [
        (None, None),
        (t['cat'] == 1, {i for i in ids if by_id[i]['cat'] == 1}),  # 10%
        (t['cat'].isin([0, 1, 2, 3, 4]), {i for i in ids if by_id[i]['cat'] < 5}),  # 50%
        (t['price'] < 4, {i for i in ids if by_id[i]['price'] < 4}),  # fewer rows than asked for
        ((t['price'] >= 10) & (t['price'] < 14), {i for i in ids if 10 <= by_id[i]['price'] < 14}),  # all tied
        (t['cat'] == 99, set()),
    ]
    for query in queries:
        for cond, allowed in filters:
            for n in (1, 10, 400):
                like = t.like(query, vector_index='nat', n=n)
                got = [(r[pk], r['_score']) for r in (like if cond is None else like.filter(cond)).execute()]
                assert_nearest(got, numpy_nearest(vectors, query, len(vectors), measure, allowed), n,
                               ties_by_id=ties_by_id)


@pytest.mark.requires(native_vectors=True, reason='vectors stored and searched natively')
@pytest.mark.parametrize('measure', ['cosine', 'dot', 'l2'])
def test_native_search_is_exact_with_and_without_filters(db, measure, pk):
    check_native_search(db, measure, pk)


@pytest.mark.backends('chdb', 'duckdb')  # the search of vector_pushdown.py (pgvector: NaN, ties in any order)
@pytest.mark.parametrize('measure', ['cosine', 'dot', 'l2'])
def test_warehouse_search_orders_ties_by_key_and_a_zero_vector_as_in_process(db, measure, pk):
    check_native_search(db, measure, pk, zero=True, ties_by_id=True)


@pytest.mark.requires(native_vectors=True, reason='vectors stored and searched natively')
def test_native_search_sees_writes_at_once_in_one_query(db, vectors_table, pk):
    t, vectors, _ = vectors_table
    outputs = native_index(db, 'nat')
    db.cfg.poll_interval = 3600  # nothing to catch up with: the search reads the table
    far = -vectors[next(iter(vectors))]
    (new_id,) = t.insert([{'v': far, 'cat': 5, 'price': 1000}]).execute()
    assert [r[pk] for r in t.like(far, vector_index='nat', n=1).filter(t['cat'] == 5).execute()] == [new_id]
    moved = np.ones(DIM, dtype=np.float32)
    t.filter(t[pk] == new_id).update({'v': moved}).execute()
    assert [r[pk] for r in t.like(moved, vector_index='nat', n=1).execute()] == [new_id]
    assert t.like(far, vector_index='nat', n=1).execute().tolist()[0][pk] != new_id
    t.filter(t[pk] == new_id).update({'cat': 6}).execute()  # a filtered column changed: the filter sees it
    assert new_id not in [r[pk] for r in t.like(moved, vector_index='nat', n=50).filter(t['cat'] == 5).execute()]
    t.filter(t[pk] == new_id).delete().execute()
    assert new_id not in [r[pk] for r in t.like(moved, vector_index='nat', n=400).execute()]

    statements = []
    searching = threading.get_ident()  # the search's own statements, not the background consumer's (polling)
    record = lambda *args: statements.append(args[2]) if threading.get_ident() == searching else None  # noqa: E731
    sa.event.listen(db.databackend.engine, 'before_cursor_execute', record)
    try:
        t.like(moved, vector_index='nat', n=10).filter(t['cat'] == 5).execute().tolist()
    finally:
        sa.event.remove(db.databackend.engine, 'before_cursor_execute', record)
    assert len([s for s in statements if outputs in s]) == 1  # the search; then the rows are fetched by key


@pytest.mark.requires(native_vectors=True, reason='vectors stored and searched natively')
def test_vectors_stored_as_bytes_by_an_older_version_keep_working(db, db_uri, tmp_path, pk, monkeypatch):
    """A database whose vectors an earlier version stored as bytes is searched in process; new ones are native."""
    backend = type(db.databackend)
    with monkeypatch.context() as patch:
        patch.setattr(backend, 'field_type', lambda self, ftype: self.column_type(ftype.storage))
        t, vectors, _ = make_vectors_table(db)
        listener = ObjectModel('old', object=identity, datatype=f'vector[float32:{DIM}]').to_listener(
            'vecs', key='v', identifier='old')
        db.apply(VectorIndex('old-idx', indexing_listener=listener))
    db.close()
    again = superduper(db_uri, artifact_store=f'filesystem://{tmp_path}/artifacts', progress=False)
    try:
        t = again['vecs']
        query = np.random.default_rng(2).normal(size=DIM).astype(np.float32)
        (new_id,) = t.insert([{'v': query, 'cat': 1, 'price': 0}]).execute()
        vectors[new_id] = query
        loaded = again.vector_indexes.get('old-idx')
        assert not loaded.native and not again.databackend.native_vectors(listener.outputs, listener.outputs)
        got = [r[pk] for r in t.like(query, vector_index='old-idx', n=10).filter(t['cat'] == 1).execute()]
        allowed = {i for i in vectors if i == new_id or i in {r[pk] for r in t.filter(t['cat'] == 1).execute()}}
        assert got == [i for i, _ in numpy_nearest(vectors, query, 10, 'cosine', allowed)]
        assert np.array_equal(again[listener.outputs].select().execute().tolist()[0][listener.outputs].dtype,
                              np.float32)
        native_index(again, 'new-idx')  # a new listener's outputs are stored natively beside the old ones
        assert [r[pk] for r in t.like(query, vector_index='new-idx', n=10).filter(t['cat'] == 1).execute()] == got
    finally:
        again.close()


@pytest.mark.requires(native_vectors=True, reason='vectors stored and searched natively')
def test_an_index_made_before_any_vector_searches_natively_once_they_are_stored(db, pk):
    db.apply(Table('vecs', fields={'v': f'vector[float32:{DIM}]', 'cat': 'int', 'price': 'int'}))
    listener = ObjectModel('ident', object=identity, datatype=f'vector[float32:{DIM}]').to_listener(
        'vecs', key='v', identifier='ident')
    db.apply(VectorIndex('early', indexing_listener=listener))
    assert db['vecs'].like(np.ones(DIM, dtype=np.float32), vector_index='early', n=3).execute().tolist() == []
    matrix = np.random.default_rng(3).normal(size=(50, DIM)).astype(np.float32)
    ids = db['vecs'].insert([{'v': v, 'cat': 0, 'price': 0} for v in matrix]).execute()
    got = [(r[pk], r['_score']) for r in db['vecs'].like(matrix[7], vector_index='early', n=5).execute()]
    assert_nearest(got, numpy_nearest(dict(zip(ids, matrix)), matrix[7], 50, 'cosine'), 5)
    assert db.vector_indexes.get('early').native


#: the type a float32 vector field has in the database, as the database names it
NATIVE_TYPES = {
    'chdb': ("SELECT type FROM system.columns WHERE database = currentDatabase() AND table = 'nat' AND name = 'v'",
             'Array(Float32)'),
    'duckdb': ("SELECT data_type FROM information_schema.columns WHERE table_name = 'nat' AND column_name = 'v'",
               f'FLOAT[{DIM}]'),
}


@pytest.mark.backends('chdb', 'duckdb')
def test_warehouse_vectors_are_the_engines_own_arrays(db, backend):
    db.apply(Table('nat', fields={'txt': 'str', 'v': f'vector[float32:{DIM}]', 'w': 'vector[float64:2]'}))
    db['nat'].insert([{'txt': 'a', 'v': embed('a'), 'w': [0.1, 0.2]}, {'txt': 'b'}]).execute()
    sql, expected = NATIVE_TYPES[backend]
    with db.databackend.engine.connect() as conn:
        assert conn.exec_driver_sql(sql).scalar() == expected
    got = db['nat'].get(txt='a').execute()
    assert got['v'].dtype == np.float32 and np.array_equal(got['v'], embed('a'))
    assert db['nat'].get(txt='b').execute().get('v') is None
    t = db['nat']
    assert [r['txt'] for r in t.filter(t['v'] == None).execute()] == ['b']  # noqa: E711
    assert [r['txt'] for r in t.filter(t['v'] != None).execute()] == ['a']  # noqa: E711
    assert db.databackend.native_vectors('nat', 'v') and not db.databackend.native_vectors('nat', 'w')
