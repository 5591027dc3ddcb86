"""Request parameters: decoded from the form body or query string, looked up by name.

Pure functions, no I/O. Names are matched with their first letter lower-cased, so both the
2.0 lowerCamel (`queueName`) and the later UpperCamel (`QueueName`) spellings work. Arrays are
flattened as `name.1`, `name.2`, ... and must be consecutive from 0 or 1.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, unquote_to_bytes

from broker.protocols.http import errors

_INTEGER = re.compile(r"-?[0-9]{1,19}")
#: queue, topic and subscription names (the Go SDK also allows `_`)
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
#: a parameter name, with an array index after a dot for flattened arrays
_KEY = re.compile(r"([A-Za-z][A-Za-z0-9_]*)(?:\.([0-9]{1,4}))?")
#: parsed parameter names (see `_parse_key`), so the usual few skip the regex
_KEYS: dict[str, tuple[str, str | None, int]] = {}
_KEYS_MAX = 4096
_KEY_CACHED_LENGTH = 64


def is_valid_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


def normal_name(key: str) -> str:
    return key[:1].lower() + key[1:]


def parse_form(data: str) -> list[tuple[str, str]]:
    """`k=v&...` pairs, percent- and plus-decoded; raises CmqError on malformed input.

    Exactly `parse_qsl(data, keep_blank_values=True, strict_parsing=True, errors="strict")`,
    errors included, without its per-field overhead.
    """
    if not data:
        return []
    pairs = []
    try:
        for field in data.split("&"):
            name, eq, value = field.partition("=")
            if not eq:
                raise ValueError(f"bad query field: {field!r}")
            pairs.append((_unquote(name), _unquote(value)))
    except ValueError as exc:  # UnicodeDecodeError included
        raise errors.invalid_request(f"malformed form data ({exc})") from None
    return pairs


def _unquote(text: str) -> str:
    if "+" in text:
        text = text.replace("+", " ")
    if "%" not in text:
        return text
    # Decoding the value whole succeeds exactly when `unquote`'s piecewise decoding does,
    # with the same text, in a third of the time (every Signature has a %2B, %2F or %3D);
    # what fails goes through `unquote` for its very error.
    try:
        return unquote_to_bytes(text).decode("utf-8")
    except UnicodeError:
        return unquote(text, errors="strict")


def _parse_key(key: str) -> tuple[str, str | None, int]:
    """(normal name, array name or None, array index) of a parameter name as sent."""
    parsed = _KEYS.get(key)
    if parsed is not None:
        return parsed
    name = normal_name(key)
    match = _KEY.fullmatch(name)
    if match is None:
        raise errors.key_format(key)
    parsed = (name, None, 0) if match[2] is None else (name, match[1], int(match[2]))
    if len(key) <= _KEY_CACHED_LENGTH and len(_KEYS) < _KEYS_MAX:
        _KEYS[key] = parsed
    return parsed


class Params:
    """One request's parameters.

    `raw` keeps the names as sent, for the signature; lookups use the normalised names.
    """

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.raw: dict[str, str] = {}
        self._values: dict[str, str] = {}
        self._arrays: dict[str, dict[int, str]] = {}
        values = self._values
        for key, value in pairs:
            name, array, index = _parse_key(key)
            if name in values:
                raise errors.not_repeatable(key)
            self.raw[key] = value
            values[name] = value
            if array is not None:
                self._arrays.setdefault(array, {})[index] = value

    def text(self, name: str, *, max_length: int | None = None) -> str:
        """A required string parameter."""
        value = self._values.get(name)
        if value is None:
            raise errors.missing(name)
        if max_length is not None and len(value) > max_length:
            raise errors.out_of_range(name, f"at most {max_length} characters")
        return value

    def name(self, key: str) -> str:
        """A queue, topic or subscription name: a letter, then letters, digits, - or _."""
        value = self.text(key)
        if not is_valid_name(value):
            raise errors.out_of_range(key, "1-64 letters, digits, - or _, starting with a letter")
        return value

    def optional_text(self, name: str, *, max_length: int | None = None) -> str | None:
        return self.text(name, max_length=max_length) if name in self._values else None

    def integer(self, name: str, low: int, high: int, default: int | None = None) -> int:
        """An integer in [low, high]; `default` when absent (required if None)."""
        value = self._values.get(name)
        if value is None:
            if default is None:
                raise errors.missing(name)
            return default
        return parse_integer(name, value, low, high)

    def optional_integer(self, name: str, low: int, high: int) -> int | None:
        return self.integer(name, low, high) if name in self._values else None

    def array(self, name: str, max_items: int, *, required: bool = False) -> list[str]:
        """The values of `name.N`, in index order."""
        items = self._arrays.get(name, {})
        if not items:
            if required:
                raise errors.missing(f"{name}.n")
            return []
        if len(items) > max_items:
            raise errors.batch_size(name)
        indexes = sorted(items)
        start = indexes[0]
        if start not in (0, 1) or indexes[-1] - start != len(indexes) - 1:
            raise errors.not_consecutive(name)
        return [items[i] for i in indexes]

    def has_array(self, name: str) -> bool:
        return name in self._arrays


def parse_integer(name: str, value: str, low: int, high: int) -> int:
    # int() strips less than str.strip() does (not "\x1e", say): parse what was checked
    text = value.strip()
    if _INTEGER.fullmatch(text) is None:
        raise errors.wrong_type(name)
    number = int(text)
    if not low <= number <= high:
        raise errors.out_of_range(name, f"{low}-{high}")
    return number


def parse_request(method: str, query: str, body: bytes) -> Params:
    """Parameters of a GET (query string) or POST (form body, plus any query string).

    The body is read as a form whatever the Content-Type: the official SDKs send none.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.invalid_request("the body is not UTF-8 form data") from None
    pairs = parse_form(query)
    if method == "POST":
        pairs += parse_form(text.strip())
    return Params(pairs)


def page(names: Iterable[str], params: Params, max_limit: int = 50) -> tuple[int, list[str]]:
    """(total, one page) of the sorted valid names containing `searchWord`, by offset/limit."""
    word = params.optional_text("searchWord") or ""
    matching = sorted(n for n in names if is_valid_name(n) and word in n)
    offset = params.integer("offset", 0, 1 << 31, 0)
    limit = params.integer("limit", 1, max_limit, 20)
    return len(matching), matching[offset : offset + limit]
