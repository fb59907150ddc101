"""The built-in text splitter: chunks within the size, cut at the widest boundary, overlapping, nothing lost."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from superduper import Table, TextSplitter, superduper
from superduper.base.exceptions import ComponentError

ARTICLE = ('First paragraph, first sentence. First paragraph, second sentence!\n\n'
           'Second paragraph is here. It has two sentences.\n\n'
           'Third paragraph: a single long sentence that goes on and on without stopping for quite a while')


def words(text: str) -> list[str]:
    return text.split()


def covers_in_order(chunks: list[str], text: str) -> bool:
    """Every word of ``text`` is in the chunks, in order (overlapping words may repeat)."""
    found = iter(w for chunk in chunks for w in chunk.split())
    return all(any(w == f for f in found) for w in text.split())


def test_whole_paragraphs_and_sentences_are_kept_together():
    chunks = TextSplitter('split', chunk_size=70, chunk_overlap=0).predict(ARTICLE)
    assert chunks[:2] == ['First paragraph, first sentence. First paragraph, second sentence!',
                          'Second paragraph is here. It has two sentences.']
    assert all(len(c) <= 70 for c in chunks) and covers_in_order(chunks, ARTICLE)


def test_sentences_then_words_when_a_paragraph_is_too_long():
    chunks = TextSplitter('split', chunk_size=40, chunk_overlap=0).predict(ARTICLE)
    assert chunks[0] == 'First paragraph, first sentence.'
    assert all(len(c) <= 40 for c in chunks) and covers_in_order(chunks, ARTICLE)
    assert not any(re.search(r'\w-$', c) for c in chunks)  # cut between words, not inside them


def test_consecutive_chunks_overlap():
    text = ' '.join(f'word{i}' for i in range(200))
    chunks = TextSplitter('split', chunk_size=60, chunk_overlap=20).predict(text)
    for before, after in zip(chunks, chunks[1:]):
        shared = [w for w in before.split()[-3:] if w in after.split()[:3]]
        assert shared, (before, after)
        assert len(after) <= 60
    assert covers_in_order(chunks, text)


def test_sizes_in_tokens():
    text = ' '.join(f'w{i}' for i in range(100))
    chunks = TextSplitter('split', chunk_size=10, chunk_overlap=2, tokenizer=words).predict(text)
    assert all(len(words(c)) <= 10 for c in chunks) and len(chunks) >= 10
    assert covers_in_order(chunks, text)


def test_a_word_longer_than_a_chunk_is_cut():
    assert TextSplitter('split', chunk_size=4, chunk_overlap=0).predict('abcdefghij') == ['abcd', 'efgh', 'ij']


def test_empty_and_missing_text():
    splitter = TextSplitter('split', chunk_size=10, chunk_overlap=0)
    assert splitter.predict('') == [] and splitter.predict('   \n\n ') == [] and splitter.predict(None) == []
    with pytest.raises(ComponentError, match="TextSplitter 'split' splits text, got int"):
        splitter.predict(3)


@pytest.mark.parametrize('arguments, message', [
    ({'chunk_size': 0}, 'chunk_size is a whole number >= 1, got 0'),
    ({'chunk_size': 10, 'chunk_overlap': 10}, r'chunk_overlap is a whole number from 0 to below chunk_size \(10\), got 10'),
    ({'chunk_overlap': -1}, 'chunk_overlap is a whole number'),
    ({'tokenizer': 'bert'}, 'tokenizer is a callable'),
    ({'boundaries': ['(']}, r"boundary '\(' is not a regular expression"),
])
def test_bad_settings_are_refused_by_name(arguments, message):
    with pytest.raises(ComponentError, match=f"TextSplitter 'bad': {message}"):
        TextSplitter('bad', **arguments)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from('ab .!\n'), max_size=300), st.integers(1, 40), st.data())
def test_any_text_is_split_within_the_size_losing_nothing(text, size, data):
    overlap = data.draw(st.integers(0, size - 1))
    chunks = TextSplitter('split', chunk_size=size, chunk_overlap=overlap).predict(text)
    assert all(0 < len(c) <= size for c in chunks)
    if overlap == 0:  # without overlap the chunks are the text, cut, less the whitespace at the cuts
        assert ''.join(''.join(c.split()) for c in chunks) == ''.join(text.split())


def test_a_listener_stores_each_documents_chunks(tmp_path):
    db = superduper(f'sqlite://{tmp_path}/db.sqlite', artifact_store=f'filesystem://{tmp_path}/a', progress=False)
    try:
        db.apply(Table('docs', fields={'txt': 'str'}))
        db['docs'].insert([{'id': 'a', 'txt': ARTICLE}]).execute()
        listener = db.apply(TextSplitter('chunks', chunk_size=70, chunk_overlap=0).to_listener('docs', key='txt'))
        row = db['docs'].select().outputs(listener.predict_id).execute().tolist()[0]
        assert row[listener.outputs][:2] == ['First paragraph, first sentence. First paragraph, second sentence!',
                                             'Second paragraph is here. It has two sentences.']
    finally:
        db.close()
