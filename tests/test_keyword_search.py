"""Keyword search (KeywordIndex, match()) and hybrid search (like() + match(), fused by reciprocal rank fusion) on
every backend, against BM25 and RRF computed here by hand.

BM25 here: Okapi with k1 = 1.2, b = 0.75, each distinct query term once; words are the runs of ASCII letters and
digits of the lower-cased text (the corpus is ASCII). The idf is the engine's: Lucene's ``ln(1 + (N - df + 0.5) /
(df + 0.5))`` in process, FTS5's ``ln((N - df + 0.5) / (df + 0.5))`` (floored at 1e-6) on SQLite. PostgreSQL
(``ts_rank_cd``) and MariaDB (its relevance) rank their own way: there the matched rows are checked, and their order
where the corpus leaves no doubt.
"""

from __future__ import annotations

import hashlib
import math
import random
import re

import numpy as np
import pytest
from conftest import plain_sql, wait_for

from superduper import KeywordIndex, ObjectModel, Table, VectorIndex, superduper
from superduper.base.exceptions import ComponentError, NotFound, QueryError
from superduper.components.model import ObjectReranker
from superduper.vector_search.bm25 import BM25Index

DIM = 8
TEXTS = [
    'trail running shoes for muddy trail races',
    'leather hiking boots',
    'running socks with cushioned soles',
    'waterproof hiking jacket',
    'road running shoes with carbon plates',
    'canvas shoes for summer',
    'merino wool socks',
    'marathon training plan for running beginners',
    'trail maps and compass',
    'lightweight shoes',
]
BRANDS = ['north', 'south', 'north', 'south', 'north', 'south', 'north', 'south', 'north', 'south']
EXACT = {None: 'lucene', 'fts5': 'fts5'}  # engines computing BM25: their idf


def words(text: str) -> list[str]:
    return re.findall(r'[a-z0-9]+', text.lower())


def bm25(docs: dict, query: str, idf_kind: str) -> list[tuple]:
    """(key, score) of the documents holding a query word, best first (equal scores by key)."""
    tokens = {k: words(t) for k, t in docs.items()}
    n_docs = len(tokens)
    avgdl = sum(len(t) for t in tokens.values()) / n_docs
    scores = {}
    for term in dict.fromkeys(words(query)):
        df = sum(term in t for t in tokens.values())
        if not df:
            continue
        if idf_kind == 'lucene':
            idf = math.log(1 + (n_docs - df + 0.5) / (df + 0.5))
        else:
            idf = max(math.log((n_docs - df + 0.5) / (df + 0.5)), 1e-6)
        for k, t in tokens.items():
            tf = t.count(term)
            if tf:
                scores[k] = scores.get(k, 0.0) + idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len(t) / avgdl))
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def embed(text: str) -> np.ndarray:
    seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
    return np.random.default_rng(seed).normal(size=DIM).astype(np.float32)


def nearest(docs: dict, query: str) -> list:
    q = embed(query) / np.linalg.norm(embed(query))
    scored = [(-float(embed(t) @ q / np.linalg.norm(embed(t))), k) for k, t in docs.items()]
    return [k for _, k in sorted(scored)]


def rrf(vector: list, keyword: list, weights=(1.0, 1.0), k: int = 60) -> list[tuple]:
    ranks = {}
    for part, keys in enumerate((vector, keyword)):
        for rank, key in enumerate(keys, 1):
            ranks.setdefault(key, [None, None])[part] = rank
    fused = {key: sum(w / (k + r) for w, r in zip(weights, rs) if r is not None) for key, rs in ranks.items()}
    order = sorted(ranks, key=lambda key: (-fused[key], ranks[key][0] or math.inf, ranks[key][1] or math.inf))
    return [(key, fused[key], *ranks[key]) for key in order]


@pytest.fixture
def corpus(db):
    db.apply(Table('docs', fields={'txt': 'str', 'brand': 'str'}))
    ids = db['docs'].insert([{'txt': t, 'brand': b} for t, b in zip(TEXTS, BRANDS)]).execute()
    index = db.apply(KeywordIndex('kw', select='docs', key='txt'))
    return db['docs'], dict(zip(ids, TEXTS)), index


def engine(db):
    return db.databackend.capabilities.full_text


def check_keyword(db, rows, docs: dict, query: str, n: int, pk: str, allowed=None):
    """``rows`` (a match() result) against BM25 by hand where the engine computes it, else the rows matched."""
    subset = {k: t for k, t in docs.items() if allowed is None or k in allowed}
    kind = engine(db)
    if kind in EXACT:
        expected = [(k, s) for k, s in bm25(docs, query, EXACT[kind]) if k in subset][:n]
        assert [r[pk] for r in rows] == [k for k, _ in expected]
        assert [r['_score'] for r in rows] == pytest.approx([s for _, s in expected], rel=1e-6)
    else:
        matching = [k for k, t in subset.items() if set(words(query)) & set(words(t))]
        assert {r[pk] for r in rows} <= set(matching) and len(rows) == min(n, len(matching))
        scores = [r['_score'] for r in rows]
        assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)


def test_keyword_search_is_bm25(corpus, db, pk):
    t, docs, index = corpus
    assert index.native == (engine(db) is not None)
    for query, n in (('running shoes', 10), ('running shoes', 3), ('trail', 5), ('Hiking, BOOTS!', 10)):
        rows = t.match(query, keyword_index='kw', n=n).execute().tolist()
        check_keyword(db, rows, docs, query, n, pk)
        assert all(r['txt'] == docs[r[pk]] for r in rows)
    assert t.match('zebra', keyword_index='kw').execute().tolist() == []
    if engine(db) in EXACT:  # one doubt-free order on every engine: more of the words, in a shorter text, first
        assert t.match('trail', keyword_index='kw').execute().tolist()[0][pk] == list(docs)[0]


def test_filtered_keyword_search_is_exact(corpus, db, pk):
    t, docs, _ = corpus
    north = {k for k, b in zip(docs, BRANDS) if b == 'north'}
    for n in (1, 2, 10):
        rows = t.filter(t['brand'] == 'north').match('running shoes', keyword_index='kw', n=n).execute().tolist()
        check_keyword(db, rows, docs, 'running shoes', n, pk, allowed=north)
        assert all(r['brand'] == 'north' for r in rows)
    one = t.filter(t['brand'] == 'south').match('running shoes', keyword_index='kw').select('txt').execute().tolist()
    assert [set(r) for r in one] == [{'txt', '_score'}] * len(one) and len(one) == 3  # 5, 7, 9


def test_hybrid_search_is_rrf_of_both_rankings(corpus, db, pk):
    t, docs, _ = corpus
    db.apply(VectorIndex('vec', indexing_listener=ObjectModel('emb', object=embed).to_listener('docs', key='txt')))
    query = 'running shoes'
    keyword_order = [r[pk] for r in t.match(query, keyword_index='kw', n=20).execute()]
    if engine(db) in EXACT:
        assert keyword_order == [k for k, _ in bm25(docs, query, EXACT[engine(db)])]
    expected = rrf(nearest(docs, query), keyword_order)
    rows = t.like({'txt': query}, vector_index='vec', n=5).match(query, keyword_index='kw').execute().tolist()
    assert [(r[pk], r['_vector_rank'], r['_keyword_rank']) for r in rows] == [(k, v, w) for k, _, v, w in expected[:5]]
    assert [r['_score'] for r in rows] == pytest.approx([s for _, s, _, _ in expected[:5]])
    weighted = t.like({'txt': query}, vector_index='vec', n=4).match(
        query, keyword_index='kw', weights={'vector': 0.5, 'keyword': 2}, rrf_k=10).execute().tolist()
    expected = rrf(nearest(docs, query), keyword_order, (0.5, 2.0), 10)
    assert [r[pk] for r in weighted] == [k for k, *_ in expected[:4]]
    assert [r['_score'] for r in weighted] == pytest.approx([s for _, s, _, _ in expected[:4]])


def test_filtered_hybrid_search_is_exact(corpus, db, pk):
    t, docs, _ = corpus
    db.apply(VectorIndex('vec', indexing_listener=ObjectModel('emb', object=embed).to_listener('docs', key='txt')))
    query = 'hiking socks'
    north = {k: txt for (k, txt), b in zip(docs.items(), BRANDS) if b == 'north'}
    keyword_order = [r[pk] for r in t.filter(t['brand'] == 'north').match(query, keyword_index='kw', n=20).execute()]
    assert set(keyword_order) == {k for k, txt in north.items() if {'hiking', 'socks'} & set(words(txt))}
    expected = rrf(nearest(north, query), keyword_order)
    rows = (t.filter(t['brand'] == 'north').like({'txt': query}, vector_index='vec', n=4)
            .match(query, keyword_index='kw').select('txt').execute().tolist())
    assert [r['txt'] for r in rows] == [docs[k] for k, *_ in expected[:4]]
    assert set(rows[0]) == {'txt', '_score', '_vector_rank', '_keyword_rank'}


def test_rerank_after_hybrid_reorders_the_fused_candidates(corpus, db, pk):
    t, docs, _ = corpus
    db.apply(VectorIndex('vec', indexing_listener=ObjectModel('emb', object=embed).to_listener('docs', key='txt')))
    query = 'trail running'
    overlap = ObjectReranker('overlap', object=lambda q, texts: [len(set(words(q)) & set(words(x))) for x in texts])
    keyword_order = [r[pk] for r in t.match(query, keyword_index='kw', n=20).execute()]
    fused = [k for k, *_ in rrf(nearest(docs, query), keyword_order)]
    best = sorted(fused, key=lambda k: -len(set(words(query)) & set(words(docs[k]))))[:3]  # stable: fused order
    rows = (t.like({'txt': query}, vector_index='vec', n=3).match(query, keyword_index='kw')
            .rerank(overlap, query, key='txt').select(pk).execute().tolist())
    assert [r[pk] for r in rows] == best
    assert [r['_rerank_score'] for r in rows] == [2, 1, 1] and set(rows[0]) == {pk, '_score', '_vector_rank',
                                                                                '_keyword_rank', '_rerank_score'}


def test_api_writes_are_searched(corpus, db, pk):
    t, docs, _ = corpus
    (new,) = t.insert([{'txt': 'zebra print shoes', 'brand': 'north'}]).execute()
    first = list(docs)[1]
    t.filter(t[pk] == first).update({'txt': 'zebra hiking boots'}).execute()
    t.filter(t[pk] == list(docs)[9]).delete().execute()
    docs = {**docs, new: 'zebra print shoes', first: 'zebra hiking boots'}
    del docs[list(docs)[9]]
    assert {r[pk] for r in t.match('zebra', keyword_index='kw').execute()} == {new, first}
    check_keyword(db, t.match('running shoes', keyword_index='kw').execute().tolist(), docs, 'running shoes', 10, pk)


@pytest.mark.sql_only('another client writes with plain SQL')
@pytest.mark.requires('follows_other_writers', reason="other clients' writes reach the index")
def test_plain_sql_writes_are_searched(corpus, db, pk):
    t, docs, _ = corpus
    ids = list(docs)
    plain_sql(db, ("INSERT INTO docs (id, txt, brand, _fold) VALUES ('zz', 'zebra print shoes', 'north', 'train')", {}),
              ('UPDATE docs SET txt = :t WHERE id = :i', {'t': 'zebra hiking boots', 'i': ids[1]}),
              ('DELETE FROM docs WHERE id = :i', {'i': ids[9]}))
    wait_for(lambda: {r[pk] for r in t.match('zebra', keyword_index='kw').execute()} == {'zz', ids[1]})
    wait_for(lambda: ids[9] not in {r[pk] for r in t.match('lightweight shoes', keyword_index='kw').execute()})
    docs = {**{k: v for k, v in docs.items() if k != ids[9]}, 'zz': 'zebra print shoes', ids[1]: 'zebra hiking boots'}
    check_keyword(db, t.match('running shoes', keyword_index='kw').execute().tolist(), docs, 'running shoes', 10, pk)


def test_bad_input_names_the_thing(corpus, db):
    t, _, _ = corpus
    with pytest.raises(NotFound, match="no keyword index named 'nope'; existing: kw"):
        t.match('shoes', keyword_index='nope').execute()
    db.apply(Table('other', fields={'body': 'str'}))
    with pytest.raises(QueryError, match="keyword index 'kw' indexes table 'docs', not 'other'"):
        db['other'].match('shoes', keyword_index='kw').execute()
    with pytest.raises(QueryError, match="match\\(\\) on 'docs' needs a non-empty text"):
        t.match('  ', keyword_index='kw')
    with pytest.raises(QueryError, match='weights are finite numbers >= 0'):
        t.match('shoes', keyword_index='kw', weights={'vector': -1})
    with pytest.raises(QueryError, match='weights are for "vector" and "keyword"'):
        t.match('shoes', keyword_index='kw', weights={'bm25': 1})
    with pytest.raises(ComponentError, match="KeywordIndex 'bad': table 'docs' has no field 'body'"):
        db.apply(KeywordIndex('bad', select='docs', key='body'))
    with pytest.raises(ComponentError, match="engine='fast'"):
        KeywordIndex('bad', select='docs', key='txt', engine='fast')
    db.apply(Table('counts', fields={'n': 'int'}))
    if engine(db) is not None:
        with pytest.raises(ComponentError, match="KeywordIndex 'bad': field 'n' of 'counts' holds int, not text"):
            db.apply(KeywordIndex('bad', select='counts', key='n'))
    if engine(db) is None:
        with pytest.raises(ComponentError, match="KeywordIndex 'bad': engine=\"native\" needs a database with a "
                                                 'full-text index'):
            db.apply(KeywordIndex('bad', select='docs', key='txt', engine='native'))
    assert db.show('KeywordIndex') == ['kw']  # nothing of the refused ones was stored


def test_keyword_index_is_a_versioned_component(corpus, db):
    t, _, index = corpus
    again = db.apply(KeywordIndex('kw', select='docs', key='txt'))
    assert again.uuid == index.uuid and db.load('KeywordIndex', 'kw').uuid == index.uuid
    db.remove('KeywordIndex', 'kw', recursive=True)
    with pytest.raises(NotFound, match="no keyword index named 'kw'"):
        t.match('shoes', keyword_index='kw').execute()
    db.apply(KeywordIndex('kw', select='docs', key='txt'))  # made again over the same table
    assert len(t.match('shoes', keyword_index='kw').execute().tolist()) == 4


@pytest.mark.backends('any')
def test_in_process_engine_on_a_database_with_its_own(db, pk):
    db.apply(Table('docs', fields={'txt': 'str', 'brand': 'str'}))
    ids = db['docs'].insert([{'txt': t, 'brand': b} for t, b in zip(TEXTS, BRANDS)]).execute()
    index = db.apply(KeywordIndex('kw', select='docs', key='txt', engine='inprocess', language='english'))
    assert not index.native and index.indexing_listener is not None
    rows = db['docs'].match('runs', keyword_index='kw').execute().tolist()  # stemmed: run
    assert {r[pk] for r in rows} == {ids[i] for i in (0, 2, 4, 7)}


@pytest.mark.backends('any')
def test_a_language_the_engine_cannot_stem_is_refused(db):
    db.apply(Table('docs', fields={'txt': 'str'}))
    with pytest.raises(ComponentError, match="SQLite FTS5 stems only English"):
        db.apply(KeywordIndex('kw', select='docs', key='txt', language='french'))
    with pytest.raises(ComponentError, match="KeywordIndex 'kw': no stemmer for language 'klingon'"):
        db.apply(KeywordIndex('kw', select='docs', key='txt', language='klingon', engine='inprocess'))
    assert db.show('KeywordIndex') == [] and db.show('Listener') == []


def test_the_in_process_engine_stays_exact_through_changes():
    rng = random.Random(0)
    vocabulary = ['alpha', 'beta', 'gamma', 'delta', 'epsilon']
    live: dict = {}
    index = BM25Index()
    for _ in range(3000):  # enough removals for a compaction or two
        key = rng.randrange(200)
        if rng.random() < 0.3:
            index.remove([key])
            live.pop(key, None)
        else:
            live[key] = ' '.join(rng.choice(vocabulary) for _ in range(rng.randint(1, 6)))
            index.upsert([(key, live[key])])
    for query in ('alpha delta', 'epsilon', 'beta beta gamma'):
        expected = bm25(live, query, 'lucene')
        found = index.search(query, 1000)
        assert [k for k, _ in found] == [k for k, _ in expected]  # equal scores by key
        assert [s for _, s in found] == pytest.approx([s for _, s in expected], rel=1e-9)
        odd = index.search(query, 7, allowed=lambda keys: {k for k in keys if k % 2}, chunk=3)
        assert odd == [h for h in found if h[0] % 2][:7]
    fresh = BM25Index()
    fresh.replace(live.items())
    rebuilt, kept = fresh.search('alpha delta', 1000), index.search('alpha delta', 1000)
    assert [k for k, _ in rebuilt] == [k for k, _ in kept]
    assert [s for _, s in rebuilt] == pytest.approx([s for _, s in kept], rel=1e-9)


@pytest.mark.backends('any')
def test_another_process_finds_the_rows_written_here(db, db_uri, tmp_path, pk):
    """The in-process engine of another datalayer follows the outputs this one writes, within a poll interval."""
    db.apply(Table('docs', fields={'txt': 'str', 'brand': 'str'}))
    db.apply(KeywordIndex('kw', select='docs', key='txt', engine='inprocess'))
    other = superduper(db_uri, artifact_store=f'filesystem://{tmp_path}/artifacts', progress=False, poll_interval=0.1)
    try:
        assert other['docs'].match('zebra', keyword_index='kw').execute().tolist() == []
        (new,) = db['docs'].insert([{'txt': 'zebra print shoes', 'brand': 'north'}]).execute()
        wait_for(lambda: [r[pk] for r in other['docs'].match('zebra', keyword_index='kw').execute()] == [new])
        db['docs'].filter(db['docs'][pk] == new).delete().execute()
        wait_for(lambda: other['docs'].match('zebra', keyword_index='kw').execute().tolist() == [])
    finally:
        other.close()


@pytest.mark.backends('any')
@pytest.mark.parametrize('kind', ['auto', 'inprocess'])
def test_an_index_over_a_filtered_select_searches_only_its_rows(db, pk, kind):
    db.apply(Table('docs', fields={'txt': 'str', 'brand': 'str'}))
    ids = db['docs'].insert([{'txt': t, 'brand': b} for t, b in zip(TEXTS, BRANDS)]).execute()
    t = db['docs']
    db.apply(KeywordIndex('kw', select=t.filter(t['brand'] == 'north'), key='txt', engine=kind))
    rows = t.match('running shoes', keyword_index='kw').execute().tolist()
    assert {r[pk] for r in rows} == {ids[i] for i in (0, 2, 4)}
