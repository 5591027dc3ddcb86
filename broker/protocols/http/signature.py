"""The CMQ API 2.0 request signature, as the official SDKs compute it.

string to sign = METHOD + Host header (with its port) + path + "?" + the parameters except
`Signature`, sorted by name, joined as `k=v` with raw (not URL-encoded) values and `_` in
names read as `.`; signature = base64(HMAC-SHA1 or -SHA256(secret key, string)).
"""

from __future__ import annotations

import base64
import functools
import hmac
from collections.abc import Mapping

SIGNATURE = "Signature"


def digest_name(signature_method: str | None) -> str:
    """HmacSHA256 selects SHA-256; anything else (or nothing) is HmacSHA1, as CMQ does."""
    return "sha256" if signature_method == "HmacSHA256" else "sha1"


def string_to_sign(
    method: str, host: str, path: str, params: Mapping[str, str], skip_at_values: bool = False
) -> str:
    """`skip_at_values` leaves out values starting with `@` (the Python SDK does so for POST)."""
    pairs = [
        key.replace("_", ".") + "=" + params[key]
        for key in sorted(params)
        if key != SIGNATURE and not (skip_at_values and params[key].startswith("@"))
    ]
    return method.upper() + host + path + "?" + "&".join(pairs)


@functools.lru_cache(maxsize=256)
def _keyed(secret_key: str, digest: str) -> hmac.HMAC:
    """The HMAC state after the key, copied for each message instead of re-keyed."""
    return hmac.new(secret_key.encode(), digestmod=digest)


def sign(secret_key: str, text: str, digest: str = "sha1") -> str:
    """Signs the bytes the client sent: headers that are not UTF-8 reach us with their bytes
    kept as surrogates (aiohttp decodes them so), which go back to those bytes here."""
    mac = _keyed(secret_key, digest).copy()
    mac.update(text.encode("utf-8", "surrogateescape"))
    return base64.b64encode(mac.digest()).decode()


def verify(
    secret_key: str,
    method: str,
    host: str,
    path: str,
    params: Mapping[str, str],
    signature: str,
    signature_method: str | None,
    skip_at_values: bool = False,
) -> bool:
    """True if `signature` signs the request, every parameter included (compared as bytes:
    compare_digest refuses strings that are not ASCII, and a client may send anything).

    `skip_at_values` checks the string the Python SDK signs for POST instead, without the
    values starting with `@`: only to tell its users why such a request is refused.
    """
    text = string_to_sign(method, host, path, params, skip_at_values)
    expected = sign(secret_key, text, digest_name(signature_method))
    return hmac.compare_digest(expected.encode(), signature.encode("utf-8", "surrogateescape"))
