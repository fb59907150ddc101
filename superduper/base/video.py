"""``Video``: a video file's bytes, with its metadata and frames read on demand through PyAV (the ``video`` extra).

A ``video`` field stores the file as it was given (no re-encoding) in the artifact store and reads back a ``Video``
that fetches those bytes only when something asks for them. ``frames(every=, max_frames=)`` decodes one frame at a
time, so sampling a few frames of a long video never holds the whole of it decoded.

Checking a file (``Video.check``, done on insert) reads every packet without decoding them all: the container must
hold a video stream, every packet it declares, up to the duration it declares, with nothing FFmpeg reports as an
error, and its first frame must decode.
"""

from __future__ import annotations

import io
import os
import threading
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from superduper.base.exceptions import InvalidValue, MissingDependency

if TYPE_CHECKING:
    import numpy

MEDIA_TYPES = {'mp4': 'video/mp4', 'mov': 'video/quicktime', 'webm': 'video/webm', 'matroska': 'video/x-matroska',
               'avi': 'video/x-msvideo', 'ogg': 'video/ogg', 'mpegts': 'video/mp2t', 'gif': 'image/gif'}
_LOG_LEVEL_LOCK = threading.Lock()  # FFmpeg's log level is one setting for the whole process


def require_av() -> Any:
    """The ``av`` module (PyAV), or ``MissingDependency`` with the install hint."""
    try:
        import av
    except ImportError as e:
        raise MissingDependency(
            "video values need the av (PyAV) package, which is not installed: pip install 'superduper[video]'"
        ) from e
    return av


class Video:
    """A video file: from its bytes, a path, or another ``Video``; ``Video.from_frames`` encodes RGB frames.

    Metadata (``duration`` in seconds, ``fps``, ``frame_count``, ``width``, ``height``, ``codec``, ``format``) comes
    from one pass over the file's packets, done once; ``frames()`` decodes lazily."""

    __slots__ = ('key', '_data', '_load', '_info', '_format')

    def __init__(self, source: 'bytes | bytearray | memoryview | str | os.PathLike | Video'):
        self.key: str | None = None
        self._load: Callable[[str], bytes] | None = None
        self._info: dict | None = None
        self._data: bytes | None = None
        self._format: str | None = None
        if isinstance(source, Video):
            self.key, self._data, self._load, self._info = source.key, source._data, source._load, source._info
            self._format = source._format
        elif isinstance(source, (bytes, bytearray, memoryview)):
            self._data = bytes(source)
        elif isinstance(source, (str, os.PathLike)):
            try:
                with open(source, 'rb') as f:
                    self._data = f.read()
            except OSError as e:
                raise InvalidValue(f'cannot read the video file {os.fspath(source)!r}: {e.strerror or e}') from None
        else:
            raise InvalidValue(f'not a video: {type(source).__name__} (a video is a file, its path or its frames)')

    @classmethod
    def stored(cls, key: str, load: Callable[[str], bytes], format: str | None = None) -> 'Video':
        """A video kept in an artifact store under ``key``: ``load(key)`` fetches its bytes when first needed
        (``format``, the container's name, is known without them)."""
        video = cls.__new__(cls)
        video.key, video._data, video._load, video._info, video._format = key, None, load, None, format or None
        return video

    @classmethod
    def from_frames(cls, frames: Iterable[Any], fps: float = 24, codec: str = 'libx264') -> 'Video':
        """An MP4 file encoding ``frames`` (arrays of shape (height, width, 3), uint8 RGB, all of one size) at
        ``fps``; H.264 by default (4:2:0 colour, which every player plays, when width and height are even)."""
        return cls(encode_frames(frames, fps, codec))

    @property
    def data(self) -> bytes:
        """The file's bytes (fetched from the artifact store on first use)."""
        if self._data is None:
            if self._load is None or self.key is None:
                raise AssertionError('unreachable: a Video has bytes or a key to load them by')
            self._data = bytes(self._load(self.key))
        return self._data

    def check(self) -> 'Video':
        """This video, once its file is known to be whole; ``InvalidValue`` saying what is wrong otherwise."""
        if self._info is None:
            self._info = _probe(self.data)
        return self

    @property
    def metadata(self) -> dict:
        """``format``, ``codec``, ``width``, ``height``, ``frame_count``, ``fps`` and ``duration`` (seconds)."""
        return dict(self._checked_info())

    def _checked_info(self) -> dict:
        return self.check()._info  # type: ignore[return-value]

    duration = property(lambda self: self._checked_info()['duration'], doc='Seconds, as the file declares them.')
    fps = property(lambda self: self._checked_info()['fps'], doc="Frames a second (the stream's average rate).")
    frame_count = property(lambda self: self._checked_info()['frame_count'], doc='Frames in the video stream.')
    width = property(lambda self: self._checked_info()['width'])
    height = property(lambda self: self._checked_info()['height'])
    codec = property(lambda self: self._checked_info()['codec'], doc="The video stream's codec, e.g. 'h264'.")

    @property
    def format(self) -> str:
        """The container, e.g. 'mp4' (a stored video knows it without fetching its bytes)."""
        return self._format or self._checked_info()['format']

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES.get(self.format, 'application/octet-stream')

    def frames(self, every: int = 1, max_frames: int | None = None) -> Iterator['numpy.ndarray']:
        """Frames as uint8 RGB arrays of shape (height, width, 3): frame 0, ``every``, 2 * ``every``, ..., at most
        ``max_frames`` of them. Frames are decoded as the iterator is read; stopping early decodes no more."""
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f'every must be a whole number of frames, at least 1, got {every!r}')
        if max_frames is not None and (not isinstance(max_frames, int) or max_frames < 0):
            raise ValueError(f'max_frames must be None or a whole number, at least 0, got {max_frames!r}')
        self.check()
        return self._frames(every, max_frames)

    def _frames(self, every: int, max_frames: int | None) -> Iterator['numpy.ndarray']:
        if max_frames == 0:
            return
        av = require_av()
        taken = 0
        with av.open(io.BytesIO(self.data), mode='r') as container:
            stream = container.streams.video[0]
            stream.thread_type = 'AUTO'
            for i, frame in enumerate(container.decode(stream)):
                if i % every:
                    continue
                yield frame.to_ndarray(format='rgb24')
                taken += 1
                if taken == max_frames:
                    return

    def save(self, path: str | os.PathLike) -> None:
        with open(path, 'wb') as f:
            f.write(self.data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Video):
            return NotImplemented
        if self.key is not None and self.key == other.key:
            return True
        return self.data == other.data

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple:
        return (Video, (self.data,))  # a copy for another process carries the bytes, not a loader

    def __repr__(self) -> str:
        if self._info is None:
            where = f'key={self.key[:12]!r}' if self.key else f'{len(self.data)} bytes'
            return f'Video({where})'
        i = self._info
        return (f"Video({i['format']}/{i['codec']}, {i['width']}x{i['height']}, {i['frame_count']} frames, "
                f"{i['fps']:.3g} fps, {i['duration']:.3g} s)")


def as_video(value: Any) -> Video:
    """A checked ``Video`` of ``value`` (bytes, a path, a ``Video`` or a sequence of RGB frames); ``InvalidValue``
    saying what is wrong otherwise."""
    if _is_frames(value):
        return Video(encode_frames(value)).check()
    return Video(value).check()


def _is_frames(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return bool(value) and hasattr(value[0], 'shape')  # each frame is checked as it is encoded
    return getattr(value, 'ndim', None) == 4  # one array of frames: (count, height, width, 3)


def encode_frames(frames: Iterable[Any], fps: float = 24, codec: str = 'libx264') -> bytes:
    """An MP4 file of ``frames`` (uint8 RGB arrays of one shape (height, width, 3)); see ``Video.from_frames``."""
    import numpy

    av = require_av()
    arrays = [numpy.asarray(f) for f in frames]
    if not arrays:
        raise InvalidValue('a video needs at least one frame')
    shape = arrays[0].shape if arrays[0].ndim == 3 else (*arrays[0].shape[:2], 3)
    for i, a in enumerate(arrays):
        if a.dtype != numpy.uint8 or a.shape != shape or shape[2:] != (3,):
            raise InvalidValue(f'frame {i}: expected a uint8 RGB array of shape (height, width, 3) like frame 0 '
                               f'{shape}, got {a.dtype} of shape {a.shape}')
    if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction)) or fps <= 0:
        raise InvalidValue(f'fps must be a positive number, got {fps!r}')
    try:
        return _encoded(av, arrays, Fraction(fps).limit_denominator(1001), codec)
    except (av.FFmpegError, ValueError) as e:
        raise InvalidValue(f'the frames cannot be encoded with {codec!r}: {e}') from None


def _encoded(av: Any, arrays: list, rate: Fraction, codec: str) -> bytes:
    height, width = arrays[0].shape[:2]
    buffer = io.BytesIO()
    with av.open(buffer, mode='w', format='mp4') as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = width, height
        # 4:2:0 colour (what every player plays) halves both sides, so it needs even ones
        stream.pix_fmt = 'yuv420p' if width % 2 == 0 and height % 2 == 0 else 'yuv444p'
        for a in arrays:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(a, format='rgb24')))
        container.mux(stream.encode())
    return buffer.getvalue()


def _probe(data: bytes) -> dict:
    """The metadata of a whole video file, read from its packets (and its first frame decoded)."""
    av = require_av()
    failures = (av.FFmpegError, EOFError, OSError, IndexError, ValueError, StopIteration)
    with _ffmpeg_errors() as errors:
        try:
            container = av.open(io.BytesIO(data), mode='r')
        except failures as e:
            raise InvalidValue(f'not a video file: {_reason(e)}') from None
        try:
            with container:
                info = _read_packets(container, data)
            with av.open(io.BytesIO(data), mode='r') as container:
                next(container.decode(container.streams.video[0]))  # raises if the codec cannot decode it
        except InvalidValue:
            raise
        except failures as e:
            raise InvalidValue(f'not a whole video file: {_reason(e)}') from None
    if errors:
        raise InvalidValue(f'not a whole video file: FFmpeg reports {errors[0]!r}')
    return info


def _reason(error: BaseException) -> str:
    if isinstance(error, StopIteration):
        return 'no frame decodes'
    return ' '.join(str(getattr(error, 'strerror', None) or error or type(error).__name__).split())


def _read_packets(container: Any, data: bytes) -> dict:
    name = _format_name(container.format.name, data)
    if not container.streams.video:
        raise InvalidValue(f'not a video: the {name} file holds no video stream')
    if name.endswith('_pipe') or name == 'image2':
        raise InvalidValue(f'not a video: an image ({name.removesuffix("_pipe")})')
    stream = container.streams.video[0]
    count, end = 0, 0.0
    for packet in container.demux(stream):
        if not packet.size:
            continue  # the demuxer's end-of-stream marker
        if packet.is_corrupt:
            raise InvalidValue(f'not a whole video file: packet {count} is corrupt (the file is cut short?)')
        count += 1
        if packet.pts is not None and packet.time_base is not None:
            end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
    if count == 0:
        raise InvalidValue('not a video: its video stream holds no frames')
    if stream.frames and count < stream.frames:
        raise InvalidValue(f'not a whole video file: it holds {count} of the {stream.frames} frames it declares '
                           '(the file is cut short?)')
    fps = float(stream.average_rate or stream.guessed_rate or 0)
    declared = _declared_duration(container, stream)
    if declared is not None and end and end + (0.5 / fps if fps else 0.05) < declared:
        raise InvalidValue(f'not a whole video file: its frames end at {end:.3g} s of the {declared:.3g} s it '
                           'declares (the file is cut short?)')
    return {'format': _format_name(container.format.name, data), 'codec': stream.codec_context.name,
            'width': stream.codec_context.width, 'height': stream.codec_context.height, 'frame_count': count,
            'fps': fps, 'duration': declared if declared is not None else end}


def _declared_duration(container: Any, stream: Any) -> float | None:
    """The video stream's duration in seconds, if the file declares one (the container's, when the video is
    the only stream)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and len(container.streams) == 1:
        return container.duration / 1_000_000
    return None


def _format_name(demuxer: str, data: bytes) -> str:
    """The container's usual name: FFmpeg's demuxers read families ('mov,mp4,m4a,...', 'matroska,webm')."""
    first = demuxer.split(',')[0]
    if first == 'mov':
        return 'mov' if data[8:12] == b'qt  ' else 'mp4'
    if first == 'matroska':
        return 'webm' if b'webm' in data[:64] else 'matroska'
    return first


class _ffmpeg_errors:
    """The messages FFmpeg logs as errors while the block runs (PyAV discards them unless asked)."""

    def __enter__(self) -> list[str]:
        import av.logging

        _LOG_LEVEL_LOCK.acquire()
        self._level, self._skip = av.logging.get_level(), av.logging.get_skip_repeated()
        if self._level is None or self._level < av.logging.ERROR:
            av.logging.set_level(av.logging.ERROR)
        av.logging.set_skip_repeated(False)  # the same error in the last file checked must count here too
        self._capture = av.logging.Capture(True)
        self._logs = self._capture.__enter__()
        self.errors: list[str] = []
        return self.errors

    def __exit__(self, *exc: Any) -> None:
        import av.logging

        try:
            self._capture.__exit__(*exc)
            self.errors += [' '.join(message.split()) for level, _, message in self._logs if level <= av.logging.ERROR]
        finally:
            av.logging.set_level(self._level)
            av.logging.set_skip_repeated(self._skip)
            _LOG_LEVEL_LOCK.release()
