"""Component metadata in SQL tables (``_superduper_components``), in the data database or any other."""

from __future__ import annotations

import datetime
import json
from typing import Any

import sqlalchemy as sa

COMPONENTS = '_superduper_components'


class SQLMetadataStore:
    def __init__(self, engine: sa.Engine):
        self.engine = engine
        self._meta = sa.MetaData()
        self.components = sa.Table(
            COMPONENTS,
            self._meta,
            sa.Column('uuid', sa.String(64), primary_key=True),
            sa.Column('type_id', sa.String(64), nullable=False),
            sa.Column('identifier', sa.String(255), nullable=False),
            sa.Column('version', sa.Integer, nullable=False),
            sa.Column('hash', sa.String(64), nullable=False),
            sa.Column('record', sa.Text, nullable=False),
            sa.Column('created_at', sa.DateTime, nullable=False),
            sa.UniqueConstraint('type_id', 'identifier', 'version', name='uq_superduper_component_version'),
        )
        self._meta.create_all(engine, checkfirst=True)

    def __repr__(self) -> str:
        return f'SQLMetadataStore({self.engine.url.render_as_string(hide_password=True)!r})'

    def _rows(self, stmt: Any) -> list[dict]:
        with self.engine.connect() as conn:
            return [_decode(dict(r)) for r in conn.execute(stmt).mappings()]

    def create(self, **row: Any) -> None:
        row = {**row, 'record': json.dumps(row['record']), 'created_at': datetime.datetime.now()}
        with self.engine.begin() as conn:
            conn.execute(self.components.insert(), row)

    def get(self, type_id: str, identifier: str, version: int | None = None) -> dict | None:
        c = self.components.c
        stmt = sa.select(self.components).where(c.type_id == type_id, c.identifier == identifier)
        stmt = stmt.where(c.version == version) if version is not None else stmt.order_by(c.version.desc()).limit(1)
        rows = self._rows(stmt)
        return rows[0] if rows else None

    def get_by_uuid(self, uuid: str) -> dict | None:
        rows = self._rows(sa.select(self.components).where(self.components.c.uuid == uuid))
        return rows[0] if rows else None

    def find_by_hash(self, type_id: str, identifier: str, digest: str) -> dict | None:
        c = self.components.c
        stmt = sa.select(self.components).where(c.type_id == type_id, c.identifier == identifier, c.hash == digest)
        rows = self._rows(stmt.order_by(c.version.desc()).limit(1))
        return rows[0] if rows else None

    def versions(self, type_id: str, identifier: str) -> list[int]:
        c = self.components.c
        stmt = sa.select(c.version).where(c.type_id == type_id, c.identifier == identifier).order_by(c.version)
        with self.engine.connect() as conn:
            return list(conn.execute(stmt).scalars())

    def identifiers(self, type_id: str) -> list[str]:
        c = self.components.c
        stmt = sa.select(c.identifier).where(c.type_id == type_id).distinct().order_by(c.identifier)
        with self.engine.connect() as conn:
            return list(conn.execute(stmt).scalars())

    def all(self) -> list[dict]:
        c = self.components.c
        return self._rows(sa.select(self.components).order_by(c.type_id, c.identifier, c.version))

    def delete(self, uuid: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(self.components.delete().where(self.components.c.uuid == uuid))

    def drop(self) -> None:
        self._meta.drop_all(self.engine)


def _decode(row: dict) -> dict:
    row['record'] = json.loads(row['record'])
    return row
