"""Who sent a request: signature, timestamp window and nonce replay checks.

Pure: the caller passes the keys, the current time and the gateway's record of the nonces
seen (a ReplayGuard on the node that leads). Nonces are remembered per Timestamp second only
while that Timestamp is inside the window, since older ones are refused anyway.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping

from broker.core.model import AccessKey
from broker.protocols.http import errors
from broker.protocols.http.errors import AUTH_FAILED, CmqError
from broker.protocols.http.params import Params, parse_integer
from broker.protocols.http.signature import SIGNATURE, verify

_MAX_INT = 2**63 - 1


class ReplayGuard:
    """Remembers (secret id, nonce) per request Timestamp inside the skew window."""

    def __init__(self, skew_s: int, capacity: int) -> None:
        self.skew_s = skew_s
        self.capacity = capacity
        self._seen: dict[int, set[tuple[str, int]]] = {}
        self._stamps: list[int] = []
        self.size = 0
        #: entries dropped before their window closed because the cache was full
        self.evicted = 0

    def first_use(self, secret_id: str, timestamp: int, nonce: int, now_s: int) -> bool:
        """True, and remembered, the first time; False for a replay."""
        self._forget_before(now_s - self.skew_s)
        seen = self._seen.get(timestamp)
        if seen is None:
            seen = self._seen[timestamp] = set()
            heapq.heappush(self._stamps, timestamp)
        entry = (secret_id, nonce)
        if entry in seen:
            return False
        seen.add(entry)
        self.size += 1
        while self.size > self.capacity and len(self._stamps) > 1:
            self.evicted += self._drop_oldest()
        return True

    def _forget_before(self, oldest: int) -> None:
        while self._stamps and self._stamps[0] < oldest:
            self._drop_oldest()

    def _drop_oldest(self) -> int:
        stamp = heapq.heappop(self._stamps)
        dropped = len(self._seen.pop(stamp, ()))
        self.size -= dropped
        return dropped


def authenticate(
    params: Params,
    method: str,
    host: str,
    path: str,
    keys: Mapping[str, AccessKey],
    first_use: Callable[[str, int, int], bool],
    now_s: int,
    skew_s: int,
) -> AccessKey:
    """The access key that signed the request; raises CmqError (4100, or 4000 for types)."""
    secret_id = params.optional_text("secretId")
    if not secret_id:
        raise CmqError(AUTH_FAILED, "SecretId is missing")
    signature = params.optional_text("signature")
    if not signature:
        raise CmqError(AUTH_FAILED, "Signature is missing")
    key = keys.get(secret_id)
    signed = {k: v for k, v in params.raw.items() if k != SIGNATURE and k != "signature"}
    digest = params.optional_text("signatureMethod")
    if key is None:
        raise CmqError(AUTH_FAILED, "authentication failed: unknown SecretId or bad Signature")
    if not verify(key.secret_key, method, host, path, signed, signature, digest):
        unsigned = _unsigned_at_values(
            key.secret_key, method, host, path, signed, signature, digest
        )
        if unsigned:
            raise CmqError(
                AUTH_FAILED,
                f"authentication failed: {', '.join(unsigned)} not covered by the Signature "
                "(values starting with '@' are left out of what the Python SDK signs for POST; "
                "send them with GET or without a leading '@')",
            )
        raise CmqError(AUTH_FAILED, "authentication failed: unknown SecretId or bad Signature")
    timestamp, nonce = params.optional_text("timestamp"), params.optional_text("nonce")
    if timestamp is None or nonce is None:
        raise errors.missing("Timestamp" if timestamp is None else "Nonce")
    stamp = parse_integer("Timestamp", timestamp, 0, _MAX_INT)
    number = parse_integer("Nonce", nonce, 1, _MAX_INT)
    if abs(now_s - stamp) > skew_s:
        raise CmqError(
            AUTH_FAILED,
            f"request expired: Timestamp {stamp} is more than {skew_s} s from the server's clock",
        )
    if not first_use(secret_id, stamp, number):
        raise CmqError(AUTH_FAILED, "replayed request: this Nonce was already used")
    return key


def _unsigned_at_values(
    secret_key: str,
    method: str,
    host: str,
    path: str,
    signed: Mapping[str, str],
    signature: str,
    digest: str | None,
) -> list[str]:
    """The `@`-valued parameters a POST was signed without (the Python SDK's way), or [].

    Such a request is refused, never run without them: anyone on the path could have added
    them (`msgTag.1=@x` changes which subscriptions a message reaches), and dropping the
    ones the SDK sent would silently change the request.
    """
    names = sorted(k for k, v in signed.items() if v.startswith("@"))
    if method.upper() != "POST" or not names:
        return []
    if verify(secret_key, method, host, path, signed, signature, digest, skip_at_values=True):
        return names
    return []
