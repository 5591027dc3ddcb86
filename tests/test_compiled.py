"""The optional compiled build: which modules run compiled, and which are stale."""

from __future__ import annotations

import importlib.machinery
import os
from pathlib import Path

import pytest

from broker import compiled


def test_a_compiled_module_older_than_its_source_is_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = tmp_path / ("state" + importlib.machinery.EXTENSION_SUFFIXES[0])
    source = tmp_path / "state.py"
    built.write_bytes(b"")
    source.write_text("")
    monkeypatch.setattr(
        compiled, "_origin", lambda module: built if module == "broker.core.state" else source
    )
    assert compiled.compiled() == ["broker.core.state"]
    os.utime(built, (1, 1))
    assert compiled.stale() == ["broker.core.state"]
    later = source.stat().st_mtime + 10
    os.utime(built, (later, later))
    assert compiled.stale() == []
