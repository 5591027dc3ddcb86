"""The modules that may be compiled with mypyc, and whether the running ones are.

The broker is pure Python. The optional build (README, "Compiled build") compiles the
modules on the message path (the core, the log's encoding, the MQTT codec and connection)
with mypyc: Python then loads the compiled ones, faster on MQTT deliveries. A compiled module
older than its source would run code that is no longer there, so the node refuses to start
with one.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

#: compiled by the optional build (commands stay pure Python: the store's encoding reads the
#: annotations of their fields, which compiled classes do not keep; the applier too, as the
#: cluster's applier, which is not compiled, builds on it)
MODULES = (
    "broker.core.arguments",
    "broker.core.auth",
    "broker.core.errors",
    "broker.core.model",
    "broker.core.queue",
    "broker.core.routing",
    "broker.core.state",
    "broker.protocols.mqtt.codec",
    "broker.protocols.mqtt.connection",
    "broker.protocols.mqtt.session",
    "broker.protocols.mqtt.topics",
    "broker.store.encoding",
    "broker.store.schema",
)


def _origin(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    return Path(spec.origin) if spec is not None and spec.origin else None


def _is_extension(path: Path) -> bool:
    return any(path.name.endswith(suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def compiled() -> list[str]:
    """The modules of MODULES that Python loads compiled."""
    return [m for m in MODULES if (path := _origin(m)) is not None and _is_extension(path)]


def stale() -> list[str]:
    """Compiled modules whose source changed since they were compiled."""
    out = []
    for module in compiled():
        path = _origin(module)
        assert path is not None
        source = path.parent / (module.rpartition(".")[2] + ".py")
        if source.exists() and source.stat().st_mtime > path.stat().st_mtime:
            out.append(module)
    return out
