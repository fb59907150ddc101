"""Field types: how a column's values are checked, stored and read back.

Built-in names: ``str int float bool bytes json datetime``, ``vector[float32:N]`` (also ``vector[N]``),
``array[float32:AxB...]`` (numpy arrays of a fixed shape), ``tensor[float32:AxB...]`` (the same, read back as
torch tensors), ``image`` (PIL images), ``audio`` (WAV; read back as ``{'array', 'sampling_rate'}``), ``video``
(a video file in the artifact store, read back as a ``superduper.base.video.Video``), ``pickle`` and ``object``. A ``DataType`` component adds user encoders in one of the seed-003 modes:
``'encodable'`` (bytes in the row), ``'artifact'`` (bytes in the artifact store, a reference in the row),
``'lazy_artifact'`` (as ``'artifact'``, loaded on ``unpack()``) and ``'file'`` (a file or directory copied to
the artifact store; reading gives a local path).

Checking is column-wise: ``set(map(type, column))`` finds the few Python types present, so a clean column
costs one pass in C; only a column with unusual types is walked value by value.
"""

from __future__ import annotations

import datetime
import inspect
import json
import numbers
import re
import uuid
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable

from superduper.base.document import LazyArtifact
from superduper.base.exceptions import ConfigError, InvalidValue
from superduper.base.video import Video, as_video
from superduper.components.component import Component

if TYPE_CHECKING:
    from superduper.base.protocols import Artifacts

BLOB_PREFIX = '&:blob:'
FILE_PREFIX = '&:file:'
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_SURROGATE = re.compile('[\ud800-\udfff]')
ENCODABLE_MODES = ('encodable', 'artifact', 'lazy_artifact', 'file')


class BadValue(Exception):
    """Raised by ``FieldType.encode`` with the position of the first value that does not fit."""

    def __init__(self, index: int, value: Any, reason: str = ''):
        super().__init__(index, value, reason)
        self.index, self.value, self.reason = index, value, reason


class FieldType:
    """One column's type. ``storage`` is the kind of database column that holds its encoded values."""

    name: str = 'any'
    storage: str = 'any'
    expected: str = 'any value'
    decodes: bool = False

    def encode(self, values: list, artifacts: 'Artifacts') -> list:
        return values

    def decode(self, values: list, artifacts: 'Artifacts') -> list:
        return values

    def __repr__(self) -> str:
        return f'<field type {self.name}>'


class Scalar(FieldType):
    """A type the database stores natively; values of other accepted types are converted."""

    def __init__(self, name: str, native: tuple[type, ...], accepts: Callable[[Any], bool], convert: Callable, expected: str):
        self.name = self.storage = name
        self.native = frozenset(native) | {type(None)}
        self.accepts, self.convert, self.expected = accepts, convert, expected

    def encode(self, values: list, artifacts: 'Artifacts') -> list:
        if set(map(type, values)) <= self.native:
            out = values
        else:
            out = []
            for i, v in enumerate(values):
                if type(v) in self.native:
                    out.append(v)
                elif self.accepts(v):
                    out.append(self.convert(v))
                else:
                    raise BadValue(i, v)
        self.check(out)
        return out

    def check(self, values: list) -> None:
        """Values of the right type that no database would store exactly (a subclass's limits)."""


class Integer(Scalar):
    """Integers the databases store exactly: 64-bit."""

    def check(self, values: list) -> None:
        present = [v for v in values if v is not None]
        if present and (min(present) < INT64_MIN or max(present) > INT64_MAX):
            i = next(i for i, v in enumerate(values) if v is not None and not INT64_MIN <= v <= INT64_MAX)
            raise BadValue(i, values[i], 'outside the 64-bit range the databases store')


class Text(Scalar):
    """Strings every database stores: no NUL character, no lone surrogate (not encodable as UTF-8)."""

    def check(self, values: list) -> None:
        joined = ''.join([v for v in values if v is not None])  # one scan in C for the usual case: all fine
        if '\x00' not in joined and (joined.isascii() or not _SURROGATE.search(joined)):
            return
        for i, v in enumerate(values):
            if v is None:
                continue
            if '\x00' in v:
                raise BadValue(i, v, 'it holds a NUL character (\\x00), which databases do not store in text')
            if not v.isascii() and _SURROGATE.search(v):
                raise BadValue(i, v, 'it holds a lone surrogate, which is not text (it cannot be encoded as UTF-8)')


class Json(FieldType):
    name = storage = 'json'
    expected = 'a JSON-serialisable value'

    def encode(self, values: list, artifacts: 'Artifacts') -> list:
        if self._all_fine(values):
            return values
        for i, v in enumerate(values):
            if v is None:
                continue
            try:
                json.dumps(v, allow_nan=False)  # NaN and infinity are not JSON
            except (TypeError, ValueError) as e:
                raise BadValue(i, v, str(e)) from None
            for text in _strings_in(v):
                if '\x00' in text or (not text.isascii() and _SURROGATE.search(text)):
                    raise BadValue(i, v, f'the string {text!r} holds a NUL character or a lone surrogate, '
                                         'which JSON in a database cannot hold')
        return values

    @staticmethod
    def _all_fine(values: list) -> bool:
        """Whether the whole column is surely valid, checked by one ``json.dumps`` in C: NUL is always written
        escaped (``\\u0000``) and lone surrogates as they are. ``False`` sends it to the value-by-value check, which
        finds the bad value (or none: a string holding a backslash and ``u0000`` lands there too)."""
        try:
            text = json.dumps(values, allow_nan=False, ensure_ascii=False)
        except (TypeError, ValueError, RecursionError):
            return False
        return '\\u0000' not in text and (text.isascii() or not _SURROGATE.search(text))


def _strings_in(value: Any) -> Iterable[str]:
    """Every string of a JSON value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings_in(k)
            yield from _strings_in(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings_in(v)


class Array(FieldType):
    """A fixed-shape numeric array, stored as its raw bytes: ``array[float32:2x3]``.

    Values may be numpy arrays, nested lists or tensors of any framework numpy can read (torch tensors are
    detached and moved to the CPU first). Reading gives numpy arrays that own a writable buffer."""

    storage = 'bytes'
    decodes = True
    kind = 'array'

    def __init__(self, dtype: str, shape: tuple[int, ...]):
        import numpy

        self.np_dtype = numpy.dtype(dtype)
        self.dtype, self.shape = dtype, tuple(shape)
        self.name = f'{self.kind}[{dtype}:{"x".join(map(str, self.shape))}]'
        self.expected = f'an array of shape {self.shape} of {dtype} values'

    def encode(self, values: list, artifacts: 'Artifacts') -> list:
        import numpy

        present = [_as_numpy(v) for v in values if v is not None]
        if not present:
            return list(values)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('error')  # a complex value cast to real numbers loses a part: refused
                matrix = numpy.asarray(present, dtype=self.np_dtype)
        except (ValueError, TypeError, OverflowError, Warning):
            matrix = None
        if matrix is None or matrix.shape != (len(present), *self.shape) or not self._exact(matrix):
            self._find_bad(values)  # raises for the first row that is not stored exactly
            if matrix is None or matrix.shape != (len(present), *self.shape):
                raise AssertionError('unreachable: a column that did not convert has a bad row')
        rows = iter(matrix)
        return [None if v is None else next(rows).tobytes() for v in values]

    def _exact(self, matrix: Any) -> bool:
        """No missing element (None becomes NaN on the way in) and, in a vector, no NaN or infinity at all."""
        import numpy

        return self.np_dtype.kind != 'f' or bool(numpy.isfinite(matrix).all())

    def _find_bad(self, values: list) -> None:
        import numpy

        for i, v in enumerate(values):
            if v is None:
                continue
            source = _as_numpy(v)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter('error')
                    array = numpy.asarray(source, dtype=self.np_dtype)
            except Warning as e:
                raise BadValue(i, v, f'{e} (complex values need a complex dtype)') from None
            except (ValueError, TypeError, OverflowError) as e:
                raise BadValue(i, v, str(e)) from None
            if array.shape != self.shape:
                raise BadValue(i, v, f'got shape {array.shape}')
            if self.np_dtype.kind == 'f' and not numpy.isfinite(array).all():
                if any(x is None for x in numpy.asarray(source, dtype=object).ravel()):
                    raise BadValue(i, v, 'it has a missing (None) element')
                if self.kind == 'vector':  # in arrays and tensors NaN and infinity are stored exactly
                    raise BadValue(i, v, 'it has NaN or infinite elements, which no search can rank')

    def decode(self, values: list, artifacts: 'Artifacts') -> list:
        import numpy

        present = [v for v in values if v is not None]
        if not present:
            return list(values)
        # one writable buffer for the batch: each row is a view into it, nothing is copied twice
        batch = numpy.frombuffer(bytearray(b''.join(present)), dtype=self.np_dtype).reshape(len(present), *self.shape)
        rows = iter(self._rows(batch))
        return [None if v is None else next(rows) for v in values]

    def _rows(self, batch: Any) -> Any:
        return batch


class Vector(Array):
    """A fixed-length numeric vector (4 bytes a value for float32): ``vector[float32:384]``."""

    kind = 'vector'

    def __init__(self, dtype: str, dim: int):
        super().__init__(dtype, (dim,))
        self.dim = dim
        self.expected = f'a vector of {dim} {dtype} values'


class Tensor(Array):
    """As ``array``, read back as torch tensors: ``tensor[float32:3x224x224]``."""

    kind = 'tensor'

    def _rows(self, batch: Any) -> Any:
        from superduper.base.registry import Implementation, missing_dependency

        try:
            import torch
        except ImportError as e:
            raise missing_dependency('torch', Implementation('', extra='torch', driver='torch'), e) from e
        return torch.from_numpy(batch)


def _as_numpy(value: Any) -> Any:
    """A torch (or similar) tensor as something numpy reads without copying through Python lists."""
    if hasattr(value, 'detach') and hasattr(value, 'cpu'):
        return value.detach().cpu().numpy()
    return value


def _call(fn: Callable, takes_info: bool, x: Any, info: Any) -> Any:
    return fn(x, info) if takes_info else fn(x)


def _takes_info(fn: Callable | None) -> bool:
    """Seed encoders are ``lambda x, info: ...``; plain one-argument callables work too."""
    if fn is None:
        return False
    try:
        params = [
            p for p in inspect.signature(fn).parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return False
    return len(params) >= 2


@dataclass(eq=False)
class DataType(Component, FieldType):
    """A user type: ``encoder(x, info) -> bytes`` and ``decoder(bytes, info) -> x`` in one of four modes."""

    type_id: ClassVar[str] = 'DataType'

    encoder: Callable | None = None
    decoder: Callable | None = None
    encodable: str = 'encodable'
    info: dict | None = None
    _encoder_takes_info: bool = field(init=False, repr=False, default=False)
    _decoder_takes_info: bool = field(init=False, repr=False, default=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.encodable not in ENCODABLE_MODES:
            raise ConfigError(
                f'DataType {self.identifier!r}: encodable={self.encodable!r}; expected one of {", ".join(ENCODABLE_MODES)}'
            )
        for role in ('encoder', 'decoder'):
            fn = getattr(self, role)
            if fn is not None and not callable(fn):
                raise ConfigError(f'DataType {self.identifier!r}: {role} must be callable, got {type(fn).__name__}')
        self._encoder_takes_info = _takes_info(self.encoder)
        self._decoder_takes_info = _takes_info(self.decoder)

    # FieldType interface
    @property
    def name(self) -> str:  # type: ignore[override]
        return self.identifier

    @property
    def storage(self) -> str:  # type: ignore[override]
        return 'bytes' if self.encodable == 'encodable' else 'str'

    @property
    def expected(self) -> str:  # type: ignore[override]
        if self.encodable == 'file':
            return 'the path of an existing file or directory'
        return f'a value that the encoder of DataType {self.identifier!r} turns into bytes'

    decodes: ClassVar[bool] = True

    def encode_one(self, x: Any) -> bytes:
        data = x if self.encoder is None else _call(self.encoder, self._encoder_takes_info, x, self.info)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f'the encoder returned {type(data).__name__}, not bytes')
        return bytes(data)

    def decode_one(self, data: bytes) -> Any:
        return data if self.decoder is None else _call(self.decoder, self._decoder_takes_info, data, self.info)

    def encode(self, values: list, artifacts: 'Artifacts') -> list:
        out = []
        for i, v in enumerate(values):
            if v is None:
                out.append(None)
                continue
            try:
                if self.encodable == 'file':
                    out.append(FILE_PREFIX + artifacts.put_file(v))
                    continue
                data = self.encode_one(v)
            except Exception as e:  # the user's encoder may raise anything
                raise BadValue(i, v, f'{type(e).__name__}: {e}') from None
            out.append(data if self.encodable == 'encodable' else BLOB_PREFIX + artifacts.put_bytes(data))
        return out

    def decode(self, values: list, artifacts: 'Artifacts') -> list:
        mode = self.encodable
        if mode == 'encodable':
            return [None if v is None else self.decode_one(v) for v in values]
        if mode == 'file':
            return [None if v is None else artifacts.get_file(v[len(FILE_PREFIX) :]) for v in values]
        keys = [None if v is None else v[len(BLOB_PREFIX) :] for v in values]
        if mode == 'artifact':
            return [None if k is None else self.decode_one(artifacts.get_bytes(k)) for k in keys]

        def load(key: str) -> Any:
            return self.decode_one(artifacts.get_bytes(key))

        return [None if k is None else LazyArtifact(k, self.identifier, load) for k in keys]


# ---- built-in types -------------------------------------------------------------------------------------


def _is_integral(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _to_datetime(v: Any) -> datetime.datetime:
    return v.to_pydatetime() if hasattr(v, 'to_pydatetime') else v


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool) or (type(v).__module__ == 'numpy' and type(v).__name__ in ('bool', 'bool_'))


SCALARS: dict[str, FieldType] = {
    'str': Text('str', (str,), lambda v: isinstance(v, str), str, 'a string'),
    'int': Integer('int', (int,), _is_integral, int, 'an integer'),
    'float': Scalar('float', (float, int), _is_real, float, 'a number'),
    'bool': Scalar('bool', (bool,), _is_bool, bool, 'a boolean'),
    'bytes': Scalar(
        'bytes', (bytes,), lambda v: isinstance(v, (bytearray, memoryview)), bytes, 'bytes'
    ),
    'datetime': Scalar(
        'datetime', (datetime.datetime,), lambda v: isinstance(v, datetime.datetime), _to_datetime, 'a datetime'
    ),
    'uuid': Scalar('uuid', (uuid.UUID,), lambda v: isinstance(v, str) and _is_uuid(v), lambda v: uuid.UUID(v), 'a UUID'),
    'json': Json(),
    'any': FieldType(),
}
ALIASES = {'string': 'str', 'text': 'str', 'integer': 'int', 'double': 'float', 'boolean': 'bool', 'blob': 'bytes'}
NUMERIC_DTYPES = ('float16', 'float32', 'float64', 'int8', 'int16', 'int32', 'int64', 'uint8', 'bool')
_ARRAY = re.compile(rf'(vector|array|tensor)\[(?:({"|".join(NUMERIC_DTYPES)}):)?(\d+(?:x\d+)*)\]')


def _cloudpickle_dumps(x: Any) -> bytes:
    """A value pickled and signed by this deployment (``superduper.base.trust``)."""
    import cloudpickle

    from superduper.base import trust

    return trust.seal_value(cloudpickle.dumps(x))


def _cloudpickle_loads(data: bytes) -> Any:
    """The value, if this deployment wrote it: a pickle written by anyone else is refused, never loaded."""
    import cloudpickle

    from superduper.base import trust

    return cloudpickle.loads(trust.open_value(data))


def _image_encode(image: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format=image.format or 'PNG')
    return buffer.getvalue()


def _image_decode(data: bytes) -> Any:
    import io

    from superduper.base.registry import Implementation, missing_dependency

    try:
        from PIL import Image
    except ImportError as e:
        raise missing_dependency('image', Implementation('', extra='image', driver='Pillow'), e) from e
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _audio_encode(audio: Any) -> bytes:
    """A WAV file from ``{'array': samples, 'sampling_rate': hz}`` (the Hugging Face layout), an ``(array, hz)``
    pair, or WAV bytes as they are. Integer samples keep their width; float samples in [-1, 1] become 32-bit PCM,
    so float32 audio comes back within 3e-10 of what went in."""
    import io
    import wave

    import numpy

    if isinstance(audio, (bytes, bytearray)):
        with wave.open(io.BytesIO(audio)):  # raises wave.Error on anything but a WAV file
            return bytes(audio)
    if isinstance(audio, dict):
        samples, rate = audio['array'], audio['sampling_rate']
    else:
        samples, rate = audio
    samples = numpy.asarray(_as_numpy(samples))
    if samples.ndim not in (1, 2) or not len(samples):
        raise ValueError(f'audio samples must have shape (frames,) or (frames, channels), got {samples.shape}')
    if samples.dtype.kind == 'f':
        if numpy.abs(samples).max() > 1:
            raise ValueError('float audio samples must lie in [-1, 1]')
        samples = numpy.round(samples.astype(numpy.float64) * (2**31 - 1)).astype('<i4')
    elif samples.dtype not in (numpy.int16, numpy.int32):
        raise ValueError(f'audio samples must be float, int16 or int32, got {samples.dtype}')
    buffer = io.BytesIO()
    with wave.open(buffer, 'wb') as out:
        out.setnchannels(1 if samples.ndim == 1 else samples.shape[1])
        out.setsampwidth(samples.dtype.itemsize)
        out.setframerate(int(rate))
        out.writeframes(samples.astype(samples.dtype.newbyteorder('<')).tobytes())
    return buffer.getvalue()


def _pcm_ints(frames: bytes, width: int) -> Any:
    import numpy

    if width in (2, 4):
        return numpy.frombuffer(frames, dtype=f'<i{width}')
    triples = numpy.frombuffer(frames, dtype=numpy.uint8).reshape(-1, 3).astype(numpy.int32)
    ints = triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)
    return (ints << 8) >> 8  # sign-extend the 24-bit values


def _audio_decode(data: bytes) -> dict:
    """``{'array': float32 samples in [-1, 1], 'sampling_rate': hz}``, shape (frames,) or (frames, channels)."""
    import io
    import wave

    import numpy

    with wave.open(io.BytesIO(data)) as wav:
        width, channels, rate = wav.getsampwidth(), wav.getnchannels(), wav.getframerate()
        frames = wav.readframes(wav.getnframes())
    if width == 1:  # 8-bit WAV is unsigned
        samples = (numpy.frombuffer(frames, dtype=numpy.uint8).astype(numpy.float32) - 128) / 128
    else:
        ints = _pcm_ints(frames, width)
        samples = (ints / float(2 ** (8 * width - 1) - 1)).astype(numpy.float32)
    return {'array': samples if channels == 1 else samples.reshape(-1, channels), 'sampling_rate': rate}


@dataclass(eq=False)
class VideoType(DataType):
    """The built-in ``video`` type: the file's bytes in the artifact store (as given, or frames encoded to MP4),
    read back as a ``Video`` that fetches them when first used. A file is checked whole before anything is
    stored."""

    encodable: str = 'artifact'

    @property
    def expected(self) -> str:  # type: ignore[override]
        return 'a video: the bytes or path of a video file, a Video, or a sequence of RGB frames'

    def encode_one(self, x: Any) -> bytes:
        return as_video(x).data

    def decode_one(self, data: bytes) -> Video:
        return Video(data).check()

    def encode(self, values: list, artifacts: 'Artifacts') -> list:
        out = []
        for i, v in enumerate(values):
            if v is None:
                out.append(None)
                continue
            try:
                video = as_video(v)
            except InvalidValue as e:
                raise BadValue(i, v, str(e)) from None
            # the container's name after the key (as files keep theirs): its media type is known from the row
            out.append(f'{BLOB_PREFIX}{artifacts.put_bytes(video.data)}/{video.format}')
        return out

    def decode(self, values: list, artifacts: 'Artifacts') -> list:
        out = []
        for v in values:
            if v is None:
                out.append(None)
                continue
            key, _, container = v[len(BLOB_PREFIX):].partition('/')
            out.append(Video.stored(key, artifacts.get_bytes, container))
        return out


BUILTIN_DATATYPES: dict[str, Callable[[], DataType]] = {
    # WAV in the row; reading gives {'array': float32 samples, 'sampling_rate': hz}, ready for speech models
    'audio': lambda: DataType('audio', encoder=_audio_encode, decoder=_audio_decode),
    'pickle': lambda: DataType(
        'pickle', encoder=_cloudpickle_dumps, decoder=_cloudpickle_loads, encodable='lazy_artifact'
    ),
    'image': lambda: DataType('image', encoder=_image_encode, decoder=_image_decode),
    # any Python object, pickled into the row: the fallback type of model outputs
    'object': lambda: DataType('object', encoder=_cloudpickle_dumps, decoder=_cloudpickle_loads),
    # a video file in the artifact store, read back as a Video (metadata, frames decoded lazily; the video extra)
    'video': lambda: VideoType('video'),
}
_builtin_cache: dict[str, DataType] = {}


def resolve_type(spec: str | FieldType) -> FieldType:
    """The ``FieldType`` for a field declaration such as ``'str'``, ``'vector[float32:384]'`` or a DataType."""
    if isinstance(spec, FieldType):
        return spec
    if not isinstance(spec, str):
        raise ConfigError(f'a field type is a string or a DataType, got {spec!r}')
    name = ALIASES.get(spec, spec)
    if name in SCALARS:
        return SCALARS[name]
    if m := _ARRAY.fullmatch(name):
        return _array_type(spec, m.group(1), m.group(2) or 'float32', tuple(int(n) for n in m.group(3).split('x')))
    if name in BUILTIN_DATATYPES:
        if name not in _builtin_cache:
            _builtin_cache[name] = BUILTIN_DATATYPES[name]()
        return _builtin_cache[name]
    raise ConfigError(
        f'unknown field type {spec!r}; expected one of {", ".join(SCALARS)}, vector[float32:N], array[float32:AxB], '
        'tensor[float32:AxB], '
        f'{", ".join(BUILTIN_DATATYPES)} or a DataType'
    )


def _array_type(spec: str, kind: str, dtype: str, shape: tuple[int, ...]) -> Array:
    if kind == 'vector' and len(shape) != 1:
        raise ConfigError(f'field type {spec!r}: a vector has one dimension; use array[{dtype}:...] for more')
    if 0 in shape:
        raise ConfigError(f'field type {spec!r}: every dimension must be at least 1')
    if kind == 'vector':
        return Vector(dtype, shape[0])
    return Tensor(dtype, shape) if kind == 'tensor' else Array(dtype, shape)


def infer_type(value: Any) -> str:
    """A field type for a model output, from one example value."""
    if isinstance(value, bool):
        return 'bool'
    if isinstance(value, str):
        return 'str'
    if isinstance(value, numbers.Integral):
        return 'int'
    if isinstance(value, numbers.Real):
        return 'float'
    if isinstance(value, (bytes, bytearray)):
        return 'bytes'
    if isinstance(value, Video):
        return 'video'
    shape = getattr(value, 'shape', None)
    if shape is not None and len(shape) >= 1 and getattr(value, 'dtype', None) is not None:
        dtype = str(value.dtype).removeprefix('torch.')
        dtype = dtype if dtype in NUMERIC_DTYPES else 'float32'
        # one dimension is a vector whatever the framework, so that it can be indexed for search
        kind = 'vector' if len(shape) == 1 else 'tensor' if type(value).__module__.startswith('torch') else 'array'
        return f'{kind}[{dtype}:{"x".join(str(n) for n in shape)}]'
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return f'vector[float32:{len(value)}]'
    if isinstance(value, (dict, list)):
        try:
            json.dumps(value)
            return 'json'
        except (TypeError, ValueError):
            pass
    return 'object'
