"""JSON values bound for the core as AMQP field-table values (declare and binding arguments,
message headers) from the JSON edges: the management API and definitions files.

AMQP clients cannot send anything but field-table values, so the core, the log's encoding
and the AMQP codec take nothing else: an integer past 64 bits, say, would fail the log
write. What comes as JSON is checked here first and refused with a clear error.
"""

from __future__ import annotations

from typing import Any

from broker.core.errors import InvalidArgument

INT_MIN, INT_MAX = -(2**63), 2**63 - 1
#: AMQP's short strings (field names, queue and exchange names, routing keys)
MAX_KEY_BYTES = 255
#: tables and arrays nested deeper than this are refused
MAX_DEPTH = 32


def check_table(value: Any, what: str) -> dict[str, Any]:
    """`value` if it is a JSON object that AMQP can carry as a field table."""
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object")
    _check(value, what, 0)
    return value


def check_short_string(value: str, what: str) -> str:
    """`value` if it fits an AMQP short string: queue and exchange names and routing keys
    travel in them (RabbitMQ refuses longer names too)."""
    if len(value.encode()) > MAX_KEY_BYTES:
        raise InvalidArgument(f"{what} is longer than {MAX_KEY_BYTES} bytes")
    return value


def _check(value: Any, what: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise InvalidArgument(f"{what} nests deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, bool | str | float):
        return
    if isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise InvalidArgument(f"{what}: the integer {value} does not fit in 64 bits")
        return
    if isinstance(value, list):
        for item in value:
            _check(item, what, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or len(key.encode()) > MAX_KEY_BYTES:
                raise InvalidArgument(f"{what}: field names are strings of at most 255 bytes")
            _check(item, what, depth + 1)
        return
    raise InvalidArgument(f"{what}: {type(value).__name__} values are not supported")
