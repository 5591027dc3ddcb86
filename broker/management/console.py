"""The web console at `/`: three static files shipped inside the package
(broker/management/console/), served as they are, with no build step.

The console is a client of /api like any other; its page asks for the credentials itself,
so these routes are open. Only the listed files are served: nothing else of the package
(or beyond it) can be reached through a crafted path.
"""

from __future__ import annotations

import pathlib

from aiohttp import web

from broker.management.context import Context
from broker.management.errors import not_found

CONSOLE_DIR = pathlib.Path(__file__).with_name("console")

#: file -> content type; everything the page loads
FILES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
}

#: the page runs only its own script and style and talks only to this origin
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def add_routes(app: web.Application, ctx: Context) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/console/{file}", asset)


def _serve(name: str) -> web.FileResponse:
    headers = dict(HEADERS, **{"Content-Type": FILES[name] + "; charset=utf-8"})
    return web.FileResponse(CONSOLE_DIR / name, headers=headers)


async def index(request: web.Request) -> web.FileResponse:
    return _serve("index.html")


async def asset(request: web.Request) -> web.FileResponse:
    name = request.match_info["file"]
    if name not in FILES or name == "index.html":
        raise not_found()
    return _serve(name)
