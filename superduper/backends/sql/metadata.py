"""Component metadata in SQL tables (``_superduper_components``), in the data database or any other."""

from __future__ import annotations

import datetime
import json
import uuid
from typing import Any, Callable

import sqlalchemy as sa

from superduper.backends.base import (
    API_KEYS, COMPONENTS, COMPONENTS_VERSION, FAILURES, INDEX_STATES, JOBS, METRICS, SCHEDULE_TICKS, SETTINGS,
)
from superduper.backends.base import Below, OneOf, Where
from superduper.backends.logs import FailureLog, JobLog, TickLog, split_where


#: how a database inserts a row unless its primary key is there (``insert_absent``): on ``conn``, into ``table``,
#: ``row``; returns whether it inserted. Given by databases that do not enforce primary keys (a ``MERGE``).
InsertAbsent = Callable[[sa.Connection, sa.Table, dict], bool]


def insert_absent(engine: sa.Engine, table: sa.Table, row: dict[str, Any], merge: InsertAbsent | None = None) -> bool:
    """Insert ``row`` into ``table`` in a transaction of its own unless its primary key is there; whether it did.
    Without ``merge``, the database's primary key refuses a second row."""
    if merge is not None:
        with engine.begin() as conn:
            return merge(conn, table, row)
    try:
        with engine.begin() as conn:
            conn.execute(table.insert(), row)
    except sa.exc.IntegrityError:
        return False
    return True


class SQLMetadataStore:
    def __init__(self, engine: sa.Engine, artifact_lock: str = '', merge: InsertAbsent | None = None):
        self.engine = engine
        self._merge = merge  # insert-if-absent where primary keys are not enforced
        self._artifact_refs: Any = None
        self._artifact_lock = artifact_lock  # the holder name of artifact lock rows (``SQLArtifactRefs``)
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
        self.jobs = sa.Table(
            JOBS,
            self._meta,
            sa.Column('id', sa.String(64), primary_key=True),
            sa.Column('kind', sa.String(32), nullable=False),
            sa.Column('type_id', sa.String(64), nullable=False),
            sa.Column('identifier', sa.String(255), nullable=False),
            sa.Column('component_uuid', sa.String(64), nullable=False),
            sa.Column('status', sa.String(16), nullable=False),
            sa.Column('done', sa.BigInteger, nullable=False, default=0),
            sa.Column('total', sa.BigInteger),
            sa.Column('failed', sa.BigInteger, nullable=False, default=0),
            sa.Column('error', sa.Text),
            sa.Column('started_at', sa.DateTime, nullable=False),
            sa.Column('finished_at', sa.DateTime),
        )
        self.failures = sa.Table(
            FAILURES,
            self._meta,
            sa.Column('listener_uuid', sa.String(64), primary_key=True),
            sa.Column('source', sa.String(255), primary_key=True),  # JSON of the source row's key
            sa.Column('error', sa.Text, nullable=False),
            sa.Column('attempts', sa.Integer, nullable=False),
            sa.Column('failed_at', sa.DateTime, nullable=False),
        )
        self.metrics = sa.Table(
            METRICS,
            self._meta,
            sa.Column('model_uuid', sa.String(64), primary_key=True),
            sa.Column('metric', sa.String(255), primary_key=True),
            sa.Column('value', sa.Double, nullable=False),
            sa.Column('rows', sa.BigInteger, nullable=False),
            sa.Column('measured_at', sa.DateTime, nullable=False),
        )
        self.index_states = sa.Table(
            INDEX_STATES,
            self._meta,
            sa.Column('index_uuid', sa.String(64), primary_key=True),
            sa.Column('artifact', sa.String(64), nullable=False),
            sa.Column('saved_at', sa.DateTime, nullable=False),
        )
        self.settings = sa.Table(
            SETTINGS,
            self._meta,
            sa.Column('name', sa.String(64), primary_key=True),
            sa.Column('value', sa.Text, nullable=False),
        )
        self.api_keys = sa.Table(
            API_KEYS,
            self._meta,
            sa.Column('id', sa.String(32), primary_key=True),
            sa.Column('name', sa.String(255), nullable=False),
            sa.Column('digest', sa.String(64), nullable=False),  # SHA-256 of the key's secret part, never the key
            sa.Column('scope', sa.String(16), nullable=False),
            sa.Column('created_at', sa.DateTime, nullable=False),
            sa.Column('revoked_at', sa.DateTime),
        )
        self.ticks = sa.Table(
            SCHEDULE_TICKS,
            self._meta,
            sa.Column('id', sa.String(128), primary_key=True),  # <schedule uuid>@<tick>
            sa.Column('schedule_uuid', sa.String(64), nullable=False),
            sa.Column('identifier', sa.String(255), nullable=False),
            sa.Column('tick', sa.String(32), nullable=False),  # UTC, ISO 8601 with microseconds: sorts as text
            sa.Column('status', sa.String(16), nullable=False),
            sa.Column('worker', sa.String(128), nullable=False),
            sa.Column('lease_until', sa.Double, nullable=False),  # epoch seconds
            sa.Column('attempts', sa.Integer, nullable=False),
            sa.Column('error', sa.Text),
            sa.Column('started_at', sa.DateTime, nullable=False),
            sa.Column('finished_at', sa.DateTime),
        )  # no index: ended rows go after an hour, and some warehouses (Snowflake) have no indexes
        self._meta.create_all(engine, checkfirst=True)
        # the token every apply and remove changes (``components_version``)
        insert_absent(engine, self.settings, {'name': COMPONENTS_VERSION, 'value': uuid.uuid4().hex}, merge)
        self.records = SQLRecords(engine, [self.jobs, self.failures, self.ticks, self.api_keys], merge)

    def __repr__(self) -> str:
        return f'SQLMetadataStore({self.engine.url.render_as_string(hide_password=True)!r})'

    def job_log(self) -> JobLog:
        return JobLog(self.records)

    def failure_log(self) -> FailureLog:
        return FailureLog(self.records)

    def tick_log(self) -> TickLog:
        return TickLog(self.records)

    def close(self) -> None:
        self.engine.dispose()

    def _rows(self, stmt: Any) -> list[dict]:
        with self.engine.connect() as conn:
            return [_decode(dict(r)) for r in conn.execute(stmt).mappings()]

    def create(self, **row: Any) -> None:
        row = {**row, 'record': json.dumps(row['record']), 'created_at': datetime.datetime.now()}
        with self.engine.begin() as conn:
            conn.execute(self.components.insert(), row)
            self._changed(conn)

    def _changed(self, conn: Any) -> None:
        """A new token, in the transaction that applies or removes a component: readers of the token see it only
        with that change."""
        c = self.settings.c
        conn.execute(self.settings.update().where(c.name == COMPONENTS_VERSION).values(value=uuid.uuid4().hex))

    def replace_record(self, uuid_: str, record: dict) -> None:
        """Store ``record`` for the component ``uuid_`` (its identity unchanged: signatures added, say)."""
        with self.engine.begin() as conn:
            conn.execute(self.components.update().where(self.components.c.uuid == uuid_)
                         .values(record=json.dumps(record)))
            self._changed(conn)

    def components_version(self) -> str | None:
        """A token that changes whenever a component is applied or removed, by any process."""
        return self.setting(COMPONENTS_VERSION)

    def setting(self, name: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(self.settings.c.value).where(self.settings.c.name == name)).scalar()

    def set_setting(self, name: str, value: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(self.settings.delete().where(self.settings.c.name == name))
            conn.execute(self.settings.insert(), {'name': name, 'value': value})

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
            self._changed(conn)

    def record_metrics(self, model_uuid: str, values: dict[str, float], rows: int) -> None:
        c = self.metrics.c
        with self.engine.begin() as conn:
            conn.execute(self.metrics.delete().where(c.model_uuid == model_uuid, c.metric.in_(list(values))))
            now = datetime.datetime.now()
            conn.execute(self.metrics.insert(), [
                {'model_uuid': model_uuid, 'metric': k, 'value': v, 'rows': rows, 'measured_at': now}
                for k, v in values.items()
            ])

    def metric_values(self, model_uuid: str) -> dict[str, float]:
        c = self.metrics.c
        with self.engine.connect() as conn:
            return dict(conn.execute(sa.select(c.metric, c.value).where(c.model_uuid == model_uuid)).all())

    def index_state(self, index_uuid: str) -> str | None:
        """The artifact key of a vector index's saved state."""
        c = self.index_states.c
        with self.engine.connect() as conn:
            return conn.execute(sa.select(c.artifact).where(c.index_uuid == index_uuid)).scalar_one_or_none()

    def set_index_state(self, index_uuid: str, artifact: str | None) -> None:
        c = self.index_states.c
        with self.engine.begin() as conn:
            conn.execute(self.index_states.delete().where(c.index_uuid == index_uuid))
            if artifact is not None:
                conn.execute(self.index_states.insert(),
                             {'index_uuid': index_uuid, 'artifact': artifact, 'saved_at': datetime.datetime.now()})

    def replace_index_state(self, index_uuid: str, previous: str | None, artifact: str) -> bool:
        """Make ``artifact`` the index's saved state if ``previous`` still is (another process may have saved one
        meanwhile); returns whether it did."""
        c = self.index_states.c
        row = {'artifact': artifact, 'saved_at': datetime.datetime.now()}
        if previous is None:  # not there unless saved by another process first
            return insert_absent(self.engine, self.index_states, {'index_uuid': index_uuid, **row}, self._merge)
        with self.engine.begin() as conn:
            stmt = self.index_states.update().where(c.index_uuid == index_uuid, c.artifact == previous)
            return conn.execute(stmt.values(**row)).rowcount == 1

    def artifact_refs(self) -> Any:
        if self._artifact_refs is None:
            from superduper.backends.sql.artifact_refs import SQLArtifactRefs

            self._artifact_refs = SQLArtifactRefs(self.engine, self._artifact_lock)
        return self._artifact_refs

    def drop(self) -> None:
        self.artifact_refs().drop()
        self._meta.drop_all(self.engine)


def _decode(row: dict) -> dict:
    row['record'] = json.loads(row['record'])
    return row


class SQLRecords:
    """``superduper.backends.base.Records`` on SQL tables (keys of source rows stored as JSON text)."""

    native_keys = False

    def __init__(self, engine: sa.Engine, tables: list[sa.Table], merge: InsertAbsent | None = None):
        self.engine = engine
        self.tables = {t.name: t for t in tables}
        self._merge = merge

    def insert(self, name: str, row: dict[str, Any]) -> bool:
        return insert_absent(self.engine, self.tables[name], row, self._merge)

    def find(self, name: str, where: Where, order_by: str | None = None) -> list[dict[str, Any]]:
        table = self.tables[name]
        stmt = sa.select(table).where(*_conditions(table, where))
        if order_by is not None:
            stmt = stmt.order_by(table.c[order_by])
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]

    def count(self, name: str, where: Where) -> int:
        stmt = sa.select(sa.func.count()).select_from(self.tables[name]).where(*_conditions(self.tables[name], where))
        with self.engine.connect() as conn:
            return conn.execute(stmt).scalar_one()

    def update(self, name: str, where: Where, values: dict[str, Any]) -> None:
        table = self.tables[name]
        with self.engine.begin() as conn:
            conn.execute(table.update().where(*_conditions(table, where)).values(**values))

    def claim_if(self, name: str, where: Where, values: dict[str, Any]) -> bool:
        table = self.tables[name]
        with self.engine.begin() as conn:
            return conn.execute(table.update().where(*_conditions(table, where)).values(**values)).rowcount == 1

    def delete(self, name: str, where: Where) -> None:
        table = self.tables[name]
        with self.engine.begin() as conn:
            for part in split_where(where):
                conn.execute(table.delete().where(*_conditions(table, part)))

    def count_up(self, name: str, where: Where, key: str, rows: list[dict[str, Any]], counter: str) -> None:
        table = self.tables[name]
        same = _conditions(table, {**where, key: OneOf([row[key] for row in rows])})
        with self.engine.begin() as conn:
            counts = dict(conn.execute(sa.select(table.c[key], table.c[counter]).where(*same)).all())
            conn.execute(table.delete().where(*same))
            conn.execute(table.insert(), [{**row, counter: counts.get(row[key], 0) + 1} for row in rows])


def _conditions(table: sa.Table, where: Where) -> list[Any]:
    found = []
    for column, value in where.items():
        if isinstance(value, OneOf):
            found.append(table.c[column].in_(list(value.values)))
        elif isinstance(value, Below):
            found.append(table.c[column] < value.value)
        else:
            found.append(table.c[column] == value)
    return found
