#!/usr/bin/env bash
# Start, stop or inspect a 3-node set of our broker on this host, for benchmarks next to
# benchmarks/rabbitmq_cluster.sh.
#
#   benchmarks/broker_cluster.sh start|stop|status|leader|syncs
#
# Nodes 1, 2, 3: AMQP on 127.0.0.1 ports 5711, 5712, 5713; MQTT on 1911, 1912, 1913; CMQ HTTP on
# 15711, 15712, 15713; the links between them on 25711, 25712, 25713. `start` always starts from
# empty data dirs and returns once every node serves clients. `leader` prints the AMQP port of
# the leader; `syncs` the total of log syncs (fsyncs) of the three nodes so far.
#
# Environment: BROKER_CLUSTER_DIR (default /tmp/broker-cluster): one data dir and log per node;
# PYTHON (default .venv/bin/python of this checkout).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
base=${BROKER_CLUSTER_DIR:-/tmp/broker-cluster}
python=${PYTHON:-$here/.venv/bin/python}
members="1=127.0.0.1:25711,2=127.0.0.1:25712,3=127.0.0.1:25713"

node_pids() { pgrep -f "broker serve .*--data-dir $base/node$1( |$)" || true; }

status_json() {
    (cd "$here" && "$python" -m broker cluster status --json --data-dir "$base/node$1" 2>/dev/null)
}

start() {
    for n in 1 2 3; do
        [ -z "$(node_pids "$n")" ] || { echo "node $n already runs" >&2; exit 1; }
    done
    mkdir -p "$base"
    for n in 1 2 3; do
        rm -rf "$base/node$n"
        # the subshell keeps no descriptor of ours: a caller reading our output is not held
        (cd "$here" && exec setsid nohup "$python" -m broker serve --data-dir "$base/node$n" \
            --host 127.0.0.1 --node-id "$n" --cluster "$members" --cluster-secret bench \
            --amqp-port "571$n" --mqtt-port "191$n" --mqtt-ws-port 0 --http-port "1571$n" \
            --https-port 0 --management-port 0 --metrics-port "1769$n" >"$base/node$n.log" 2>&1 </dev/null) >/dev/null 2>&1 &
    done
    for n in 1 2 3; do
        for _ in $(seq 300); do
            (echo >"/dev/tcp/127.0.0.1/571$n") 2>/dev/null && break
            sleep 0.2
        done
        (echo >"/dev/tcp/127.0.0.1/571$n") 2>/dev/null || { echo "node $n did not start" >&2; exit 1; }
    done
    echo "3 nodes up; leader on AMQP port $(leader)"
}

stop() {
    for n in 1 2 3; do
        for pid in $(node_pids "$n"); do kill "$pid" 2>/dev/null || true; done
    done
    for n in 1 2 3; do
        for _ in $(seq 100); do [ -z "$(node_pids "$n")" ] && break; sleep 0.1; done
        for pid in $(node_pids "$n"); do kill -9 "$pid" 2>/dev/null || true; done
    done
}

leader() {
    for _ in $(seq 100); do
        id=$(status_json 1 | "$python" -c 'import json,sys; print(json.load(sys.stdin)["leader_id"])' || true)
        if [ -n "$id" ] && [ "$id" != 0 ]; then echo "571$id"; return; fi
        sleep 0.1
    done
    echo "no leader" >&2
    exit 1
}

syncs() {
    total=0
    for n in 1 2 3; do
        s=$(cd "$here" && "$python" -m broker status --data-dir "$base/node$n" | awk '$1 == "syncs" {print $2}')
        total=$((total + s))
    done
    echo "$total"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
leader) leader ;;
syncs) syncs ;;
status) for n in 1 2 3; do status_json "$n" || echo "node $n: not running"; echo; done ;;
*) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
