#!/usr/bin/env bash
# Run deep_backlog.py against a broker this script starts, on free ports, with the kill -9 +
# restart step wired up, and stop the broker again at the end.
#
#   benchmarks/deep_backlog.sh ours|rabbit-classic|rabbit-quorum [deep_backlog.py options...]
#
#   ours            this checkout's broker (python -m broker serve), fresh data dir
#   rabbit-classic  one RabbitMQ node, classic queue version 2 in lazy mode
#                   (x-queue-version=2, x-queue-mode=lazy: what 3.10 offers for deep backlogs)
#   rabbit-quorum   the same node, a quorum queue (x-queue-type=quorum, one replica)
#
# Example: benchmarks/deep_backlog.sh ours --count 1M --json > ours.json
#
# The RabbitMQ node is rabbit-deep@localhost, run as the rabbitmq user through setpriv (run
# this as root), with the rabbitmq_mqtt plugin on a free port for --mode fanout; a RabbitMQ
# already running here is not touched. Options after the target go to deep_backlog.py (after
# the ones this script sets, so they win).
#
# Environment: DEEP_DIR (default /tmp/deep-backlog-<target>; wiped at the start): data, logs,
# restart script; KEEP=1 keeps it afterwards; PYTHON (default: the checkout's .venv, else
# /work/main/.venv, else python3); DEEP_TIMEOUT (default 120): seconds for a broker to start.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
target=${1:-}
case $target in
ours | rabbit-classic | rabbit-quorum) shift ;;
*)
    sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
if [[ -n ${PYTHON:-} ]]; then
    python=$PYTHON
elif [[ -x $root/.venv/bin/python ]]; then
    python=$root/.venv/bin/python
elif [[ -x /work/main/.venv/bin/python ]]; then
    python=/work/main/.venv/bin/python
else
    python=python3
fi
dir=${DEEP_DIR:-/tmp/deep-backlog-$target}
wait_s=${DEEP_TIMEOUT:-120}
rmq_bin=/usr/lib/rabbitmq/bin
rmq_home=/var/lib/rabbitmq
node=rabbit-deep@localhost

say() { echo "deep_backlog.sh: $*" >&2; }
die() {
    say "error: $*"
    exit 1
}

# N free TCP ports on 127.0.0.1 (bound and released together, so they differ).
free_ports() {
    "$python" - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

await_port() {
    local deadline=$((SECONDS + wait_s))
    while ((SECONDS < deadline)); do
        (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.2
    done
    return 1
}

rm -rf -- "$dir"
mkdir -p "$dir"
read -r amqp_port mqtt_port http_port dist_port <<<"$(free_ports 4)"

# The restart script kill -9's the pid in $dir/broker.pid, waits until it is gone (a zombie
# counts as gone) and launches the broker again in the background; pid.sh prints the new pid.
if [[ $target == ours ]]; then
    cat >"$dir/launch.sh" <<EOF
#!/usr/bin/env bash
# Start the broker in the background; its pid goes to $dir/broker.pid.
cd "$root"
PYTHONPATH="$root" setsid "$python" -m broker serve --data-dir "$dir/data" --host 127.0.0.1 \\
    --amqp-port $amqp_port --mqtt-port $mqtt_port --mqtt-ws-port 0 --http-port $http_port \\
    --https-port 0 --management-port 0 --metrics-port 0 >>"$dir/broker.log" 2>&1 </dev/null &
echo \$! >"$dir/broker.pid"
EOF
    cat >"$dir/pid.sh" <<EOF
#!/usr/bin/env bash
cat "$dir/broker.pid"
EOF
else
    [[ $(id -u) == 0 ]] || die "run as root (RabbitMQ runs as the rabbitmq user via setpriv)"
    [[ -x $rmq_bin/rabbitmq-server ]] || die "RabbitMQ is not installed ($rmq_bin)"
    if epmd -names 2>/dev/null | grep -q "^name ${node%@*} "; then
        die "$node is already running"
    fi
    mkdir -p "$dir/mnesia" "$dir/log"
    : >"$dir/rabbitmq-env.conf"
    cat >"$dir/rabbitmq.conf" <<EOF
loopback_users.guest = true
mqtt.listeners.tcp.1 = 127.0.0.1:$mqtt_port
mqtt.listeners.ssl = none
EOF
    echo "[rabbitmq_mqtt]." >"$dir/enabled_plugins"
    echo "[]." >"$dir/advanced.config"
    chown -R rabbitmq:rabbitmq "$dir"
    if epmd -names >/dev/null 2>&1; then rm -f "$dir/epmd.ours"; else touch "$dir/epmd.ours"; fi
    cat >"$dir/launch.sh" <<EOF
#!/usr/bin/env bash
# Start the node in the background; beam.smp writes its pid to $dir/broker.pid.
rm -f "$dir/broker.pid"
ulimit -n 20000
cd "$dir"
setsid env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=$rmq_home LANG=C.UTF-8 LC_ALL=C.UTF-8 \\
    RABBITMQ_NODENAME=$node RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \\
    RABBITMQ_NODE_PORT=$amqp_port RABBITMQ_DIST_PORT=$dist_port \\
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \\
    RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \\
    RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \\
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \\
    RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" \\
    RABBITMQ_PID_FILE="$dir/broker.pid" \\
    setpriv --reuid rabbitmq --regid rabbitmq --init-groups $rmq_bin/rabbitmq-server \\
    >>"$dir/server.out" 2>&1 </dev/null &
EOF
    cat >"$dir/pid.sh" <<EOF
#!/usr/bin/env bash
# The node writes its pid file while it boots: wait for it.
for _ in \$(seq $((wait_s * 5))); do
    if [[ -s "$dir/broker.pid" ]] && pid=\$(<"$dir/broker.pid") && [[ -d /proc/\$pid ]]; then
        echo "\$pid"
        exit 0
    fi
    sleep 0.2
done
echo "no pid in $dir/broker.pid" >&2
exit 1
EOF
fi
cat >"$dir/restart.sh" <<EOF
#!/usr/bin/env bash
pid=\$("$dir/pid.sh")
kill -9 "\$pid"
while [[ -n \$(ps -o stat= -p "\$pid" | grep -v '^Z') ]]; do sleep 0.05; done
exec "$dir/launch.sh"
EOF
chmod +x "$dir"/*.sh

stop_broker() {
    local pid
    pid=$("$dir/pid.sh" 2>/dev/null) || pid=
    if [[ $target != ours && -n $pid ]]; then
        (cd "$rmq_home" && timeout 120 env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=$rmq_home \
            setpriv --reuid rabbitmq --regid rabbitmq --init-groups \
            "$rmq_bin/rabbitmqctl" -n "$node" -q stop "$dir/broker.pid" >/dev/null 2>&1) || true
    fi
    if [[ -n $pid && -d /proc/$pid ]]; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    if [[ -f $dir/epmd.ours ]] && ! epmd -names 2>/dev/null | grep -q '^name '; then
        epmd -kill >/dev/null 2>&1 || true
    fi
    if [[ ${KEEP:-0} != 1 ]]; then rm -rf -- "$dir"; fi
}
trap stop_broker EXIT

"$dir/launch.sh"
await_port "$amqp_port" || die "the broker did not open port $amqp_port (see $dir)"
if [[ $target != ours ]]; then
    # the AMQP listener opens before every plugin is up: wait for the MQTT one too
    await_port "$mqtt_port" || die "RabbitMQ did not open its MQTT port $mqtt_port"
fi
pid=$("$dir/pid.sh")
say "$target up: pid $pid, amqp $amqp_port, mqtt $mqtt_port, dir $dir"

args=(--url "amqp://guest:guest@127.0.0.1:$amqp_port/%2F" --mqtt-port "$mqtt_port" --pid "$pid"
    --restart-cmd "$dir/restart.sh" --pid-cmd "$dir/pid.sh")
case $target in
rabbit-classic) args+=(--queue-type classic --queue-arg x-queue-version=2 --queue-arg x-queue-mode=lazy) ;;
rabbit-quorum) args+=(--queue-type quorum) ;;
esac
status=0
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" "$python" "$here/deep_backlog.py" "${args[@]}" "$@" ||
    status=$?
exit $status
