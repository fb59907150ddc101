"""Values to and from JSON for the server.

Out: vectors and arrays are JSON arrays; dates ISO 8601 text; bytes ``{"$base64": ...}``; an image
``{"$base64": <PNG>, "media_type": "image/png"}``; a value kept in the artifact store
``{"$artifact": key, "url": "/api/v1/artifacts/<key>"}`` (fetched on demand), a video kept there the same with its
``media_type`` (``"video/mp4"``; a video not stored, such as a model's output, as ``$base64`` with its ``media_type``);
NaN and infinity ``null``.
In: ``{"$base64": ...}`` becomes bytes (an image, audio or video field decodes them as its type does); everything else
is taken as JSON gives it and checked by the field's type.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import decimal
import io
import math
import uuid
from typing import Any
from urllib.parse import quote

from superduper.base.document import LazyArtifact
from superduper.base.exceptions import InvalidValue
from superduper.base.video import Video

ARTIFACTS_PATH = '/api/v1/artifacts/'


def to_json(value: Any) -> Any:
    """``value`` as plain JSON (see the module's description)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, LazyArtifact):
        return {'$artifact': value.key, 'url': ARTIFACTS_PATH + value.key}
    if isinstance(value, Video):
        return _video_json(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {'$base64': base64.b64encode(bytes(value)).decode()}
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (uuid.UUID, decimal.Decimal)):
        return str(value)
    if hasattr(value, 'tolist') and hasattr(value, 'dtype'):  # numpy arrays and scalars, torch tensors
        return to_json(value.tolist())
    if type(value).__module__.startswith('PIL.'):
        buffer = io.BytesIO()
        value.save(buffer, format='PNG')
        return {'$base64': base64.b64encode(buffer.getvalue()).decode(), 'media_type': 'image/png'}
    return str(value)


def _video_json(video: Video) -> dict:
    """A stored video by reference (its type read from the file's first bytes, not the whole file)."""
    if video.key is None:
        return {'$base64': base64.b64encode(video.data).decode(), 'media_type': video.media_type}
    url = f'{ARTIFACTS_PATH}{video.key}?media_type={quote(video.media_type)}'  # served with its type: playable
    return {'$artifact': video.key, 'url': url, 'media_type': video.media_type}


def from_json(value: Any, where: str) -> Any:
    """A JSON value with ``{"$base64": ...}`` turned into bytes; ``where`` names the value in errors."""
    if isinstance(value, dict):
        if '$base64' in value:
            text = value['$base64']
            if not isinstance(text, str):
                raise InvalidValue(f'{where}: $base64 holds text, got {type(text).__name__}')
            try:
                return base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidValue(f'{where}: $base64 is not valid base64') from None
        return {k: from_json(v, f'{where}.{k}') for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v, f'{where}[{i}]') for i, v in enumerate(value)]
    return value


def without_signatures(record: Any) -> Any:
    """A component record without the signatures of its code artifacts (they are this deployment's business)."""
    if isinstance(record, dict):
        return {k: without_signatures(v) for k, v in record.items() if k != 'signature'}
    if isinstance(record, list):
        return [without_signatures(v) for v in record]
    return record
