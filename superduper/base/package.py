"""Application packages on disk: a folder or a ``.zip`` holding component JSON, artifacts and requirements.

Layout::

    manifest.json      format, what the package holds, and the SHA-256 of every other file
    component.json     the component records, children first, with ``<var:name>`` where a template has variables
    requirements.txt   the Python distributions the components need (pinned to the exporting machine's versions)
    artifacts/<key>    the artifacts the records refer to, named by the SHA-256 of their bytes

Reading checks before anything is used: zip members must stay inside the folder they are extracted to (no absolute
paths, no ``..``, no links), every file must be listed in the manifest with its checksum, and nothing unlisted may
be present. The checksums catch corruption and tampering after export; they do not say who made the package.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import pickletools
import shutil
import stat
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

from superduper.base.exceptions import ComponentError

FORMAT = 'superduper.package/1'
MANIFEST = 'manifest.json'
COMPONENTS = 'component.json'
REQUIREMENTS = 'requirements.txt'
ARTIFACTS = 'artifacts'
#: serializers whose loading runs code from the package (pickle underneath)
CODE_SERIALIZERS = {
    'cloudpickle': 'a pickled Python object (functions in it carry their code)',
    'torch': 'a PyTorch module (torch.save, pickle underneath)',
}


class PackageError(ComponentError):
    """A package that cannot be read safely: malformed, corrupted, tampered with, or escaping its folder."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


# ---- writing ------------------------------------------------------------------------------------------------------
def write(path: str | os.PathLike, content: dict, artifacts: dict[str, Path], requirements: list[str]) -> Path:
    """Write a package to the folder ``path``, or to a zip file if ``path`` ends in ``.zip``. ``artifacts`` maps
    artifact keys to files holding their bytes."""
    target = Path(path)
    if target.exists() and (target.is_file() or any(target.iterdir())):
        raise PackageError(f'cannot export to {str(target)!r}: it exists and is not an empty folder')
    with tempfile.TemporaryDirectory(prefix='superduper-export-') as tmp:
        folder = Path(tmp) / 'package'
        (folder / ARTIFACTS).mkdir(parents=True)
        (folder / COMPONENTS).write_text(json.dumps(content, indent=2, sort_keys=True))
        (folder / REQUIREMENTS).write_text(''.join(f'{line}\n' for line in requirements))
        for key, source in artifacts.items():
            shutil.copyfile(source, folder / ARTIFACTS / key)
        files = {name: _sha256(folder / name) for name in _relative_files(folder)}
        manifest = {'format': FORMAT, 'root': content['root'], 'variables': content['variables'], 'files': files}
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if target.suffix == '.zip':
            target.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(target, 'w', zipfile.ZIP_DEFLATED) as archive:
                for name in sorted(_relative_files(folder)):
                    archive.write(folder / name, name)
        else:
            shutil.copytree(folder, target, dirs_exist_ok=True)
    return target


def _relative_files(folder: Path) -> list[str]:
    """Every file of a package folder; a link anywhere in it is refused (it could point outside the folder)."""
    found = []
    for path in folder.rglob('*'):
        if path.is_symlink():
            raise PackageError(f'refusing the package {str(folder)!r}: {path.relative_to(folder).as_posix()!r} is a '
                               'link (it could point outside the package)')
        if path.is_file():
            found.append(path.relative_to(folder).as_posix())
    return sorted(found)


# ---- reading ------------------------------------------------------------------------------------------------------
class Package:
    """A checked package, unpacked into a folder of its own (a zip is extracted to a temporary folder)."""

    def __init__(self, path: str | os.PathLike):
        source = Path(path)
        if not source.exists():
            raise PackageError(f'no package at {str(source)!r}')
        self._tmp: tempfile.TemporaryDirectory | None = None
        if source.is_file():
            if not zipfile.is_zipfile(source):
                raise PackageError(f'{str(source)!r} is neither a package folder nor a zip file')
            self._tmp = tempfile.TemporaryDirectory(prefix='superduper-package-')
            self.folder = Path(self._tmp.name)
            extract_safely(source, self.folder)
        else:
            self.folder = source
        self.source = str(source)
        self.manifest = self._checked_manifest()
        self.content = self._checked_content()
        self.requirements = [
            line.strip() for line in (self.folder / REQUIREMENTS).read_text().splitlines() if line.strip()
        ]

    def _checked_manifest(self) -> dict:
        try:
            manifest = json.loads((self.folder / MANIFEST).read_text())
        except FileNotFoundError:
            raise PackageError(f'{self.source!r} is not a superduper package: it has no {MANIFEST}') from None
        except ValueError as e:
            raise PackageError(f'{self.source!r}: {MANIFEST} is not valid JSON ({e})') from None
        if not isinstance(manifest, dict) or manifest.get('format') != FORMAT:
            raise PackageError(f'{self.source!r}: unknown package format {manifest.get("format")!r}; expected {FORMAT!r}')
        listed: dict = manifest.get('files') or {}
        present = set(_relative_files(self.folder)) - {MANIFEST}
        for name in sorted(present - set(listed)):
            raise PackageError(f'{self.source!r} was modified after export: {name!r} is not in its manifest')
        for name, checksum in sorted(listed.items()):
            if name not in present:
                raise PackageError(f'{self.source!r} is incomplete: {name!r} is missing')
            if _sha256(self.folder / name) != checksum:
                raise PackageError(f'{self.source!r} is corrupted or was tampered with: the checksum of {name!r} '
                                   'does not match its manifest')
        for name in listed:
            if name.startswith(f'{ARTIFACTS}/') and name.split('/', 1)[1] != listed[name]:
                raise PackageError(f'{self.source!r}: artifact {name!r} is not named by the hash of its bytes')
        return manifest

    def _checked_content(self) -> dict:
        try:
            content = json.loads((self.folder / COMPONENTS).read_text())
        except ValueError as e:
            raise PackageError(f'{self.source!r}: {COMPONENTS} is not valid JSON ({e})') from None
        wanted = {'identifier': str, 'root': str, 'components': list, 'variables': list}
        if not isinstance(content, dict) or any(not isinstance(content.get(k), t) for k, t in wanted.items()):
            raise PackageError(f'{self.source!r}: {COMPONENTS} lacks {", ".join(wanted)} or has them of other types')
        return content

    def artifact_path(self, key: str) -> Path:
        return self.folder / ARTIFACTS / key

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def extract_safely(archive_path: Path, target: Path) -> None:
    """Extract a zip into ``target`` after checking every member: no absolute path, no ``..``, no link or device,
    nothing that would land outside ``target``. One bad member refuses the whole archive before anything is written."""
    root = target.resolve()
    with zipfile.ZipFile(archive_path) as archive:
        members = archive.infolist()
        for member in members:
            _check_member(member, root, archive_path)
        for member in members:
            if not member.is_dir():
                destination = root / PurePosixPath(member.filename)
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as src, open(destination, 'wb') as dst:
                    shutil.copyfileobj(src, dst)


def _check_member(member: zipfile.ZipInfo, root: Path, archive_path: Path) -> None:
    name = member.filename
    pure = PurePosixPath(name.replace('\\', '/'))
    kind = stat.S_IFMT(member.external_attr >> 16)  # 0: no file type recorded (zipfile.writestr), a plain file
    unsafe = (
        pure.is_absolute() or '..' in pure.parts or ':' in name or '\x00' in name or '\\' in name
        or kind not in (0, stat.S_IFREG, stat.S_IFDIR)
        or not (root / pure).resolve().is_relative_to(root)
    )
    if unsafe:
        raise PackageError(f'refusing {str(archive_path)!r}: member {name!r} would be written outside the package '
                           'folder (or is a link); nothing was extracted')


# ---- what a package needs and what loading it runs ----------------------------------------------------------------
def pickled_globals(data: bytes) -> set[str]:
    """What a pickle imports when loaded, read without loading it: the ``module.name`` globals it names, and the
    modules cloudpickle re-imports for functions pickled by value. Pickling machinery itself is left out."""
    found: set[str] = set()
    recent: list[Any] = []  # values pushed lately (the strings matter), for STACK_GLOBAL
    memo: dict[int, Any] = {}
    subimport_next = False
    try:
        for opcode, arg, _ in pickletools.genops(data):
            name = opcode.name
            if name in ('GLOBAL', 'INST'):
                found.add(str(arg).replace(' ', '.'))
            elif name == 'STACK_GLOBAL' and len(recent) >= 2:
                found.add(f'{recent[-2]}.{recent[-1]}')
                subimport_next = recent[-1] == 'subimport'
            if name in ('SHORT_BINUNICODE', 'BINUNICODE', 'UNICODE', 'BINUNICODE8'):
                recent.append(arg)
                if subimport_next:
                    found.add(str(arg))
                    subimport_next = False
            elif name in ('BINGET', 'LONG_BINGET', 'GET'):
                recent.append(memo.get(int(arg)))
            elif name == 'MEMOIZE' and recent:
                memo[len(memo)] = recent[-1]
            elif name in ('BINPUT', 'LONG_BINPUT', 'PUT') and recent:
                memo[int(arg)] = recent[-1]
            elif name not in ('MEMOIZE', 'FRAME', 'PROTO', 'STACK_GLOBAL'):
                recent.append(None)
    except Exception:  # a pickle we cannot walk is still reported as code; the names are best effort
        found.add('(unreadable pickle)')
    return {n for n in found if not n.startswith(('cloudpickle.', 'copyreg.', 'builtins.', '__builtin__.'))}


def torch_pickled_globals(data: bytes) -> set[str]:
    """``torch.save`` writes a zip whose ``data.pkl`` is a pickle: the globals it imports."""
    import io

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            name = next(n for n in archive.namelist() if n.endswith('data.pkl'))
            return pickled_globals(archive.read(name))
    except (zipfile.BadZipFile, StopIteration):
        return pickled_globals(data)


def requirements_for(modules: Iterable[str]) -> list[str]:
    """Pinned distributions providing these modules (standard library and superduper itself left out)."""
    by_module = importlib.metadata.packages_distributions()
    wanted: set[str] = set()
    for module in modules:
        top = module.split('.', 1)[0]
        if top in sys.stdlib_module_names or top in ('superduper', '__main__', 'builtins') or not top:
            continue
        wanted.update(by_module.get(top, []))
    lines = []
    for dist in sorted(wanted, key=str.lower):
        try:
            lines.append(f'{dist}=={importlib.metadata.version(dist)}')
        except importlib.metadata.PackageNotFoundError:
            lines.append(dist)
    return lines


def missing_requirements(requirements: list[str]) -> list[str]:
    missing = []
    for line in requirements:
        name = line.split('==', 1)[0].split('[', 1)[0].strip()
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(line)
    return missing
