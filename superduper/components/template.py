"""``Template``: a component with concrete values turned into variables, exported as a package and applied elsewhere.

    template = Template('search', component=app, substitutions={'documents': 'table'})
    template.export('./search.zip')                      # component JSON, artifacts, requirements, checksums
    db.apply(Template.read('./search.zip', trust=True), table='articles')

Every whole name in the component records (values and field names) equal to a substituted value gets ``<var:name>``
in its place - a name, not a part of a longer one: substituting ``docs`` leaves ``docs_count`` and ``docs-search`` as
they are (substitute those too, to rename them). Applying fills the variables in and rebuilds the components, so the
result is a new declaration with its own uuids (and its own output tables). Reading a package whose artifacts are pickles (models
wrapping Python objects) runs code from it, so that needs ``trust=True``; without it the refusal lists what would
be imported.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from superduper.base import package
from superduper.base.exceptions import ComponentError
from superduper.components.component import Component, decode_record, encode_component, import_class

#: record keys whose values are machine-made and never substituted, and the keys of the encoding
_OPAQUE = frozenset({'_path', '_artifact', '_ref', 'serializer'})
_MARKERS = _OPAQUE | {'_dict', '_tuple', '_query'}
_VARIABLE = re.compile(r'<var:([A-Za-z_][A-Za-z0-9_]*)>')


@dataclass(eq=False)
class Template:
    identifier: str
    component: Component | None = None
    substitutions: dict[str, str] = field(default_factory=dict)  # concrete value -> variable name
    trust: bool = False
    _package: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.component is None and self._package is None:
            raise ComponentError(f'Template {self.identifier!r}: give component= (the component to template)')
        if self.component is not None and not isinstance(self.component, Component):
            raise ComponentError(f'Template {self.identifier!r}: component is a {type(self.component).__name__}, '
                                 'not a component')
        for value, name in self.substitutions.items():
            if not isinstance(value, str) or not value or not _VARIABLE.fullmatch(f'<var:{name}>'):
                raise ComponentError(f'Template {self.identifier!r}: substitution {value!r} -> {name!r}: substitute '
                                     'non-empty strings by variable names (letters, digits, _)')

    # ---- reading and writing packages ----------------------------------------------------------------------------
    @classmethod
    def read(cls, path: str | os.PathLike, trust: bool = False) -> 'Template':
        """A template (or an exported component) from a package folder or zip, checked against its manifest."""
        pkg = package.Package(path)
        return cls(pkg.content['identifier'], trust=trust, _package=pkg)

    def export(self, path: str | os.PathLike) -> Path:
        """Write the package to the folder ``path``, or to a zip if ``path`` ends in ``.zip``."""
        if self._package is not None:
            raise ComponentError(f'Template {self.identifier!r} was read from {self._package.source!r}; copy that')
        with tempfile.TemporaryDirectory(prefix='superduper-artifacts-') as tmp:
            content, modules = self._blueprint(tmp)
            artifacts = {key: Path(tmp) / key for key in _artifact_keys(content)}
            return package.write(path, content, artifacts, _requirements(content, modules, Path(tmp)))

    def _blueprint(self, artifact_dir: str) -> tuple[dict, set[str]]:
        """The records of the component and its children (children first), substituted; with the modules they use."""
        assert self.component is not None
        store = _FolderArtifacts(Path(artifact_dir))
        entries: list[dict] = []
        seen: set[str] = set()
        predict_ids: dict[str, str] = {}  # a listener's predict_id -> its part after the identifier

        def visit(component: Component) -> None:
            for child in component.children():
                visit(child)
            record, digest = encode_component(component, store)
            uuid = component.uuid or digest  # what parents refer to (re-pickling may give other bytes elsewhere)
            if uuid not in seen:
                seen.add(uuid)
                entries.append({'uuid': uuid, 'type_id': component.type_id, 'record': record})
                if hasattr(component, 'predict_id'):
                    predict_ids[component.predict_id] = component.predict_id[len(component.identifier):]

        visit(self.component)
        replace = _replacer({value: f'<var:{name}>' for value, name in self.substitutions.items()}, whole_names=True)
        # a listener whose identifier is substituted: its outputs table's name (inside other names) follows it
        renamed = {p: f'{replace(p[: -len(suffix)])}{suffix}' for p, suffix in predict_ids.items()
                   if replace(p[: -len(suffix)]) != p[: -len(suffix)]}
        outputs = _replacer(renamed)
        entries = [{**e, 'record': _map_record(_map_record(e['record'], outputs), replace)} for e in entries]
        content = {'identifier': self.identifier, 'root': entries[-1]['uuid'], 'components': entries,
                   'variables': sorted(set(self.substitutions.values())),
                   'substitutions': dict(self.substitutions)}
        return content, {e['record']['_path'].split(':', 1)[0] for e in entries}

    # ---- building components ------------------------------------------------------------------------------------
    @property
    def variables(self) -> list[str]:
        if self._package is not None:
            return list(self._package.content['variables'])
        return sorted(set(self.substitutions.values()))

    def build(self, **variables: str) -> Component:
        """The component, with the variables filled in, ready for ``db.apply``."""
        self._check_variables(variables)
        if self._package is not None:
            return self._build(self._package.content, self._package.artifact_path, variables)
        with tempfile.TemporaryDirectory(prefix='superduper-artifacts-') as tmp:
            content, _ = self._blueprint(tmp)
            return self._build(content, lambda key: Path(tmp) / key, variables, trusted=True)

    __call__ = build

    def _check_variables(self, variables: dict[str, str]) -> None:
        needed = set(self.variables)
        missing = sorted(needed - set(variables))
        unknown = sorted(set(variables) - needed)
        if missing:
            example = ', '.join(f'{name}=...' for name in missing)
            raise ComponentError(f'Template {self.identifier!r} needs values for {", ".join(missing)} '
                                 f'(db.apply(template, {example}) or --var name=value)')
        if unknown:
            raise ComponentError(f'Template {self.identifier!r} has no variable {", ".join(map(repr, unknown))}; '
                                 f'its variables: {", ".join(sorted(needed)) or "none"}')
        for name, value in variables.items():
            if not isinstance(value, str) or not value:
                raise ComponentError(f'Template {self.identifier!r}: variable {name!r} must be a non-empty string, '
                                     f'got {value!r}')

    def _build(self, content: dict, artifact_path: Callable[[str], Path], variables: dict[str, str],
               trusted: bool = False) -> Component:
        entries = content['components']
        if not trusted:
            self._check_requirements()
            self._check_trust(entries, artifact_path)
        artifacts = _PackageArtifacts(artifact_path, trusts_code=trusted or self.trust)
        fill = _replacer({f'<var:{name}>': value for name, value in variables.items()})
        renamed: dict[str, str] = {}  # an upstream listener's old predict_id -> its new one, for downstream records
        built: dict[str, Component] = {}
        for entry in entries:
            record = _map_record(entry['record'], fill)
            if renamed:
                record = _map_record(record, _replacer(renamed))
            _check_class(record.get('_path'), self.identifier)
            component = decode_record(record, built.__getitem__, artifacts)
            built[entry['uuid']] = component
            if hasattr(component, 'predict_id'):
                renamed[f'{component.identifier}__{entry["uuid"][:8]}'] = component.predict_id
        return built[content['root']]

    def _check_requirements(self) -> None:
        missing = package.missing_requirements(self._package.requirements)
        if missing:
            wanted = ' '.join(f"'{line}'" for line in missing)
            raise ComponentError(f'package {self._package.source!r} needs {", ".join(missing)}, not installed here: '
                                 f'pip install {wanted}')

    def _check_trust(self, entries: list[dict], artifact_path: Callable[[str], Path]) -> None:
        if self.trust:
            return
        code = []
        for entry in entries:
            record = entry['record']
            for name, value in record.items():
                for serializer, key in _artifacts_in(value):
                    if serializer not in package.CODE_SERIALIZERS:
                        raise package.PackageError(
                            f"package {self._package.source!r}: {entry['type_id']} {record.get('identifier')!r}, "
                            f'field {name!r}: unknown serializer {serializer!r}; known: '
                            f'{", ".join(package.CODE_SERIALIZERS)}')
                    data = artifact_path(key).read_bytes()
                    imports = (package.torch_pickled_globals if serializer == 'torch' else package.pickled_globals)(data)
                    shown = ', '.join(sorted(imports)[:6]) + (' ...' if len(imports) > 6 else '')
                    code.append(f"  {entry['type_id']} {record.get('identifier')!r}, field {name!r}: "
                                f"{package.CODE_SERIALIZERS[serializer]} importing {shown or 'nothing'}")
        if code:
            raise ComponentError(
                f'package {self._package.source!r} holds pickled code, which loading would run:\n' + '\n'.join(code)
                + '\nNothing was applied. If you trust where it comes from, read it with trust=True '
                '(superduper apply --trust).'
            )

    def close(self) -> None:
        if self._package is not None:
            self._package.close()


class _FolderArtifacts:
    """Artifacts written into a folder, named by the SHA-256 of their bytes (a package being exported)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def put_bytes(self, data: bytes) -> str:
        key = hashlib.sha256(data).hexdigest()
        (self.folder / key).write_bytes(data)
        return key


class _PackageArtifacts:
    """The read side of an artifact store, over a package's artifacts folder. Its code loads only if the package
    is trusted (``trusts_code``) or signed by this deployment."""

    def __init__(self, path_of: Callable[[str], Path], trusts_code: bool):
        self.path_of = path_of
        self.trusts_code = trusts_code

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.path_of(key).read_bytes()
        except FileNotFoundError:
            raise package.PackageError(f'the package has no artifact {key!r}') from None


def _check_class(path: Any, template: str) -> None:
    """A record may only name component classes: anything else in ``_path`` is refused before it is called."""
    try:
        cls = import_class(path)
    except (ImportError, AttributeError, ValueError, TypeError) as e:
        raise ComponentError(f'Template {template!r}: cannot import component class {path!r} ({e}); is the package '
                             'that provides it installed?') from None
    if not (isinstance(cls, type) and issubclass(cls, Component)):
        raise package.PackageError(f'Template {template!r}: {path!r} is not a component class')


#: characters that continue a name: a match next to one of them is a part of another name, and is left alone
_NAME_CHARACTER = r'[\w-]'


def _replacer(mapping: dict[str, str], whole_names: bool = False) -> Callable[[str], str]:
    """Replaces every key of ``mapping`` in a text by its value (only where it stands as a whole name)."""
    if not mapping:
        return lambda text: text
    pattern = '|'.join(re.escape(k) for k in sorted(mapping, key=len, reverse=True))
    if whole_names:
        pattern = rf'(?<!{_NAME_CHARACTER})(?:{pattern})(?!{_NAME_CHARACTER})'
    compiled = re.compile(pattern)
    return lambda text: compiled.sub(lambda m: mapping[m.group(0)], text)


def _map_record(record: dict, fn: Callable[[str], str]) -> dict:
    """The record with ``fn`` applied to its strings: values everywhere, and the keys of the dicts users give
    (such as a table's fields); never argument names, query structure or machine-made markers."""
    return {k: v if k in _OPAQUE else _map_strings(v, fn) for k, v in record.items()}


def _map_strings(value: Any, fn: Callable[[str], str], keys: bool = True) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list):
        return [_map_strings(v, fn, keys) for v in value]
    if isinstance(value, dict):
        if _OPAQUE & value.keys():
            return value
        if '_query' in value:
            return {'_query': _map_strings(value['_query'], fn, keys=False)}
        return {(fn(k) if keys and k not in _MARKERS else k): _map_strings(v, fn, keys) for k, v in value.items()}
    return value


def _artifacts_in(value: Any) -> list[tuple[str, str]]:
    """``(serializer, key)`` of every artifact reference in a record value, wherever it is nested (a reference
    hidden in another marker's dict is found too; decoding refuses such a record anyway)."""
    if isinstance(value, dict):
        found = [(value.get('serializer', 'cloudpickle'), value['_artifact'])] if '_artifact' in value else []
        return found + [a for k, v in value.items() if k not in ('_artifact', 'serializer') for a in _artifacts_in(v)]
    if isinstance(value, list):
        return [a for v in value for a in _artifacts_in(v)]
    return []


def _artifact_keys(content: dict) -> set[str]:
    return {key for entry in content['components'] for _, key in _artifacts_in(entry['record'])}


def _requirements(content: dict, modules: set[str], artifact_dir: Path) -> list[str]:
    """superduper with the extras the component classes need, then what the pickled objects import."""
    extras = sorted({e for e in (getattr(import_class(entry['record']['_path']), 'extra', None)
                                 for entry in content['components']) if e})
    imported = set(modules)
    for entry in content['components']:
        for serializer, key in _artifacts_in(entry['record']):
            data = (artifact_dir / key).read_bytes()
            if serializer == 'torch':
                imported |= package.torch_pickled_globals(data)
            elif serializer in package.CODE_SERIALIZERS:
                imported |= package.pickled_globals(data)
    head = f'superduper[{",".join(extras)}]' if extras else 'superduper'
    try:
        head += f'=={importlib.metadata.version("superduper")}'
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        pass
    return [head] + package.requirements_for(imported)
