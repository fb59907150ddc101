"""The trust boundary: no code runs from a package nobody trusted, from a record or artifact another client wrote,
or from a pickled value written into a row by anyone but this deployment. Each attack would create a marker file
when its pickle is loaded; every test asserts the file never appears."""

from __future__ import annotations

import hashlib
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from superduper import ObjectModel, Table, Template, superduper
from superduper.base.exceptions import ComponentError
from superduper.base.trust import UntrustedCode

from conftest import plain_sql


class Evil:
    """Unpickling this creates the file at ``path`` (standing for any code an attacker would run)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, 'w'))


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / 'pwned'


def connect(tmp_path, name: str = 'data'):
    return superduper(f'sqlite://{tmp_path}/{name}.db', artifact_store=f'filesystem://{tmp_path}/{name}-artifacts',
                      progress=False, follow_changes=False)


# ---- packages ---------------------------------------------------------------------------------------------------------
def table_package(tmp_path) -> Path:
    db = connect(tmp_path, 'source')
    folder = Template('docs', component=db.apply(Table('docs', fields={'txt': 'str'}))).export(tmp_path / 'pkg')
    db.close()
    return folder


def reseal(folder: Path) -> None:
    """What an attacker does after editing a package: the checksums match again (they are not signatures)."""
    manifest = json.loads((folder / 'manifest.json').read_text())
    manifest['files'] = {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                         for p in folder.rglob('*') if p.is_file() and p.name != 'manifest.json'}
    (folder / 'manifest.json').write_text(json.dumps(manifest))


def poison(folder: Path, marker: Path, hide) -> None:
    """Put an evil pickle in the package's artifacts and a reference to it, wrapped by ``hide``, in the Table's
    record."""
    data = pickle.dumps(Evil(marker))
    key = hashlib.sha256(data).hexdigest()
    (folder / 'artifacts').mkdir(exist_ok=True)
    (folder / 'artifacts' / key).write_bytes(data)
    content = json.loads((folder / 'component.json').read_text())
    record = content['components'][-1]['record']
    record['fields'] = {'txt': 'str', 'extra': hide({'_artifact': key})}
    (folder / 'component.json').write_text(json.dumps(content))
    reseal(folder)


HIDING_PLACES = {
    'plain': lambda ref: ref,
    'in a _dict': lambda ref: {'_dict': {'x': ref}},
    'in a _tuple': lambda ref: {'_tuple': [1, ref]},
    'in a list': lambda ref: [ref],
    'in a plain dict': lambda ref: {'deep': {'deeper': ref}},
    'in a _query': lambda ref: {'_query': {'table': 'docs', 'where': ref}},
    'behind a decoy serializer': lambda ref: {'_artifact': ref['_artifact'], 'serializer': 'json'},
    'next to a decoy artifact': lambda ref: {'_artifact': 'a' * 64, 'serializer': 'json', '_dict': {'x': ref}},
    'next to a reference': lambda ref: {'_ref': 'no-such-uuid', '_dict': {'x': ref}},
    'with a forged signature': lambda ref: {**ref, 'signature': '0' * 64},
}


@pytest.mark.parametrize('place', HIDING_PLACES)
def test_a_package_runs_no_code_without_trust(tmp_path, marker, place):
    folder = table_package(tmp_path)
    poison(folder, marker, HIDING_PLACES[place])
    db = connect(tmp_path)
    with pytest.raises((ComponentError, UntrustedCode)):
        db.apply(Template.read(folder))
    assert not marker.exists()
    assert db.show() == []
    db.close()


@pytest.mark.parametrize('place', ['in a _dict', 'behind a decoy serializer'])
def test_the_cli_applies_no_untrusted_code(tmp_path, marker, place):
    folder = table_package(tmp_path)
    poison(folder, marker, HIDING_PLACES[place])
    done = subprocess.run([sys.executable, '-m', 'superduper.cli', 'apply', str(folder), f'sqlite://{tmp_path}/t.db'],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode != 0 and not marker.exists()
    assert 'Traceback' not in done.stderr


def test_malformed_markers_name_the_component(tmp_path, marker):
    folder = table_package(tmp_path)
    poison(folder, marker, HIDING_PLACES['next to a reference'])
    db = connect(tmp_path)
    with pytest.raises(ComponentError, match=r"Table 'docs', field 'fields': malformed record value"):
        db.apply(Template.read(folder, trust=True))  # even trusted: an ambiguous record is never decoded
    assert not marker.exists()
    db.close()


# ---- what is already stored --------------------------------------------------------------------------------------------
def test_code_another_client_put_in_the_database_is_refused(tmp_path, marker):
    db = connect(tmp_path)
    db.apply(Table('docs', fields={'txt': 'str'}))
    db.apply(ObjectModel('shout', object=str.upper, datatype='str').to_listener('docs', key='txt', identifier='shout'))
    record = db.show('Model', 'shout', 0)
    signed_ref = record['record']['object']
    db.close()

    evil = pickle.dumps(Evil(marker))
    key = hashlib.sha256(evil).hexdigest()
    (tmp_path / 'data-artifacts' / key).write_bytes(evil)  # anyone who can write to the artifact store

    def point_model_at(ref: dict) -> None:  # anyone who can write to the database, with plain SQL
        changed = {**record['record'], 'object': ref}
        plain_sql(db, ('UPDATE _superduper_components SET record = :r WHERE uuid = :u',
                       {'r': json.dumps(changed), 'u': record['uuid']}))

    for ref in ({'_artifact': key},  # unsigned
                {'_artifact': key, 'signature': signed_ref['signature']},  # a signature copied from another key
                {'_artifact': key, 'signature': 'f' * 64}):  # a made-up one
        point_model_at(ref)
        again = connect(tmp_path)
        with pytest.raises(UntrustedCode, match="ObjectModel 'shout'"):
            again.load('Model', 'shout')
        again['docs'].insert([{'txt': 'a write goes on'}]).execute()  # the listener's rows fail; nothing runs
        assert again['docs'].count().execute() >= 1
        again.close()
        assert not marker.exists()

    point_model_at(signed_ref)  # the bytes behind a signed key replaced in the artifact store
    (tmp_path / 'data-artifacts' / signed_ref['_artifact']).write_bytes(evil)
    again = connect(tmp_path)
    with pytest.raises(UntrustedCode, match='does not hold the bytes its key names'):
        again.load('Model', 'shout')
    again.close()
    assert not marker.exists()


@pytest.mark.parametrize('kind', ['object', 'pickle'])
def test_a_pickled_value_another_client_wrote_is_never_unpickled(tmp_path, marker, kind):
    db = connect(tmp_path)
    db.apply(Table('things', fields={'obj': kind}))
    db['things'].insert([{'id': 'mine', 'obj': {'any': ('python', 1)}}]).execute()
    assert db['things'].get(id='mine').execute().unpack()['obj'] == {'any': ('python', 1)}
    evil = pickle.dumps(Evil(marker))
    if kind == 'object':  # the pickle is in the row
        plain_sql(db, ('INSERT INTO things (id, obj, _fold) VALUES (:i, :o, :f)', {'i': 'theirs', 'o': evil, 'f': 'train'}))
    else:  # the row names an artifact holding the pickle
        key = hashlib.sha256(evil).hexdigest()
        (tmp_path / 'data-artifacts' / key).write_bytes(evil)
        plain_sql(db, ('INSERT INTO things (id, obj, _fold) VALUES (:i, :o, :f)',
                       {'i': 'theirs', 'o': f'&:blob:{key}', 'f': 'train'}))
    with pytest.raises(UntrustedCode, match="did not write" if kind == 'pickle' else "table 'things', field 'obj'"):
        db['things'].get(id='theirs').execute().unpack()
    assert not marker.exists()
    db.close()


def test_the_secret_is_kept_outside_the_database(tmp_path, monkeypatch):
    """Another deployment (another secret) cannot load this one's code; given the secret, it can."""
    db = connect(tmp_path)
    db.apply(ObjectModel('shout', object=str.upper))
    db.close()
    monkeypatch.setenv('SUPERDUPER_SECRET', 'another deployment')
    other = connect(tmp_path)
    with pytest.raises(UntrustedCode, match='did not sign'):
        other.load('Model', 'shout')
    other.close()
    monkeypatch.delenv('SUPERDUPER_SECRET')
    again = connect(tmp_path)
    assert again.load('Model', 'shout').predict('a') == 'A'
    with again.databackend.engine.connect() as conn:  # the secret itself is in no table
        from superduper.base import trust

        tables = sa.inspect(again.databackend.engine).get_table_names()
        for table in tables:
            assert not any(trust.secret().decode() in str(row) for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')))
    again.close()


def zipped(folder: Path, target: Path, attrs=None, extra: dict | None = None) -> Path:
    """The folder as a zip written with ``writestr`` (no file mode bits, as many tools write them), plus ``extra``
    members."""
    import zipfile

    with zipfile.ZipFile(target, 'w') as archive:
        for path in sorted(folder.rglob('*')):
            if path.is_file():
                info = zipfile.ZipInfo(path.relative_to(folder).as_posix())
                if attrs is not None:
                    info.external_attr = attrs
                archive.writestr(info, path.read_bytes())
        for name, (data, attr) in (extra or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = attr
            archive.writestr(info, data)
    return target


def test_zips_without_mode_bits_are_read(tmp_path):
    folder = table_package(tmp_path)
    for attrs in (0, 0o644 << 16):  # nothing recorded; permissions without a file type
        db = connect(tmp_path, f'z{attrs}')
        db.apply(Template.read(zipped(folder, tmp_path / f'plain{attrs}.zip', attrs)))
        assert db.show('Table') == ['docs']
        db.close()


@pytest.mark.parametrize('name, attr', [
    ('../outside.txt', 0), ('/tmp/absolute.txt', 0), ('artifacts\\..\\..\\outside.txt', 0), ('c:/outside.txt', 0),
    ('artifacts/link', 0o120777 << 16),  # a symbolic link
])
def test_zip_members_that_escape_or_link_are_refused(tmp_path, name, attr):
    from superduper.base.package import PackageError

    folder = table_package(tmp_path)
    archive = zipped(folder, tmp_path / 'bad.zip', extra={name: (b'/etc/passwd', attr)})
    with pytest.raises(PackageError, match='nothing was extracted'):
        Template.read(archive)
    assert not (tmp_path / 'outside.txt').exists() and not Path('/tmp/absolute.txt').exists()


def test_a_folder_package_with_a_link_is_refused(tmp_path):
    from superduper.base.package import PackageError

    folder = table_package(tmp_path)
    secret = tmp_path / 'secret.txt'
    secret.write_text('not for the package')
    (folder / 'artifacts').mkdir(exist_ok=True)
    (folder / 'artifacts' / 'x').symlink_to(secret)
    reseal(folder)
    with pytest.raises(PackageError, match="'artifacts/x' is a link"):
        Template.read(folder)


def test_a_missing_requirement_names_what_to_install(tmp_path):
    folder = table_package(tmp_path)
    (folder / 'requirements.txt').write_text('superduper\nno-such-distribution==1.0\n')
    reseal(folder)
    archive = zipped(folder, tmp_path / 'needs.zip')
    db = connect(tmp_path)
    with pytest.raises(ComponentError, match=r"pip install 'no-such-distribution==1.0'$"):
        db.apply(Template.read(archive))
    db.close()


def test_a_record_naming_something_other_than_a_component_class_is_refused(tmp_path, marker):
    db = connect(tmp_path)
    model = db.apply(ObjectModel('shout', object=str.upper))
    record = {'_path': 'subprocess:run', 'identifier': 'shout', 'args': f'touch {marker}', 'shell': True}
    plain_sql(db, ('UPDATE _superduper_components SET record = :r WHERE uuid = :u',
                   {'r': json.dumps(record), 'u': model.uuid}))
    again = connect(tmp_path)
    with pytest.raises(ComponentError, match="'subprocess:run' is not a component class"):
        again.load('Model', 'shout')
    assert not marker.exists()
    db.close()
    again.close()


def test_code_stored_before_signatures_is_signed_only_when_the_user_says(tmp_path):
    db = connect(tmp_path)
    model = db.apply(ObjectModel('shout', object=str.upper))
    record = db.show('Model', 'shout', 0)['record']
    del record['object']['signature']  # as a database written by an earlier version holds it
    plain_sql(db, ('UPDATE _superduper_components SET record = :r WHERE uuid = :u',
                   {'r': json.dumps(record), 'u': model.uuid}))
    db.close()
    uri = f'sqlite://{tmp_path}/data.db'
    env = {**__import__('os').environ, 'SUPERDUPER_ARTIFACT_STORE': f'filesystem://{tmp_path}/data-artifacts'}

    def cli(*args):
        return subprocess.run([sys.executable, '-m', 'superduper.cli', 'trust', uri, *args], capture_output=True,
                              text=True, timeout=120, env=env)

    listed = cli()
    assert listed.returncode == 0 and "shout" in listed.stdout and 'nothing signed' in listed.stdout
    again = connect(tmp_path)
    with pytest.raises(UntrustedCode, match="ObjectModel 'shout'"):
        again.load('Model', 'shout')
    again.close()
    done = cli('--yes')
    assert done.returncode == 0 and 'signed 1 code artifact' in done.stdout, done.stdout + done.stderr
    again = connect(tmp_path)
    assert again.load('Model', 'shout').predict('a') == 'A'
    assert again.load('Model', 'shout').uuid == model.uuid  # the same component, now signed here
    again.close()
    assert 'every stored code artifact is signed' in cli().stdout


def test_an_unwritable_key_file_says_what_to_set(tmp_path, monkeypatch):
    from superduper.base.exceptions import ConfigError

    monkeypatch.delenv('SUPERDUPER_SECRET', raising=False)
    monkeypatch.setenv('SUPERDUPER_SECRET_FILE', '/proc/no-such-place/secret.key')
    db = connect(tmp_path)
    with pytest.raises(ConfigError, match='SUPERDUPER_SECRET'):
        db.apply(ObjectModel('shout', object=str.upper))
    assert db.show() == []
    db.close()
