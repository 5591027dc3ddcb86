"""Users' passwords and permissions, with RabbitMQ's formats and matching rules."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from functools import lru_cache

from broker.core.model import Permission


def hash_password(password: str, salt: bytes) -> str:
    """RabbitMQ's salted SHA-256 format: base64(salt + sha256(salt + password))."""
    digest = hashlib.sha256(salt + password.encode()).digest()
    return base64.b64encode(salt + digest).decode()


def check_password(password: str, stored: str) -> bool:
    try:
        raw = base64.b64decode(stored)
    except ValueError:
        return False
    salt = raw[:4]
    return hmac.compare_digest(hash_password(password, salt), stored)


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
