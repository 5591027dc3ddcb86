#!/usr/bin/env bash
# Start, stop or inspect a 3-node RabbitMQ cluster on this host, as a reference for benchmarks
# (quorum queues replicated over 3 nodes, like our replicated mode).
#
#   benchmarks/rabbitmq_cluster.sh start|stop|status
#
# Nodes rabbit-b1@localhost, rabbit-b2@localhost, rabbit-b3@localhost; AMQP on 127.0.0.1 ports
# 5701, 5702, 5703; Erlang distribution on 127.0.0.1 ports 25701, 25702, 25703. No plugin is
# enabled (no management, Prometheus or MQTT listener), unless RABBIT_CLUSTER_MQTT=1, which
# enables rabbitmq_mqtt on 127.0.0.1 ports 1901, 1902, 1903, with the queues of QoS 1
# subscriptions (persistent sessions) of type RABBIT_CLUSTER_MQTT_QUEUE_TYPE (default quorum;
# classic: on one node only). b2 and b3 join b1 with `rabbitmqctl join_cluster`.
#
# `start` always builds a fresh cluster: the nodes' previous data under the directory is wiped.
# `stop` stops the three nodes and waits until none of their processes is left.
# A RabbitMQ already running here (rabbit@localhost: 5672, 25672, ...) is not touched; the
# nodes share its Erlang cookie (HOME=/var/lib/rabbitmq) and its epmd.
#
# Environment: RABBIT_CLUSTER_DIR (default /tmp/rabbit-cluster): one directory per node with
# its config, data (mnesia), logs and server output; RABBIT_CLUSTER_MQTT (default 0);
# RABBIT_CLUSTER_TIMEOUT (default 90): seconds allowed for each wait.
#
# Run as root (the nodes run as the rabbitmq user, through setpriv, with ulimit -n 20000).
set -euo pipefail

base=${RABBIT_CLUSTER_DIR:-/tmp/rabbit-cluster}
mqtt=${RABBIT_CLUSTER_MQTT:-0}
mqtt_queue_type=${RABBIT_CLUSTER_MQTT_QUEUE_TYPE:-quorum}
wait_s=${RABBIT_CLUSTER_TIMEOUT:-90}
host=localhost
names=(rabbit-b1 rabbit-b2 rabbit-b3)
amqp_ports=(5701 5702 5703)
dist_ports=(25701 25702 25703)
mqtt_ports=(1901 1902 1903)
rmq_bin=/usr/lib/rabbitmq/bin
rmq_home=/var/lib/rabbitmq # HOME of the rabbitmq user: its .erlang.cookie is the cluster's
rmq_user=rabbitmq
nofile=20000
started=0
marker=.rabbitmq_cluster_node # in each node directory: `start` only wipes directories with it
clean_env=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$rmq_home" LANG=C.UTF-8 LC_ALL=C.UTF-8)
as_rabbit=(setpriv --reuid "$rmq_user" --regid "$rmq_user" --init-groups)

say() { echo "rabbitmq_cluster: $*" >&2; }
die() {
    say "error: $*"
    exit 1
}

usage() {
    sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

# rabbitmqctl against one node (index 0-2), bounded in time; extra arguments follow.
ctl() {
    local i=$1
    shift
    (cd "$rmq_home" && timeout 60 "${clean_env[@]}" "${as_rabbit[@]}" \
        "$rmq_bin/rabbitmqctl" -n "${names[$i]}@$host" "$@")
}

node_dir() { echo "$base/${names[$1]}"; }

# Pid in file $1 if that process is alive (not a zombie) and its command line contains $2.
live_pid() {
    local pid
    [[ -f $1 ]] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ $(ps -o stat= -p "$pid" 2>/dev/null) != Z* ]] || return 1
    { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -q -- "$2" || return 1
    echo "$pid"
}

# The node's launcher (the rabbitmq-server shell script, leader of a session of its own).
launcher_pid() { live_pid "$(node_dir "$1")/launcher.pid" rabbitmq-server; }

# Every live process of node i: its launcher, its beam.smp (from the pid file the node
# writes) and all their descendants (erl_child_setup and the port programs it runs put
# themselves in sessions of their own, so the process group is not enough).
node_pids() {
    local d roots
    d=$(node_dir "$1")
    roots="$(launcher_pid "$1" || true) $(live_pid "$d/beam.pid" beam.smp || true)"
    ps -eo pid=,ppid=,stat= | awk -v roots="$roots" '
        { parent[$1] = $2; if ($3 !~ /^Z/) live[$1] = 1 }
        END {
            n = split(roots, r, " ")
            for (i = 1; i <= n; i++) if (r[i] in live) mine[r[i]] = 1
            do {
                grew = 0
                for (p in parent) if (!(p in mine) && (parent[p] in mine) && (p in live)) {
                    mine[p] = 1; grew = 1
                }
            } while (grew)
            for (p in mine) print p
        }'
}

# Those of the given pids still alive (zombies count as gone).
alive() {
    local p
    for p in "$@"; do
        if ps -o stat= -p "$p" 2>/dev/null | grep -qv '^Z'; then echo "$p"; fi
    done
    return 0
}

registered_in_epmd() { epmd -names 2>/dev/null | grep -q "^name $1 at port "; }

port_in_use() { [[ -n $(ss -Hltn "sport = :$1" 2>/dev/null) ]]; }

node_ports() {
    local i=$1
    echo "${amqp_ports[$i]} ${dist_ports[$i]}"
    if [[ $mqtt == 1 ]]; then echo "${mqtt_ports[$i]}"; fi
}

write_node_files() {
    local i=$1 d
    d=$(node_dir "$i")
    mkdir -p "$d/mnesia" "$d/log"
    touch "$d/$marker"
    : >"$d/rabbitmq-env.conf" # instead of /etc/rabbitmq/rabbitmq-env.conf
    {
        echo "# written by benchmarks/rabbitmq_cluster.sh"
        echo "loopback_users.guest = true"
        if [[ $mqtt == 1 ]]; then
            echo "mqtt.listeners.tcp.1 = 127.0.0.1:${mqtt_ports[$i]}"
            echo "mqtt.listeners.ssl = none"
        fi
    } >"$d/rabbitmq.conf"
    if [[ $mqtt == 1 ]]; then
        echo "[rabbitmq_mqtt]." >"$d/enabled_plugins"
        # the queues of QoS 1 subscriptions of persistent sessions are replicated too
        echo "[{rabbitmq_mqtt, [{durable_queue_type, $mqtt_queue_type}]}]." >"$d/advanced.config"
    else
        echo "[]." >"$d/enabled_plugins" # not /etc/rabbitmq/enabled_plugins (MQTT on 1883)
    fi
    chown -R "$rmq_user:$rmq_user" "$d"
}

launch_node() {
    local i=$1 d
    d=$(node_dir "$i")
    # setsid: the node gets a session of its own, away from the caller's terminal; $! is the
    # pid of rabbitmq-server (setsid, env and setpriv exec), the root of the node's processes.
    (
        cd "$d"
        exec setsid "${clean_env[@]}" \
            RABBITMQ_NODENAME="${names[$i]}@$host" \
            RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
            RABBITMQ_NODE_PORT="${amqp_ports[$i]}" \
            RABBITMQ_DIST_PORT="${dist_ports[$i]}" \
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
            RABBITMQ_CONF_ENV_FILE="$d/rabbitmq-env.conf" \
            RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf" \
            RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config" \
            RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" \
            RABBITMQ_MNESIA_BASE="$d/mnesia" \
            RABBITMQ_LOG_BASE="$d/log" \
            RABBITMQ_PID_FILE="$d/beam.pid" \
            "${as_rabbit[@]}" "$rmq_bin/rabbitmq-server"
    ) >"$d/server.out" 2>&1 </dev/null &
    echo $! >"$d/launcher.pid"
}

# Wait (bounded) until the node's rabbit application is running.
await_node() {
    local i=$1 deadline=$((SECONDS + wait_s))
    while ((SECONDS < deadline)); do
        if ! launcher_pid "$i" >/dev/null; then
            say "${names[$i]} exited; last lines of $(node_dir "$i")/server.out:"
            tail -n 20 "$(node_dir "$i")/server.out" >&2 || true
            return 1
        fi
        if ctl "$i" -q await_startup --timeout 5 >/dev/null 2>&1; then
            return 0
        fi
        sleep 1
    done
    say "${names[$i]} not running after ${wait_s}s (log: $(node_dir "$i")/log)"
    return 1
}

# Number of running cluster members as seen from node i.
running_members() {
    ctl "$1" -q cluster_status --formatter json 2>/dev/null |
        grep -o '"running_nodes":\[[^]]*\]' | grep -o '@' | wc -l
}

cmd_start() {
    [[ $(id -u) == 0 ]] || die "run as root (the nodes run as $rmq_user through setpriv)"
    local i p
    for i in "${!names[@]}"; do
        if [[ -n $(node_pids "$i") ]] || registered_in_epmd "${names[$i]}"; then
            die "${names[$i]}@$host is already running; '$0 stop' first"
        fi
        for p in $(node_ports "$i"); do
            port_in_use "$p" && die "port $p is in use by another program"
        done
    done
    if [[ -e $base && ! -d $base ]]; then die "$base exists and is not a directory"; fi
    mkdir -p "$base"
    for i in "${!names[@]}"; do
        local d
        d=$(node_dir "$i")
        if [[ -e $d ]]; then
            [[ -f $d/$marker ]] || die "$d exists but was not made by this script; not wiping it"
            rm -rf -- "$d"
        fi
    done
    # The nodes need to reach their directories as the rabbitmq user.
    "${as_rabbit[@]}" test -x "$base" || die "$rmq_user cannot enter $base"
    if epmd -names >/dev/null 2>&1; then rm -f "$base/epmd.ours"; else touch "$base/epmd.ours"; fi

    ulimit -n "$nofile" # inherited by the nodes (setpriv keeps it, su would not)
    # Whatever makes `start` fail from here on, leave no node running.
    trap 'if [[ $started != 1 ]]; then say "start failed: stopping the nodes"; cmd_stop || true; fi' EXIT
    for i in "${!names[@]}"; do
        write_node_files "$i"
        launch_node "$i"
        say "started ${names[$i]}@$host (amqp ${amqp_ports[$i]}, dist ${dist_ports[$i]}$(
            [[ $mqtt == 1 ]] && echo ", mqtt ${mqtt_ports[$i]}"
        )), pid $(<"$(node_dir "$i")/launcher.pid")"
    done
    for i in "${!names[@]}"; do
        await_node "$i"
        say "${names[$i]}@$host is up"
    done
    local out=$base/join.log # the CLI logs warnings while a node joins; kept here
    : >"$out"
    for i in 1 2; do
        if ! {
            ctl "$i" -q stop_app && ctl "$i" -q reset &&
                ctl "$i" -q join_cluster "${names[0]}@$host" && ctl "$i" -q start_app
        } >>"$out" 2>&1; then
            tail -n 20 "$out" >&2
            die "${names[$i]} could not join ${names[0]} (see $out)"
        fi
        await_node "$i"
        say "${names[$i]}@$host joined ${names[0]}@$host"
    done
    local deadline=$((SECONDS + wait_s)) n=0
    while ((SECONDS < deadline)); do
        n=$(running_members 0) || n=0
        ((n == ${#names[@]})) && break
        sleep 1
    done
    ((n == ${#names[@]})) || die "cluster has $n running members, expected ${#names[@]}"
    started=1
    say "cluster of ${#names[@]} running; AMQP URLs:"
    for i in "${!names[@]}"; do echo "amqp://guest:guest@127.0.0.1:${amqp_ports[$i]}/%2F"; done
}

cmd_stop() {
    local i d deadline left=0 pids
    for ((i = ${#names[@]} - 1; i >= 0; i--)); do
        d=$(node_dir "$i")
        mapfile -t pids < <(node_pids "$i")
        if ((${#pids[@]} == 0)) && ! registered_in_epmd "${names[$i]}"; then
            continue
        fi
        say "stopping ${names[$i]}@$host"
        # With the pid file, `stop` returns once the node's OS process has exited.
        if [[ -f $d/beam.pid ]]; then
            ctl "$i" -q stop "$d/beam.pid" >/dev/null 2>&1 || true
        else
            ctl "$i" -q stop >/dev/null 2>&1 || true
        fi
        deadline=$((SECONDS + wait_s))
        while ((${#pids[@]} > 0 && SECONDS < deadline)); do
            sleep 0.5
            mapfile -t pids < <(alive "${pids[@]}")
        done
        if ((${#pids[@]} > 0)); then
            say "${names[$i]} did not stop in ${wait_s}s: killing its processes ${pids[*]}"
            kill -TERM "${pids[@]}" 2>/dev/null || true
            sleep 3
            mapfile -t pids < <(alive "${pids[@]}")
            if ((${#pids[@]} > 0)); then kill -KILL "${pids[@]}" 2>/dev/null || true; fi
            sleep 1
            mapfile -t pids < <(alive "${pids[@]}")
        fi
        if ((${#pids[@]} > 0)); then
            say "${names[$i]}: processes left: ${pids[*]}"
            left=1
        fi
    done
    # epmd is shared with any other Erlang node here; end it only if this script started it
    # and no node is registered any more.
    if [[ -f $base/epmd.ours ]] && ! epmd -names 2>/dev/null | grep -q '^name '; then
        epmd -kill >/dev/null 2>&1 || true
        rm -f "$base/epmd.ours"
    fi
    ((left == 0)) || return 1
    say "stopped"
}

cmd_status() {
    local i pid any=0 state
    for i in "${!names[@]}"; do
        pid=$(launcher_pid "$i") || pid=
        if [[ -n $pid ]] && ctl "$i" -q ping >/dev/null 2>&1; then
            state="running (pid $pid)"
            any=1
        elif [[ -n $(node_pids "$i") ]]; then
            state="processes $(node_pids "$i" | tr '\n' ' ')alive, node not answering"
            any=1
        else
            state="stopped"
        fi
        echo "${names[$i]}@$host: $state; amqp ${amqp_ports[$i]} dist ${dist_ports[$i]}$(
            grep -qs rabbitmq_mqtt "$(node_dir "$i")/enabled_plugins" &&
                echo " mqtt ${mqtt_ports[$i]}"
        ); dir $(node_dir "$i")"
    done
    ((any)) || return 3
    for i in "${!names[@]}"; do
        if ctl "$i" -q ping >/dev/null 2>&1; then
            echo "running cluster members seen from ${names[$i]}: $(running_members "$i")"
            ctl "$i" -q list_queues name type messages 2>/dev/null || true
            break
        fi
    done
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*) usage ;;
esac
