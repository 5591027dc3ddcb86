"""Reading requests and writing replies the way RabbitMQ's API does.

Bodies are JSON objects whose flags may come as strings ("true", as rabbitmqadmin sends
them); lists take RabbitMQ's query parameters: `columns`, `sort`, `sort_reverse`, `name` with
`use_regex`, and `page` / `page_size` (which wrap the list in a page object).
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from broker.core.errors import InvalidArgument
from broker.field_values import check_short_string, check_table
from broker.management.errors import bad_request
from broker.management.jsonable import dumps

#: RabbitMQ's largest page
MAX_PAGE_SIZE = 500


def ok(data: Any, status: int = 200) -> web.Response:
    """A JSON reply; never cached (RabbitMQ's say so too): the numbers change."""
    return web.Response(
        status=status,
        text=dumps(data),
        content_type="application/json",
        headers={"Cache-Control": "no-cache"},
    )


def no_content() -> web.Response:
    return web.Response(status=204)


def created_or_updated(existed: bool) -> web.Response:
    """PUT: 201 when it made the object, 204 when it was there."""
    return web.Response(status=204 if existed else 201)


def segment(request: web.Request, key: str) -> str:
    """A path segment, percent-decoded (a vhost "/" is "%2F" in the path)."""
    return request.match_info[key]


def short(value: str, what: str) -> str:
    """A queue or exchange name or a routing key: at most 255 bytes, as AMQP carries them."""
    try:
        return check_short_string(value, what)
    except InvalidArgument as exc:
        raise bad_request(str(exc)) from None


async def body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; an empty body is an empty object."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"failed to decode JSON: {exc}") from None
    if not isinstance(value, dict):
        raise bad_request("the request body must be a JSON object")
    return value


def flag(data: dict[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise bad_request(f"{key} must be true or false, not {value!r}")


def integer(data: dict[str, Any], key: str, default: int, minimum: int = 0) -> int:
    value = data.get(key, default)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise bad_request(f"{key} must be an integer of at least {minimum}, not {value!r}")
    return value


def text(data: dict[str, Any], key: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise bad_request(f"{key} must be a string" if key in data else f"{key} is missing")
    return value


def table(data: dict[str, Any], key: str) -> dict[str, Any]:
    """A field table (arguments, headers): what AMQP can carry (broker.field_values)."""
    try:
        return check_table(data.get(key) or {}, key)
    except InvalidArgument as exc:
        raise bad_request(str(exc)) from None


def listing(request: web.Request, items: list[dict[str, Any]]) -> web.Response:
    """A list reply, filtered, sorted, paged and cut to columns as the query asks."""
    query = request.query
    total = len(items)
    name = query.get("name")
    if name:
        if query.get("use_regex") == "true":
            try:
                pattern = re.compile(name)
            except re.error as exc:
                raise bad_request(f"invalid regex {name!r}: {exc}") from None
            items = [i for i in items if pattern.search(str(i.get("name", "")))]
        else:
            items = [i for i in items if name in str(i.get("name", ""))]
    sort = query.get("sort")
    if sort:
        items = sorted(items, key=lambda i: _sort_key(_pick(i, sort)))
    if query.get("sort_reverse") == "true":
        items = list(reversed(items))
    columns = [c for c in query.get("columns", "").split(",") if c]
    if columns:
        items = [_columns(i, columns) for i in items]
    if "page" not in query:
        return ok(items)
    page = integer(dict(query), "page", 1, minimum=1)
    size = integer(dict(query), "page_size", 100, minimum=1)
    if size > MAX_PAGE_SIZE:
        raise bad_request(f"page_size must be at most {MAX_PAGE_SIZE}")
    count = max(1, -(-len(items) // size))
    chosen = items[(page - 1) * size : page * size]
    return ok(
        {
            "filtered_count": len(items),
            "item_count": len(chosen),
            "items": chosen,
            "page": page,
            "page_count": count,
            "page_size": size,
            "total_count": total,
        }
    )


def _pick(item: dict[str, Any], path: str) -> Any:
    value: Any = item
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _sort_key(value: Any) -> tuple[int, Any]:
    """Numbers before strings before the rest, so mixed columns still sort."""
    if isinstance(value, bool | int | float):
        return (0, value)
    if isinstance(value, str):
        return (1, value)
    return (2, str(value))


def _columns(item: dict[str, Any], columns: list[str]) -> dict[str, Any]:
    """The item cut to dotted column paths, nested as in the item."""
    out: dict[str, Any] = {}
    for column in columns:
        value = _pick(item, column)
        if value is None:
            continue
        target = out
        parts = column.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return out
