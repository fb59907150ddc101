"""Applying, versioning, showing, loading and removing components (tables for now)."""

from __future__ import annotations

import pytest

from superduper import Table
from superduper.base.exceptions import ComponentError, NotFound


def test_apply_same_is_noop_and_change_is_new_version(db):
    first = db.apply(Table('docs', fields={'txt': 'str'}))
    assert first.version == 0 and first.uuid
    again = db.apply(Table('docs', fields={'txt': 'str'}))
    assert again.version == 0 and again.uuid == first.uuid
    db['docs'].insert([{'txt': 'kept'}]).execute()
    changed = db.apply(Table('docs', fields={'txt': 'str', 'n': 'int'}))
    assert changed.version == 1
    assert db.show('Table', 'docs') == [0, 1]
    # the new column was added; existing rows keep their data
    db.forget_table('docs')
    rows = db['docs'].select('txt', 'n').execute().tolist()
    assert rows == [{'txt': 'kept', 'n': None}]


def test_show_and_load(db):
    db.apply(Table('a', fields={'x': 'int'}))
    db.apply(Table('b', fields={'y': 'vector[float32:2]'}))
    assert ('Table', 'a') in db.show() and ('Table', 'b') in db.show()
    assert db.show('Table') == ['a', 'b']
    meta = db.show('Table', 'b', 0)
    assert meta['version'] == 0 and meta['record']['fields'] == {'y': 'vector[float32:2]'}
    loaded = db.load('Table', 'b')
    assert isinstance(loaded, Table) and loaded.fields == {'y': 'vector[float32:2]'}
    with pytest.raises(NotFound, match=r"no Table named 'zzz'; existing: a, b"):
        db.load('Table', 'zzz')
    with pytest.raises(NotFound, match=r"Table 'a' has no version 3; versions: \[0\]"):
        db.show('Table', 'a', 3)


def test_remove(db):
    db.apply(Table('gone', fields={'x': 'int'}))
    db.remove('Table', 'gone')
    assert db.show('Table') == []
    with pytest.raises(NotFound):
        db.remove('Table', 'gone')


def test_table_declarations_are_checked():
    with pytest.raises(ComponentError, match='exactly one of fields= or schema='):
        Table('t')
    with pytest.raises(ComponentError, match='non-empty string identifier'):
        Table('', fields={})


SCRIPT = '''
import sys
from superduper import superduper, ObjectModel
{preamble}
db = superduper(sys.argv[1], artifact_store=sys.argv[2], follow_changes=False)
factor = {factor}
model = db.apply(ObjectModel('scale', object=lambda x: {body}))
print(model.version)
'''

#: also on a folder queried by the other engines (the shared suite runs ``parquet`` on DuckDB)
pytestmark = pytest.mark.backends('all', 'engines')


def test_identity_by_content_not_by_where_the_code_is(tmp_path):
    """Re-running a script whose model moved (comments, blank lines, another file) applies nothing new; a change to
    the code or to a value it captures is a new version."""
    import subprocess
    import sys

    def run(name: str, preamble: str = '', factor: int = 2, body: str = 'x * factor') -> int:
        script = tmp_path / name
        script.write_text(SCRIPT.format(preamble=preamble, factor=factor, body=body))
        done = subprocess.run([sys.executable, str(script), f'sqlite://{tmp_path}/db.db',
                               f'filesystem://{tmp_path}/artifacts'], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return int(done.stdout.split()[-1])

    assert run('first.py') == 0
    assert run('moved.py', preamble='# a comment above the model\\n\\n\\nimport os  # and an import\\n') == 0
    assert run('captured.py', factor=3) == 1  # the lambda captures another value
    assert run('edited.py', factor=3, body='x * factor + 1') == 2  # the code itself changed
