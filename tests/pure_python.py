"""Tests that patch core methods, copy core objects or take weak references to connections:
the classes mypyc compiles (broker/compiled.py) allow none of that, so under
scripts/test-compiled.sh these run on the pure-Python build only."""

import pytest

from broker.compiled import compiled

pure_python_only = pytest.mark.skipif(
    bool(compiled()), reason="patches, copies or weakly refers to compiled classes"
)
