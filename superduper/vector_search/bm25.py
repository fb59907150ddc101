"""BM25 over texts held in memory (``bm25s``, the ``keyword`` extra): the keyword engine where the database has no
full-text index of its own.

Scores are Okapi BM25 with k1 = 1.2 and b = 0.75: for each distinct query term t in a document d,
``idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * |d| / avgdl))`` with Lucene's idf
``ln(1 + (N - df + 0.5) / (df + 0.5))`` (never negative). Texts are tokenised by ``tokenize``: lower case, accents
removed, words are runs of letters and digits (as SQLite FTS5's ``unicode61``), stemmed when a language is given
(PyStemmer). The index is rebuilt from the texts at the first search after a change (bm25s builds a sparse matrix
in one pass); searches between changes reuse it.
"""

from __future__ import annotations

import importlib
import re
import threading
import unicodedata
from typing import Any, Callable, Iterable

import numpy as np

from superduper.base.exceptions import MissingDependency

K1 = 1.2
B = 0.75
_WORD = re.compile(r'[^\W_]+')


def _require(module: str, package: str, wanted_by: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependency(f"{wanted_by} needs the {package} package, which is not installed: "
                                "pip install 'superduper[keyword]'") from e


def tokenize(text: Any) -> list[str]:
    """The words of ``text``: lower case, without accents, runs of letters and digits."""
    if not isinstance(text, str) or not text:
        return []
    folded = ''.join(c for c in unicodedata.normalize('NFKD', text.lower()) if not unicodedata.combining(c))
    return _WORD.findall(folded)


def stemmer(language: str | None) -> Callable[[list[str]], list[str]]:
    """Stems words in ``language`` (PyStemmer); unchanged words without one."""
    if language is None:
        return lambda words: words
    Stemmer = _require('Stemmer', 'PyStemmer', f'stemming keyword search in {language!r}')
    try:
        stem = Stemmer.Stemmer(language)
    except KeyError:
        raise ValueError(f'no stemmer for language {language!r}; known: {", ".join(Stemmer.algorithms())}') from None
    return stem.stemWords


class BM25Index:
    """Texts by key, searched by BM25; ``upsert``/``remove`` as rows change."""

    def __init__(self, language: str | None = None):
        self._stem = stemmer(language)
        self._docs: dict[Any, list[str]] = {}
        self._keys: list[Any] = []
        self._model: Any = None  # the bm25s index of ``_keys``, None after a change
        self._tie = np.zeros(0, dtype=np.int64)  # each key's place in key order
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._docs)

    def terms(self, text: Any) -> list[str]:
        return self._stem(tokenize(text))

    def upsert(self, items: Iterable[tuple[Any, Any]]) -> None:
        with self._lock:
            for key, text in items:
                self._docs[key] = self.terms(text)
            self._model = None

    def remove(self, keys: Iterable[Any]) -> None:
        with self._lock:
            for key in keys:
                self._docs.pop(key, None)
            self._model = None

    def replace(self, items: Iterable[tuple[Any, Any]]) -> None:
        with self._lock:
            self._docs = {key: self.terms(text) for key, text in items}
            self._model = None

    def search(self, text: str, n: int, allowed: Callable[[list], set] | None = None,
               chunk: int = 100) -> list[tuple[Any, float]]:
        """``(key, score)`` of the ``n`` best texts holding a term of ``text``, best first (equal scores by key);
        with ``allowed``, among the keys it lets through (asked about ``chunk`` keys at a time, best first)."""
        terms = list(dict.fromkeys(self.terms(text)))
        with self._lock:
            model, keys, tie = self._built()
        if model is None:
            return []
        ids = model.get_tokens_ids(terms)
        if not ids:
            return []
        scores = model.get_scores(ids)
        matched = np.flatnonzero(scores > 0)
        order = matched[np.lexsort((tie[matched], -scores[matched]))]
        if allowed is None:
            return [(keys[i], float(scores[i])) for i in order[:n]]
        found: list[tuple[Any, float]] = []
        for start in range(0, len(order), chunk):
            part = [(keys[i], float(scores[i])) for i in order[start : start + chunk]]
            passing = allowed([k for k, _ in part])
            found.extend(h for h in part if h[0] in passing)
            if len(found) >= n:
                break
        return found[:n]

    def _built(self) -> tuple[Any, list, np.ndarray]:
        if self._model is None and self._docs:
            bm25s = _require('bm25s', 'bm25s', 'keyword search where the database has no full-text index')
            keys = list(self._docs)
            model = bm25s.BM25(k1=K1, b=B, method='atire', idf_method='lucene', dtype='float64')
            model.index([self._docs[k] for k in keys], show_progress=False)
            try:  # equal scores come back in key order
                tie = np.argsort(np.argsort(np.array(keys, dtype=object), kind='stable'), kind='stable')
            except TypeError:  # keys of kinds that do not compare: in the order rows were indexed
                tie = np.arange(len(keys))
            self._model, self._keys, self._tie = model, keys, tie
        return self._model, self._keys, self._tie
