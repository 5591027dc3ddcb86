"""Core values as JSON: AMQP field tables hold bytes, timestamps and decimals."""

from __future__ import annotations

import datetime
import decimal
import json
from typing import Any


def jsonable(value: Any) -> Any:
    """`value` with what JSON cannot carry turned into what RabbitMQ shows for it."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:  # AMQP timestamps are UTC
            value = value.replace(tzinfo=datetime.UTC)
        return int(value.timestamp())
    if isinstance(value, decimal.Decimal):
        return float(value)
    return value


_encoder = json.JSONEncoder(ensure_ascii=False, default=str)


def dumps(value: Any) -> str:
    return _encoder.encode(jsonable(value))
