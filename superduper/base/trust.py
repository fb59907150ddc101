"""The trust boundary: code is loaded only from bytes this deployment wrote, or that the user said to trust.

Loading a pickle (a function of an ``ObjectModel``, a ``torch.save``d module, a value of a ``pickle`` or ``object``
field) runs code. Anyone who can write to the database or the artifact store (any client of it, by default) could
otherwise make every process that reads it run their code. So superduper signs what it writes that will later be
unpickled, with a secret kept outside the database, and refuses to unpickle what carries no valid signature:

* a component's code artifact is referred to by the SHA-256 of its bytes, and its record carries
  ``HMAC(secret, key)``: the bytes are checked against the key, the key against the signature;
* a pickled field value is stored as ``SIGNED + HMAC(secret, pickle) + pickle``.

The secret is ``SUPERDUPER_SECRET`` if set (every process of a deployment, workers included, must see the same
one), else a random key made on first use in ``~/.superduper/secret.key`` (readable by its owner only), which every
process of the same user on the machine shares. A package from elsewhere is trusted explicitly
(``Template.read(path, trust=True)``): applying it stores its components signed by this deployment.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from pathlib import Path

from superduper.base.exceptions import ConfigError, SuperduperError

SECRET_ENV = 'SUPERDUPER_SECRET'
KEY_FILE_ENV = 'SUPERDUPER_SECRET_FILE'
SIGNED = b'SDSIG1'  # the prefix of a signed pickled value
_MAC_BYTES = 32

_lock = threading.Lock()
_cached: tuple[str, bytes] | None = None  # (where it came from, the secret)


class UntrustedCode(SuperduperError):
    """Loading these bytes would run code that this deployment did not write and nobody said to trust."""


def _key_file() -> Path:
    return Path(os.environ.get(KEY_FILE_ENV) or Path.home() / '.superduper' / 'secret.key')


def secret() -> bytes:
    """This deployment's signing secret (see the module's description)."""
    global _cached
    given = os.environ.get(SECRET_ENV)
    source = 'env:' + given if given else 'file:' + str(_key_file())
    with _lock:
        if _cached is not None and _cached[0] == source:
            return _cached[1]
        key = given.encode() if given else _read_or_make(_key_file())
        _cached = (source, key)
        return key


def _read_or_make(path: Path) -> bytes:
    try:
        try:
            return path.read_bytes().strip()
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        made = secrets.token_hex(32).encode()
        try:  # exclusive: two processes making it at once agree on the first one written
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_bytes().strip()
        with os.fdopen(fd, 'wb') as f:
            f.write(made)
        return made
    except OSError as e:
        raise ConfigError(f'cannot read or make the signing key {str(path)!r} ({e.strerror or e}); set '
                          f'{SECRET_ENV} (the same in every process of the deployment) or {KEY_FILE_ENV}') from None


def sign(purpose: str, data: bytes | str) -> str:
    """The signature of ``data`` for ``purpose`` (hex)."""
    payload = data.encode() if isinstance(data, str) else data
    return hmac.new(secret(), purpose.encode() + b'\0' + payload, hashlib.sha256).hexdigest()


def signed(purpose: str, data: bytes | str, signature: object) -> bool:
    return isinstance(signature, str) and hmac.compare_digest(sign(purpose, data), signature)


def check_artifact(key: str, data: bytes, signature: object, trusted: bool, what: str) -> None:
    """Refuse to load the code artifact ``key`` unless its bytes are the key's and the key is signed here (or the
    source is trusted)."""
    if hashlib.sha256(data).hexdigest() != key:
        raise UntrustedCode(f'{what}: artifact {key[:12]}... does not hold the bytes its key names (changed in the '
                            'artifact store); refused')
    if not trusted and not signed('artifact', key, signature):
        raise UntrustedCode(
            f'{what}: artifact {key[:12]}... holds code (a pickle) that this deployment did not sign; loading it '
            f'would run it, so it was refused. If it was written by another deployment you trust, give this process '
            f'its secret ({SECRET_ENV}); a package from elsewhere is read with trust=True'
        )


def seal_value(data: bytes) -> bytes:
    """A pickled field value, signed for ``open_value``."""
    mac = hmac.new(secret(), b'value\0' + data, hashlib.sha256).digest()
    return SIGNED + mac + data


def open_value(data: bytes) -> bytes:
    """The pickle inside a value ``seal_value`` made; refused if anyone else made it."""
    data = bytes(data)
    head, mac, body = data[: len(SIGNED)], data[len(SIGNED) : len(SIGNED) + _MAC_BYTES], data[len(SIGNED) + _MAC_BYTES :]
    expected = hmac.new(secret(), b'value\0' + body, hashlib.sha256).digest()
    if head != SIGNED or not hmac.compare_digest(mac, expected):
        raise UntrustedCode('a pickled value that this deployment did not write (no valid signature): loading it '
                            'would run its code, so it was refused')
    return body

