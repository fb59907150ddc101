"""Any table or field name the database itself takes works with listeners and with capturing other clients' writes;
derived names (outputs tables, triggers) that would be too long are shortened deterministically; a name the database
cannot take gets one error naming it and the limit."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from conftest import emulator_gap, other_engine
from superduper import ObjectModel, Table, superduper
from superduper.base.exceptions import ComponentError

ODD = ["it's", 'back\\slash', 'per%cent', 'dollar$sd$tag', 'données', '"quoted"', 'semi;colon', 'x' * 60]


@pytest.mark.sql_only('another client writes with plain SQL')
@pytest.mark.requires('follows_other_writers', reason="other clients' writes reach listeners")
def test_odd_names_work_with_listeners_and_plain_sql(db_uri, tmp_path, backend, request):
    emulator_gap(request, backend, 'quote_in_name')
    db = superduper(db_uri, artifact_store=f'filesystem://{tmp_path}/artifacts', progress=False, follow_changes=False)
    other = other_engine(db)
    try:
        for i, name in enumerate(ODD):
            field = f'te%xt {i}'
            db.apply(Table(name, fields={field: 'str'}, folds=False))
            identifier = f'up%per{i}-' + 'y' * 70  # its outputs table name would be far over the limit
            model = ObjectModel(f'upper{i}', object=str.upper, datatype='str')
            listener = db.apply(model.to_listener(name, key=field, identifier=identifier))
            assert len(listener.outputs.encode()) <= 63
            db[name].insert([{'id': 'api', field: f'api {i}'}]).execute()
            table = sa.table(name, sa.column('id'), sa.column(field))
            with other.begin() as conn:  # another client, plain SQL
                conn.execute(table.insert(), [{'id': 'sql', field: f'sql {i}'}])
                conn.execute(table.update().where(table.c.id == 'api').values({field: f'changed {i}'}))
            while db.listening.work():
                pass
            outputs = {r['_source']: r[listener.outputs] for r in db[listener.outputs].select().execute()}
            assert outputs == {'api': f'CHANGED {i}', 'sql': f'SQL {i}'}, name
        assert all(s['pending'] == 0 for s in db.status()) and len(db.status()) == len(ODD)
    finally:
        other.dispose()
        db.close()


@pytest.mark.requires('identifier_limit', reason='a database with a limit on the length of a name')
def test_a_name_too_long_for_the_database_is_refused_by_name(db):
    limit = db.databackend.capabilities.identifier_limit or 63  # undeclared: too long for PostgreSQL already
    size = limit + 6
    name = 'n' * size
    with pytest.raises(ComponentError, match=rf"table name '{name}' is {size} \w+ long; \w+ takes at most {limit}"):
        db.apply(Table(name, fields={'txt': 'str'}))
    with pytest.raises(ComponentError, match=rf"column of table 'short': name 'c{{{size}}}' is {size} \w+ long"):
        db.apply(Table('short', fields={'c' * size: 'str'}))
    assert db.show('Table') == [] and 'short' not in db.databackend.table_names()
