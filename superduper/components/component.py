"""The ``Component`` base: declarative, versioned, serialised as JSON of its arguments plus artifacts.

A component's record is ``{'_path': 'module.Class', <argument>: <encoded value>, ...}`` where an encoded value
is plain JSON, ``{'_ref': uuid}`` for a child component (stored on its own), ``{'_tuple': [...]}`` for a tuple,
``{'_dict': {...}}`` for a dict with keys that start with ``_``,
or ``{'_artifact': key}`` for any other object (cloudpickled, stored content-addressed in the artifact store).
The hash of the record is the component's uuid: the same declaration always has the same uuid (so a listener's
output table name is known before it is applied), and applying a record that is already stored is a no-op.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

from superduper.base import trust
from superduper.base.exceptions import ComponentError

if TYPE_CHECKING:
    from superduper.base.protocols import Artifacts

_JSON_SCALARS = (str, int, float, bool, type(None))


@dataclass(eq=False)
class Component:
    type_id: ClassVar[str] = 'Component'
    extra: ClassVar[str | None] = None  # the superduper extra a package using this class needs installed
    owns_children: ClassVar[bool] = False  # removing it removes its children (an Application)

    identifier: str
    version: int | None = field(default=None, kw_only=True, repr=False)
    uuid: str | None = field(default=None, kw_only=True, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.identifier, str) or not self.identifier:
            raise ComponentError(f'{type(self).__name__} needs a non-empty string identifier, got {self.identifier!r}')

    # lifecycle hooks, overridden by subclasses
    def check(self, db: Any) -> None:
        """Refuse a component that cannot work with this database, before anything (children too) is stored."""

    def on_create(self, db: Any) -> None:
        """Set up what the component needs (tables, ...) before its metadata is stored."""

    def on_applied(self, db: Any) -> None:
        """Work that follows storing the metadata (a listener's backfill)."""

    def on_reapplied(self, db: Any) -> None:
        """Applied again unchanged: finish what an earlier apply may have left undone (it died half way)."""

    def on_deferred(self, db: Any) -> list[str]:
        """``db.apply(..., wait=False)``: before it returns, make the work of ``on_applied`` (or ``on_reapplied``)
        durable, which then runs in the background (a listener queues its backfill); returns the ids of the jobs
        recording that work."""
        return []

    def on_load(self, db: Any) -> None:
        """Called after the component is rebuilt from its stored record."""

    def on_remove(self, db: Any) -> None:
        """Tear down what ``on_create`` set up, after its metadata is gone."""

    def arguments(self) -> Iterator[tuple[str, Any]]:
        """The declared fields; one marked ``optional`` is left out at its default (so that adding such a field to
        a component class changes no stored component's record or uuid)."""
        for f in dataclasses.fields(self):
            if f.name in ('version', 'uuid') or not f.init:
                continue
            value = getattr(self, f.name)
            if f.metadata.get('optional') and value == f.default:
                continue
            yield f.name, value

    def children(self) -> list['Component']:
        """Components held in this one's arguments, to be applied before it."""
        found: list[Component] = []
        for _, value in self.arguments():
            _collect_components(value, found)
        return found

    def ensure_uuid(self) -> str:
        """The uuid: the hash of the component's record (computed without storing anything)."""
        if self.uuid is None:
            self.uuid = encode_component(self, None)[1]
        return self.uuid

    @property
    def huuid(self) -> str:
        return f'{self.type_id}:{self.identifier}:{self.version}'


def artifact_keys(record: Any) -> set[str]:
    """The artifact keys a stored record refers to."""
    return _marked(record, '_artifact')


def artifact_refs(record: Any) -> Iterator[dict]:
    """Every artifact reference (``{'_artifact': key, ...}``) of a stored record, however deeply nested."""
    if isinstance(record, dict):
        if '_artifact' in record:
            yield record
        for k, v in record.items():
            if k != '_artifact':
                yield from artifact_refs(v)
    elif isinstance(record, list):
        for v in record:
            yield from artifact_refs(v)


def references(record: Any) -> set[str]:
    """The uuids of the components a stored record refers to."""
    return _marked(record, '_ref')


def ordered_references(record: Any) -> list[str]:
    """The uuids a stored record refers to, in the order they appear (the order they are applied in)."""
    if isinstance(record, dict):
        return [record['_ref']] if '_ref' in record else [u for v in record.values() for u in ordered_references(v)]
    if isinstance(record, list):
        return [u for v in record for u in ordered_references(v)]
    return []


def _marked(record: Any, marker: str) -> set[str]:
    if isinstance(record, dict):
        if marker in record:
            return {record[marker]}
        values: Any = record.values()
    elif isinstance(record, list):
        values = record
    else:
        return set()
    return set().union(*[_marked(v, marker) for v in values])


def _collect_components(value: Any, found: list[Component]) -> None:
    if isinstance(value, Component):
        found.append(value)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _collect_components(v, found)
    elif isinstance(value, dict):
        for v in value.values():
            _collect_components(v, found)


def class_path(cls: type) -> str:
    return f'{cls.__module__}:{cls.__qualname__}'


def import_class(path: str) -> type:
    module, _, name = path.partition(':')
    obj: Any = importlib.import_module(module)
    for part in name.split('.'):
        obj = getattr(obj, part)
    return obj


def encode_component(component: Component, artifacts: 'Artifacts | None',
                     blobs: dict[str, bytes] | None = None) -> tuple[dict, str]:
    """The JSON record of a component and its uuid. With ``artifacts=None`` nothing is stored (artifact keys are
    still the hashes of their bytes); the bytes go to ``blobs`` if given, for the caller to store.

    The uuid is the hash of the record with each artifact counted by what it *is*, not by its bytes: a function
    pickled by value is counted without the file name and line numbers of its code, so the same declaration has the
    same uuid after the code around it moved (comments, imports, another file), while a change to the code itself
    or to a value it captures gives a new one."""
    identities: dict[str, str] = {}
    record: dict[str, Any] = {'_path': class_path(type(component))}
    for name, value in component.arguments():
        record[name] = _encode_value(value, artifacts, identities, blobs)
    counted = _map_artifacts(record, identities)
    digest = hashlib.sha256(json.dumps(counted, sort_keys=True, default=str).encode()).hexdigest()
    return record, digest[:32]


def _encode_value(value: Any, artifacts: 'Artifacts | None', identities: dict[str, str],
                  blobs: dict[str, bytes] | None) -> Any:
    from superduper.base.query import Query

    def encode(v: Any) -> Any:
        return _encode_value(v, artifacts, identities, blobs)

    if isinstance(value, _JSON_SCALARS):
        return value
    if isinstance(value, Component):
        return {'_ref': value.ensure_uuid()}
    if isinstance(value, Query):
        return {'_query': encode(value.to_dict())}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, tuple):
        return {'_tuple': [encode(v) for v in value]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        encoded = {k: encode(v) for k, v in value.items()}
        # keys such as '_source' or '_id' could be read as markers: such a dict is wrapped
        return {'_dict': encoded} if any(k.startswith('_') for k in value) else encoded
    serializer = serializer_for(value)
    data = SERIALIZERS[serializer][1](value)
    key = hashlib.sha256(data).hexdigest() if artifacts is None else artifacts.put_bytes(data)
    if blobs is not None:
        blobs[key] = data
    identities[key] = _identity(value) if serializer == 'cloudpickle' else key
    ref = {'_artifact': key} if serializer == 'cloudpickle' else {'_artifact': key, 'serializer': serializer}
    ref['signature'] = trust.sign('artifact', key)  # the code is this deployment's (``superduper.base.trust``)
    return ref


def _identity(value: Any) -> str:
    """The hash of ``value`` pickled with its code's file names and line numbers left out."""
    import io

    buffer = io.BytesIO()
    _identity_pickler()(buffer, protocol=5).dump(value)
    return hashlib.sha256(buffer.getvalue()).hexdigest()


@functools.lru_cache(maxsize=1)
def _identity_pickler() -> type:
    import collections
    import types

    import cloudpickle
    from cloudpickle import cloudpickle as internals

    def placeless(code: types.CodeType) -> types.CodeType:
        consts = tuple(placeless(c) if isinstance(c, types.CodeType) else c for c in code.co_consts)
        return code.replace(co_filename='', co_firstlineno=1, co_linetable=b'', co_consts=consts)

    class IdentityPickler(cloudpickle.CloudPickler):
        dispatch_table = collections.ChainMap(
            {types.CodeType: lambda code: internals._code_reduce(placeless(code))},
            cloudpickle.CloudPickler.dispatch_table,
        )

        def _function_getnewargs(self, func: Any) -> tuple:
            code, base_globals, *rest = super()._function_getnewargs(func)
            return (code, {k: v for k, v in base_globals.items() if k != '__file__'}, *rest)

    return IdentityPickler


def _map_artifacts(value: Any, identities: dict[str, str]) -> Any:
    """``value`` with every artifact key replaced by its identity (and no signature: it depends on the
    deployment's secret, not on the component)."""
    if isinstance(value, dict):
        if '_artifact' in value:
            counted = {k: v for k, v in value.items() if k != 'signature'}
            return {**counted, '_artifact': identities.get(value['_artifact'], value['_artifact'])}
        return {k: _map_artifacts(v, identities) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_artifacts(v, identities) for v in value]
    return value


def decode_record(record: dict, load_ref: Any, artifacts: 'Artifacts') -> Component:
    """Rebuild a component from its record; ``load_ref(uuid)`` rebuilds children. Code artifacts load only if this
    deployment signed them, or ``artifacts.trusts_code`` (a package read with ``trust=True``)."""
    if not isinstance(record, dict) or not isinstance(record.get('_path'), str):
        raise ComponentError(f'malformed component record: {str(record)[:200]}')
    what = f"{record['_path'].rpartition(':')[2]} {record.get('identifier')!r}"
    try:
        cls = import_class(record['_path'])
    except (ImportError, AttributeError, ValueError) as e:
        raise ComponentError(f'{what}: its class {record["_path"]!r} cannot be imported here: {e}') from e
    if not (isinstance(cls, type) and issubclass(cls, Component)):  # a record names a component class, nothing else
        raise ComponentError(f'{what}: {record["_path"]!r} is not a component class; the record is refused')
    kwargs = {k: _decode_value(v, load_ref, artifacts, f'{what}, field {k!r}') for k, v in record.items()
              if k != '_path'}
    return cls(**kwargs)


#: the keys a marker dict may hold: anything else makes the record malformed (no value hides behind another)
_MARKER_KEYS = {'_ref': {'_ref'}, '_dict': {'_dict'}, '_tuple': {'_tuple'}, '_query': {'_query'},
                '_artifact': {'_artifact', 'serializer', 'signature'}}


def _decode_value(value: Any, load_ref: Any, artifacts: 'Artifacts', what: str) -> Any:
    if isinstance(value, list):
        return [_decode_value(v, load_ref, artifacts, what) for v in value]
    if not isinstance(value, dict):
        return value
    markers = [m for m in _MARKER_KEYS if m in value]
    if not markers:
        return {k: _decode_value(v, load_ref, artifacts, what) for k, v in value.items()}
    if len(markers) > 1 or not set(value) <= _MARKER_KEYS[markers[0]]:
        raise ComponentError(f'{what}: malformed record value with keys {sorted(value)}')
    marker = markers[0]
    if marker == '_ref':
        return load_ref(value['_ref'])
    if marker == '_dict':
        if not isinstance(value['_dict'], dict):
            raise ComponentError(f'{what}: malformed _dict value')
        return {k: _decode_value(v, load_ref, artifacts, what) for k, v in value['_dict'].items()}
    if marker == '_tuple':
        return tuple(_decode_value(v, load_ref, artifacts, what) for v in value['_tuple'])
    if marker == '_query':
        from superduper.base.query import Query

        return Query.from_dict(_decode_value(value['_query'], load_ref, artifacts, what))
    return _load_artifact(value, artifacts, what)


def _load_artifact(ref: dict, artifacts: 'Artifacts', what: str) -> Any:
    serializer, key = ref.get('serializer', 'cloudpickle'), ref['_artifact']
    if serializer not in SERIALIZERS or not isinstance(key, str):
        raise ComponentError(f'{what}: unknown serializer {serializer!r}; known: {", ".join(SERIALIZERS)}')
    data = artifacts.get_bytes(key)
    trust.check_artifact(key, data, ref.get('signature'), getattr(artifacts, 'trusts_code', False), what)
    return SERIALIZERS[serializer][2](data)


def _torch_dumps(module: Any) -> bytes:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(module, buffer)  # PyTorch's own format: the module and its weights
    return buffer.getvalue()


def _torch_loads(data: bytes) -> Any:
    import io

    import torch

    return torch.load(io.BytesIO(data), weights_only=False)


def _is_torch_module(value: Any) -> bool:
    return any(c.__module__.startswith('torch.nn') and c.__name__ == 'Module' for c in type(value).__mro__)


#: name -> (is this value mine, dumps, loads); checked in order, cloudpickle takes the rest
SERIALIZERS: dict[str, tuple[Any, Any, Any]] = {
    'torch': (_is_torch_module, _torch_dumps, _torch_loads),
    'cloudpickle': (lambda value: True, lambda value: _pickle().dumps(value), lambda data: _pickle().loads(data)),
}


def serializer_for(value: Any) -> str:
    return next(name for name, (mine, _, _) in SERIALIZERS.items() if mine(value))


def _pickle() -> Any:
    import cloudpickle

    return cloudpickle
