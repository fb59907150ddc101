"""MongoDB's text index behind ``KeywordSearcher`` (a server only: mongomock has no ``$text``, so a KeywordIndex
there uses the in-process engine). One text index a collection; results ranked by ``textScore``, MongoDB's own
relevance; words stemmed in ``language`` (default: none, as ``'none'``)."""

from __future__ import annotations

from typing import Any

from superduper.base.exceptions import ComponentError
from superduper.base.query import Condition
from superduper.vector_search.bm25 import tokenize

ID = '_id'


class MongoText:
    def __init__(self, backend: Any, name: str, table: str, key: str, primary_key: str, language: str | None):
        self.backend, self.name, self.table, self.key, self.language = backend, name, table, key, language

    def build(self) -> None:
        import pymongo.errors

        collection = self.backend.database[self.table]
        try:
            collection.create_index([(self.key, 'text')], name=self.name, default_language=self.language or 'none')
        except pymongo.errors.OperationFailure as e:
            raise ComponentError(f'keyword index {self.name!r} on {self.table!r}: {e.details.get("errmsg", e)} '
                                 '(MongoDB keeps one text index a collection)') from None

    def search(self, text: str, n: int, where: Condition | None) -> list[tuple[Any, float]]:
        if not tokenize(text):
            return []
        spec: dict = {'$text': {'$search': text}}
        if where is not None:
            spec = {'$and': [spec, self.backend._filter(self.table, where)]}
        with self.backend._errors('search', self.table):
            cursor = (self.backend.database[self.table].find(spec, {ID: 1, 'score': {'$meta': 'textScore'}})
                      .sort([('score', {'$meta': 'textScore'}), (ID, 1)]).limit(n))
            return [(doc[ID], float(doc['score'])) for doc in cursor]

    def drop(self) -> None:
        import pymongo.errors

        try:
            self.backend.database[self.table].drop_index(self.name)
        except pymongo.errors.OperationFailure:
            pass  # the collection or the index is gone already
