"""Users' passwords and permissions, with RabbitMQ's formats and matching rules."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable
from functools import lru_cache

from broker.core.errors import InvalidArgument
from broker.core.model import Permission

#: RabbitMQ's hashing algorithms (its `hashing_algorithm` names) and their digests: the stored
#: hash is base64(salt + digest(salt + UTF-8 password)) with a 4-byte random salt.
HASHING: dict[str, Callable[[bytes], bytes]] = {
    "rabbit_password_hashing_sha256": lambda data: hashlib.sha256(data).digest(),
    "rabbit_password_hashing_sha512": lambda data: hashlib.sha512(data).digest(),
    "rabbit_password_hashing_md5": lambda data: hashlib.md5(data).digest(),
}
DEFAULT_HASHING = "rabbit_password_hashing_sha256"
SALT_BYTES = 4

#: How a stored hash names its algorithm: SHA-256 hashes are stored bare (the format of every
#: data dir so far); imported hashes of another algorithm carry its short name and a colon,
#: which base64 never contains.
_PREFIXES = {"rabbit_password_hashing_sha512": "sha512:", "rabbit_password_hashing_md5": "md5:"}


def hash_password(password: str, salt: bytes, algorithm: str = DEFAULT_HASHING) -> str:
    """RabbitMQ's salted format: base64(salt + digest(salt + password))."""
    digest = HASHING[algorithm](salt + password.encode())
    return base64.b64encode(salt + digest).decode()


def check_password(password: str, stored: str) -> bool:
    """Whether `password` matches a stored hash; the digests are compared in constant time."""
    algorithm, encoded = split_stored(stored)
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return False
    salt, expected = raw[:SALT_BYTES], raw[SALT_BYTES:]
    digest = HASHING[algorithm](salt + password.encode())
    return len(raw) > SALT_BYTES and hmac.compare_digest(digest, expected)


def split_stored(stored: str) -> tuple[str, str]:
    """A stored hash as (RabbitMQ algorithm name, base64 password_hash)."""
    for algorithm, prefix in _PREFIXES.items():
        if stored.startswith(prefix):
            return algorithm, stored[len(prefix) :]
    return DEFAULT_HASHING, stored


def stored_hash(algorithm: str, password_hash: str) -> str:
    """What to store for a RabbitMQ definitions user; refuses algorithms and hashes we cannot
    verify ('' is RabbitMQ's user without a password: no password matches it)."""
    if algorithm not in HASHING:
        raise InvalidArgument(
            f"unsupported hashing_algorithm '{algorithm}' (supported: {', '.join(HASHING)})"
        )
    if password_hash:
        try:
            raw = base64.b64decode(password_hash, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgument(f"password_hash '{password_hash}' is not base64") from None
        if len(raw) != SALT_BYTES + len(HASHING[algorithm](b"")):
            raise InvalidArgument(f"password_hash '{password_hash}' is not a {algorithm} hash")
    return _PREFIXES.get(algorithm, "") + password_hash


@lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def permits(permission: Permission | None, kind: str, name: str) -> bool:
    """Whether a configure/write/read regex allows `name` (unanchored, '' allows nothing)."""
    if permission is None:
        return False
    pattern = getattr(permission, kind)
    if pattern == "":
        return False
    try:
        return _compiled(pattern).search(name) is not None
    except re.error:
        return False
