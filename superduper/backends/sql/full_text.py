"""The databases' own full-text indexes behind ``KeywordSearcher`` (``superduper.backends.base``), chosen by the
backend's ``capabilities.full_text``. Each is kept by the database as rows commit, whoever writes them.

- ``fts5`` (SQLite): an external-content FTS5 table over the text column, kept by triggers; ranked by FTS5's
  ``bm25()`` (k1 = 1.2, b = 0.75, idf ``ln((N - df + 0.5) / (df + 0.5))`` floored at 1e-6), words as ``unicode61``
  splits them (``porter`` stemming for ``language='english'``); the query's distinct words are OR-ed.
- ``tsvector`` (PostgreSQL): a GIN index on ``to_tsvector(<language or 'simple'>, text)``; rows matching any
  lexeme of the query, ranked by ``ts_rank_cd`` (PostgreSQL's cover density, not BM25).
- ``fulltext`` (MariaDB, MySQL): a ``FULLTEXT`` index, ``MATCH ... AGAINST`` in natural language mode, ranked by the
  server's relevance (InnoDB: words of at least 3 letters, its stopword list).
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa

from superduper.backends.sql.filters import where_clause
from superduper.base.exceptions import ComponentError
from superduper.base.query import Condition
from superduper.vector_search.bm25 import tokenize


def searcher(backend: Any, name: str, table: str, key: str, primary_key: str, language: str | None) -> Any:
    kind = backend.capabilities.full_text
    cls = {'fts5': FTS5, 'tsvector': TsVector, 'fulltext': FullText}.get(kind)
    if cls is None:
        raise ComponentError(f'{backend!r} has no full-text index; a KeywordIndex on it uses the in-process engine')
    backend.check_name(name, 'keyword index')
    return cls(backend, name, table, key, primary_key, language)


class _SQLSearcher:
    def __init__(self, backend: Any, name: str, table: str, key: str, primary_key: str, language: str | None):
        self.backend, self.name, self.table, self.key, self.pk = backend, name, table, key, primary_key
        self.language = language
        self.check()

    def check(self) -> None:
        """Refuse settings the database cannot honour."""

    def q(self, name: str) -> str:
        return self.backend.sql_name(name)

    def run(self, *statements: str) -> None:
        with self.backend.errors('index', self.table), self.backend.begin() as conn:
            for sql in statements:
                conn.exec_driver_sql(sql)

    def _select(self, stmt: Any, where: Condition | None, n: int) -> list[tuple[Any, float]]:
        source = self.backend.table(self.table)
        if where is not None:
            stmt = stmt.where(where_clause(source, where))
        with self.backend.errors('search', self.table), self.backend.engine.connect() as conn:
            return [(row[0], float(row[1])) for row in conn.execute(stmt.limit(n))]


class FTS5(_SQLSearcher):
    def check(self) -> None:
        if self.language not in (None, 'english'):
            raise ComponentError(f'keyword index {self.name!r}: SQLite FTS5 stems only English (language="english"), '
                                 f'not {self.language!r}')

    def build(self) -> None:
        fts, src, col = self.q(self.name), self.q(self.table), self.q(self.key)
        tokenizer = 'porter unicode61' if self.language == 'english' else 'unicode61'
        trigger = lambda event: self.q(f'{self.name}_{event}')  # noqa: E731
        add = f'INSERT INTO {fts}(rowid, {col}) VALUES (new.rowid, new.{col});'
        remove = f"INSERT INTO {fts}({fts}, rowid, {col}) VALUES ('delete', old.rowid, old.{col});"
        with self.backend.engine.connect() as conn:
            made = conn.execute(sa.text("SELECT 1 FROM sqlite_master WHERE name = :n"), {'n': self.name}).first()
        if made is not None:  # applied again: the triggers have kept it current
            return
        self.run(
            f"CREATE VIRTUAL TABLE IF NOT EXISTS {fts} USING fts5({col}, content={self.backend.sql_literal(self.table)}, "
            f"content_rowid='rowid', tokenize='{tokenizer}')",
            f'CREATE TRIGGER IF NOT EXISTS {trigger("ai")} AFTER INSERT ON {src} BEGIN {add} END',
            f'CREATE TRIGGER IF NOT EXISTS {trigger("ad")} AFTER DELETE ON {src} BEGIN {remove} END',
            f'CREATE TRIGGER IF NOT EXISTS {trigger("au")} AFTER UPDATE ON {src} BEGIN {remove} {add} END',
            f"INSERT INTO {fts}({fts}) VALUES ('rebuild')",
        )

    def search(self, text: str, n: int, where: Condition | None) -> list[tuple[Any, float]]:
        words = list(dict.fromkeys(tokenize(text)))
        if not words:
            return []
        match = ' OR '.join('"' + w.replace('"', '""') + '"' for w in words)
        source = self.backend.table(self.table)
        fts = sa.table(self.name, sa.column('rowid'))
        rank = sa.literal_column(f'bm25({self.q(self.name)})')
        stmt = (sa.select(source.c[self.pk], -rank)
                .select_from(fts.join(source, fts.c.rowid == sa.literal_column(f'{self.q(self.table)}.rowid')))
                .where(sa.literal_column(self.q(self.name)).op('MATCH')(sa.bindparam('fts_match', match)))
                .order_by(rank, source.c[self.pk]))
        return self._select(stmt, where, n)

    def drop(self) -> None:
        self.run(*[f'DROP TRIGGER IF EXISTS {self.q(f"{self.name}_{e}")}' for e in ('ai', 'ad', 'au')],
                 f'DROP TABLE IF EXISTS {self.q(self.name)}')


class TsVector(_SQLSearcher):
    def check(self) -> None:
        if self.language is not None and not re.fullmatch(r'[a-z_]+', self.language):
            raise ComponentError(f'keyword index {self.name!r}: language {self.language!r} is not a PostgreSQL text '
                                 'search configuration name (e.g. "english")')

    @property
    def config(self) -> str:
        return self.language or 'simple'

    def vector(self, qualified: bool = True) -> str:
        """The indexed expression: the search repeats it word for word, so that PostgreSQL uses the index."""
        column = f'{self.q(self.table)}.{self.q(self.key)}' if qualified else self.q(self.key)
        return f"to_tsvector('{self.config}'::regconfig, coalesce({column}, ''))"

    def build(self) -> None:
        with self.backend.engine.connect() as conn:
            known = conn.execute(sa.text('SELECT 1 FROM pg_ts_config WHERE cfgname = :c'), {'c': self.config}).first()
        if known is None:
            raise ComponentError(f'keyword index {self.name!r}: PostgreSQL has no text search configuration '
                                 f'{self.config!r} (see \\dF in psql)')
        self.run(f'CREATE INDEX IF NOT EXISTS {self.q(self.name)} ON {self.q(self.table)} '
                 f'USING GIN (({self.vector(qualified=False)}))')

    def search(self, text: str, n: int, where: Condition | None) -> list[tuple[Any, float]]:
        from sqlalchemy.dialects.postgresql import TSQUERY

        if not tokenize(text):
            return []
        source = self.backend.table(self.table)
        config = sa.literal_column(f"'{self.config}'::regconfig")
        words = sa.func.plainto_tsquery(config, sa.bindparam('ts_text', text))
        # any of the words, not all: the & and phrase operators of plainto_tsquery become |
        query = sa.cast(sa.func.regexp_replace(sa.cast(words, sa.Text), '&|<(-|[0-9]+)>', '|', 'g'), TSQUERY)
        vector = sa.literal_column(self.vector())
        rank = sa.func.ts_rank_cd(vector, query)
        stmt = (sa.select(source.c[self.pk], rank).where(vector.op('@@')(query))
                .order_by(rank.desc(), source.c[self.pk]))
        return self._select(stmt, where, n)

    def drop(self) -> None:
        self.run(f'DROP INDEX IF EXISTS {self.q(self.name)}')


class FullText(_SQLSearcher):
    def check(self) -> None:
        if self.language is not None:
            raise ComponentError(f'keyword index {self.name!r}: MariaDB/MySQL FULLTEXT indexes do not stem; '
                                 f'leave language unset (got {self.language!r})')

    def build(self) -> None:
        with self.backend.engine.connect() as conn:
            exists = conn.execute(sa.text(
                'SELECT 1 FROM information_schema.statistics WHERE table_schema = DATABASE() AND table_name = :t '
                'AND index_name = :i'), {'t': self.table, 'i': self.name}).first()
        if exists is None:
            self.run(f'ALTER TABLE {self.q(self.table)} ADD FULLTEXT INDEX {self.q(self.name)} ({self.q(self.key)})')

    def search(self, text: str, n: int, where: Condition | None) -> list[tuple[Any, float]]:
        from sqlalchemy.dialects.mysql import match

        if not tokenize(text):
            return []
        source = self.backend.table(self.table)
        relevance = match(source.c[self.key], against=sa.bindparam('ft_text', text))
        stmt = sa.select(source.c[self.pk], relevance).where(relevance).order_by(relevance.desc(), source.c[self.pk])
        return self._select(stmt, where, n)

    def drop(self) -> None:
        if self.backend.has_table(self.table):
            with self.backend.engine.connect() as conn:
                exists = conn.execute(sa.text(
                    'SELECT 1 FROM information_schema.statistics WHERE table_schema = DATABASE() AND table_name = :t '
                    'AND index_name = :i'), {'t': self.table, 'i': self.name}).first()
            if exists is not None:
                self.run(f'DROP INDEX {self.q(self.name)} ON {self.q(self.table)}')
