#!/usr/bin/env bash
# Run amqp_bench.py against two brokers in one go and print the results side by side.
#
#   benchmarks/compare.sh URL_A URL_B [amqp_bench.py options...]
#
# Example (ours on 5673, RabbitMQ on 5672):
#   benchmarks/compare.sh amqp://guest:guest@127.0.0.1:5673/%2F \
#                         amqp://guest:guest@127.0.0.1:5672/%2F --count 20000
#
# Options after the two URLs go to amqp_bench.py for both brokers, e.g. --queue-type quorum
# (x-queue-type on queue.declare) to measure replicated queues, against the 3-node RabbitMQ
# of rabbitmq_cluster.sh (amqp://guest:guest@127.0.0.1:5701/%2F).
#
# Environment: LABEL_A (default "ours"), LABEL_B (default "rabbitmq"),
# ROUNDS (default 3), PYTHON (default python3).
#
# Rounds are interleaved (A, B, A, B, ...) so background noise on a small
# machine hits both brokers alike; the table shows the median of the rounds.
# Only one broker is loaded at a time, but both stay up: on a 2-core machine an
# idle broker still costs a little CPU.  Exit status is non-zero if any run failed.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi

url_a=$1
url_b=$2
shift 2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
python=${PYTHON:-python3}
rounds=${ROUNDS:-3}
label_a=${LABEL_A:-ours}
label_b=${LABEL_B:-rabbitmq}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

status=0
for ((i = 1; i <= rounds; i++)); do
    for side in a b; do
        if [[ $side == a ]]; then url=$url_a label=$label_a; else url=$url_b label=$label_b; fi
        echo "== round $i/$rounds: $label" >&2
        if ! "$python" "$here/amqp_bench.py" --url "$url" --mode all "$@" --json \
            >"$out/$side.$i.json"; then
            status=1
        fi
    done
done

"$python" - "$out" "$rounds" "$label_a" "$label_b" <<'PY'
"""Merge the per-round JSON documents into a side-by-side table."""
import json
import statistics
import sys
from pathlib import Path

out, rounds, labels = Path(sys.argv[1]), int(sys.argv[2]), {"a": sys.argv[3], "b": sys.argv[4]}
runs = {"a": [], "b": []}
for side in runs:
    for i in range(1, rounds + 1):
        path = out / f"{side}.{i}.json"
        text = path.read_text().strip() if path.exists() else ""
        if text:
            runs[side].extend(json.loads(text.splitlines()[-1])["runs"])


def values(side, mode, key, sub=None):
    vals = []
    for r in runs[side]:
        if r["mode"] != mode or r["errors"]:
            continue
        v = r.get(key)
        if sub is not None:
            v = v.get(sub) if v else None
        if v is not None:
            vals.append(v)
    return vals


def med(side, mode, key, sub=None):
    vals = values(side, mode, key, sub)
    return statistics.median(vals) if vals else None


def spread(side, mode):
    vals = values(side, mode, "msg_per_s")
    return f"{min(vals) / 1000:.0f}-{max(vals) / 1000:.0f}k" if vals else "-"


def failures(side, mode):
    return sum(1 for r in runs[side] if r["mode"] == mode and r["errors"])


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


la, lb = labels["a"], labels["b"]
print()
print(f"median of {rounds} round(s) (spread: lowest-highest); msg/s higher is better, latency in ms")
head = f"{'mode':<8} {la + ' msg/s':>16} {lb + ' msg/s':>16} {'ratio':>6} {'spread ' + la:>16} {'spread ' + lb:>16}   {'confirm p50/p99 ' + la:>26} {'confirm p50/p99 ' + lb:>26}"
print(head)
print("-" * len(head))
for mode in ("produce", "consume", "both"):
    a, b = med("a", mode, "msg_per_s"), med("b", mode, "msg_per_s")
    ratio = fmt(a / b, ".2f") if a and b else "-"
    lat = {
        s: f"{fmt(med(s, mode, 'confirm_ms', 'p50'), '.2f')} / {fmt(med(s, mode, 'confirm_ms', 'p99'), '.2f')}"
        for s in ("a", "b")
    }
    fa, fb = failures("a", mode), failures("b", mode)
    note = f"  FAILED runs: {la} {fa}, {lb} {fb}" if fa or fb else ""
    spreads = f"{spread('a', mode):>16} {spread('b', mode):>16}"
    print(f"{mode:<8} {fmt(a, '.0f'):>16} {fmt(b, '.0f'):>16} {ratio:>6} {spreads}   {lat['a']:>26} {lat['b']:>26}{note}")
for s in ("a", "b"):
    for r in runs[s]:
        for e in r["errors"]:
            print(f"error [{labels[s]} {r['mode']} run]: {e}")
PY
exit $status
