#!/usr/bin/env bash
# Runs pytest against the compiled build (broker/compiled.py): a copy of this checkout is
# compiled with mypyc in a temporary directory and the tests run there, so the sources here
# are never shadowed by compiled modules. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
if ! command -v cc > /dev/null; then
    echo "== no C compiler here: the compiled build is not tested"
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar --exclude=./.venv --exclude=./.git --exclude=./build --exclude='*.so' -cf - . | tar -xf - -C "$work"
cd "$work"
echo "== compiling with mypyc in $work"
BROKER_COMPILE=1 "$root/.venv/bin/python" setup.py -q build_ext --inplace > build.log 2>&1 || {
    tail -40 build.log
    exit 1
}
"$root/.venv/bin/python" -c 'from broker.compiled import MODULES, compiled
assert compiled() == list(MODULES), compiled()'
echo "== pytest (compiled)"
"$root/.venv/bin/python" -m pytest -p no:cacheprovider "$@"
