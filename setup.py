"""Packaging stays in pyproject.toml; this only adds the optional compiled build.

`BROKER_COMPILE=1 pip install --no-build-isolation .` (with mypy installed) compiles the
modules listed in broker/compiled.py with mypyc; without the variable the package is pure
Python, as it always works.
"""

import os
import sys
from pathlib import Path

from setuptools import setup

ext_modules = []
if os.environ.get("BROKER_COMPILE") == "1":
    from mypyc.build import mypycify

    sys.path.insert(0, str(Path(__file__).parent))  # the module list, from the sources
    from broker.compiled import MODULES

    ext_modules = mypycify([m.replace(".", "/") + ".py" for m in MODULES], opt_level="3")

setup(ext_modules=ext_modules)
