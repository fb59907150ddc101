"""``KeywordIndex``: full-text (BM25-style) search over a text field, next to ``VectorIndex``.

Where the database has a full-text index of its own (``Capabilities.full_text``: SQLite FTS5, PostgreSQL
``tsvector``, MariaDB ``FULLTEXT``, a MongoDB server's text index) the index is the database's, kept by it as rows
commit, whoever writes them. Elsewhere an in-process BM25 engine (``superduper.vector_search.bm25``) follows an
internal listener that copies the text into an outputs table: the same change capture as every listener (writes
through superduper, plain SQL, other programs) keeps it current, and the engine reads the outputs written since it
last looked, as a vector index does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar

from superduper.base.exceptions import ComponentError
from superduper.base.query import Query
from superduper.components.component import Component
from superduper.components.listener import NAME_LIMIT, Listener
from superduper.components.model import Model

ENGINES = ('auto', 'native', 'inprocess')


@dataclass(eq=False)
class KeywordText(Model):
    """The text a keyword index reads (``None`` as ''): the model of the listener the in-process engine follows."""

    datatype: Any = 'str'

    def predict(self, text: Any) -> str:
        return '' if text is None else text if isinstance(text, str) else str(text)


@dataclass(eq=False)
class KeywordIndex(Component):
    """``KeywordIndex('kw', select='docs', key='txt')``: keyword search on ``db['docs'].match('text',
    keyword_index='kw')``, alone or fused with ``like()``.

    ``select`` is a table name or a select query; ``language`` stems words (PostgreSQL: a text search configuration
    such as ``'english'``; SQLite: ``'english'`` only; in process: any PyStemmer language; MariaDB: none);
    ``engine`` is ``'native'`` (the database's own index, refused where it has none), ``'inprocess'`` (BM25 in this
    process, following the table's changes) or ``'auto'`` (native where there is one). A select with a filter limits
    the rows searched; the database's own index still counts the whole table in its statistics.
    """

    type_id: ClassVar[str] = 'KeywordIndex'

    select: Any = None
    key: str = ''
    language: str | None = None
    engine: str = 'auto'
    #: the listener the in-process engine follows (made on apply where the engine is in process)
    indexing_listener: Any = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.select, str):
            self.select = Query(self.select)
        if not isinstance(self.select, Query) or self.select.action != 'select':
            raise ComponentError(f'KeywordIndex {self.identifier!r}: select must be a select query or a table name, '
                                 f'got {self.select!r}')
        self.select = self.select.bind(None)
        if not isinstance(self.key, str) or not self.key:
            raise ComponentError(f'KeywordIndex {self.identifier!r}: key= names the text field, got {self.key!r}')
        if self.engine not in ENGINES:
            raise ComponentError(f'KeywordIndex {self.identifier!r}: engine={self.engine!r}; expected one of '
                                 f'{", ".join(ENGINES)}')
        if self.language is not None and (not isinstance(self.language, str) or not self.language):
            raise ComponentError(f'KeywordIndex {self.identifier!r}: language is a name such as "english", got '
                                 f'{self.language!r}')
        if self.indexing_listener is not None and not isinstance(self.indexing_listener, Listener):
            raise ComponentError(f'KeywordIndex {self.identifier!r}: indexing_listener must be a Listener')
        if self.engine == 'inprocess' and self.indexing_listener is None:
            self.indexing_listener = self._listener()

    @property
    def source(self) -> str:
        return self.select.table

    @property
    def native(self) -> bool:
        """The database's own index searches (no listener follows the table)."""
        return self.indexing_listener is None

    @property
    def index_name(self) -> str:
        """The name of the database's index: one per version, shortened with a hash where names are limited."""
        name = f'_superduper_keyword__{self.identifier}__{self.ensure_uuid()[:8]}'  # superduper's own: not listed
        if len(name.encode()) <= NAME_LIMIT - 3:  # room for the suffix of SQLite's triggers
            return name
        return f'_superduper_keyword__{hashlib.sha1(name.encode()).hexdigest()[:16]}'

    def _listener(self) -> Listener:
        name = f'{self.identifier}__text'
        return Listener(identifier=name, model=KeywordText(name), select=self.select, key=self.key)

    def check(self, db: Any) -> None:
        info = db.table_info(self.source)
        fields = list(info.schema.types)
        if self.key not in fields and (not info.schema.open or not db.listening.in_some_row(self.source, self.key,
                                                                                              fields)):
            raise ComponentError(f'KeywordIndex {self.identifier!r}: table {self.source!r} has no field {self.key!r}; '
                                 f'fields: {", ".join(fields)}')
        if len(info.primary_key) != 1:
            raise ComponentError(f'KeywordIndex {self.identifier!r}: table {self.source!r} has a composite primary key '
                                 f'{info.primary_key}; keyword search needs a single-column key')
        full_text = db.databackend.capabilities.full_text
        if self.engine == 'native' and full_text is None:
            raise ComponentError(f'KeywordIndex {self.identifier!r}: engine="native" needs a database with a '
                                 f'full-text index; {db.databackend!r} has none (use engine="auto")')
        if self.indexing_listener is None and full_text is None:
            self.indexing_listener = self._listener()
        ftype = info.schema.types.get(self.key)
        if self.native and ftype is not None and ftype.storage not in ('str', 'any'):
            raise ComponentError(f'KeywordIndex {self.identifier!r}: field {self.key!r} of {self.source!r} holds '
                                 f'{ftype.name}, not text; the database indexes text fields')
        if self.native:
            db.databackend.keyword_searcher('_superduper_keyword__check', self.source, self.key, info.primary_key[0],
                                            self.language)  # refuses a language the database cannot stem in
        else:
            from superduper.vector_search.bm25 import stemmer

            try:
                stemmer(self.language)
            except ValueError as e:
                raise ComponentError(f'KeywordIndex {self.identifier!r}: {e}') from None

    def on_applied(self, db: Any) -> None:
        db.keyword_indexes.build(self)

    def on_reapplied(self, db: Any) -> None:
        db.keyword_indexes.build(self)

    def on_remove(self, db: Any) -> None:
        db.keyword_indexes.drop(self)
