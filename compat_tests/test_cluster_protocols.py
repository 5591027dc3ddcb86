"""Every protocol through a leader failover on a 3-node cluster, with real clients.

An MQTT clean-session-0 subscriber with retained messages and QoS 2 exchanges in flight, a CMQ
long-poll receiver and an in-flight receipt handle, an HTTP push subscription, and a pika
consumer all carry on after the leader is killed with `kill -9`, and nothing that the broker
acknowledged (PUBACK/PUBCOMP, a SendMessage or PublishMessage answer, a publisher confirm) is
lost. Clients connected to a surviving node see at most a pause; a client whose node died
reconnects to another member, as clients given a list of endpoints do.
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
import time
from collections import Counter
from typing import Any

import paho.mqtt.client as mqtt
import pika
import pytest
from cmq.cmq_exception import CMQServerException
from cmq.queue import Message, QueueMeta
from cmq.subscription import SubscriptionMeta
from cmq.topic import Message as TopicMessage
from cmq.topic import TopicMeta
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from compat_tests.cluster import CONFIG, Cluster, wait_for
from compat_tests.cmq_helpers import TEST_CONFIG, CmqBroker, PushReceiver, uid
from compat_tests.conftest import BrokerProcess

pytestmark = [pytest.mark.own_broker, pytest.mark.timeout(90)]

TIMEOUT = 15.0


@pytest.fixture
def cluster(tmp_path, request):
    """A started 3-node cluster (its own config: Raft's fast clock and the CMQ test knobs)."""
    base = tmp_path / "cluster"
    cl = Cluster(base)
    # The harness wrote its config; the CMQ knobs (short push timeout and retries) join it.
    (base / "cluster.toml").write_text(CONFIG + TEST_CONFIG)
    try:
        cl.start()
    except Exception:
        _discard(cl)
        _dump_logs(cl)
        raise
    try:
        yield cl
    finally:
        _discard(cl)
        if getattr(request.node, "rep_call_failed", False):
            _dump_logs(cl)


def _discard(cl: Cluster) -> None:
    """The test is over: kill -9 every member (an orderly stop of a set with a member down
    waits for commits that cannot come)."""
    for node in cl.nodes.values():
        node.kill9()
    cl.mesh.close()


def _dump_logs(cl: Cluster) -> None:
    for n, node in cl.nodes.items():
        sys.stderr.write(f"\n---- node {n} log ({node.log_path}) ----\n")
        sys.stderr.write(node.log_tail(6000))


def roles(cl: Cluster) -> tuple[int, int, int]:
    """(leader, follower, other follower) once the members agree on a leader."""
    leader = cl.leader()
    first, second = cl.followers(leader)
    return leader, first, second


# -- MQTT ----------------------------------------------------------------------------------


class PahoClient(mqtt.Client):
    """paho-mqtt's client, able to hold back its PUBRELs.

    While `holding` is set, the PUBREL answering a PUBREC is not sent: the QoS 2 exchange stays
    in flight (the broker owns the message and waits for the release), as it does when a
    connection drops between PUBREC and PUBREL. paho keeps the message in state "wait for
    PUBCOMP" and sends the PUBREL again when it reconnects with clean session 0.
    """

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.holding = False
        self.held: set[int] = set()

    def _send_pubrel(self, mid: int) -> MQTTErrorCode:
        if self.holding:
            self.held.add(mid)
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._send_pubrel(mid)


class Endpoint:
    """A paho client that reconnects to the node it is told to (no automatic reconnects)."""

    def __init__(self, client_id: str, clean: bool) -> None:
        self.client_id = client_id
        self.client = PahoClient(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=clean,
            reconnect_on_failure=False,
        )
        self.client.username_pw_set("guest", "guest")
        self.client.max_inflight_messages_set(50)
        self.connacks: queue.Queue[tuple[int, bool]] = queue.Queue()
        self.disconnects: queue.Queue[int] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.subacks: queue.Queue[tuple[int, list[int]]] = queue.Queue()
        #: serializes publish() with the bookkeeping of what it sent
        self.lock = threading.Lock()
        #: mid -> (topic, payload) of every QoS 1/2 publish, and the mids acknowledged
        self.sent: dict[int, tuple[str, bytes]] = {}
        self.acked: set[int] = set()
        c = self.client
        c.on_connect = lambda cl, u, flags, code, p: self.connacks.put(
            (int(code.value), bool(flags.session_present))
        )
        c.on_disconnect = lambda cl, u, f, code, p: self.disconnects.put(int(code.value))
        c.on_message = lambda cl, u, m: self.messages.put(m)
        c.on_subscribe = lambda cl, u, mid, codes, p: self.subacks.put(
            (mid, [int(code.value) for code in codes])
        )
        c.on_publish = self._on_publish

    def _on_publish(self, client: Any, userdata: Any, mid: int, code: Any, props: Any) -> None:
        # No lock here: paho calls this holding its own message lock, which publish() takes
        # while holding ours. A set's add is atomic.
        self.acked.add(mid)

    def connect_to(self, node: BrokerProcess) -> bool:
        """(Re)connect to `node`, keeping paho's in-flight messages; returns session present."""
        self.client.loop_stop()
        self.client.connect(node.host, node.mqtt_port, keepalive=30)
        self.client.loop_start()
        code, present = self.connacks.get(timeout=TIMEOUT)
        assert code == 0, f"CONNACK refused by node at {node.mqtt_port}: {code}"
        return present

    def subscribe(self, *filters: tuple[str, int]) -> list[int]:
        _, mid = self.client.subscribe(list(filters))
        got, codes = self.subacks.get(timeout=TIMEOUT)
        assert got == mid
        return codes

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> int:
        with self.lock:
            info = self.client.publish(topic, payload, qos, retain)
            self.sent[info.mid] = (topic, payload)
        return info.mid

    def publish_wait(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> None:
        mid = self.publish(topic, payload, qos, retain)
        wait_for(lambda: mid in self.acked, what=f"the ack of {payload!r}")

    def acked_payloads(self) -> set[bytes]:
        with self.lock:
            return {self.sent[mid][1] for mid in list(self.acked) if mid in self.sent}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def messages_until(client: Endpoint, marker: bytes) -> list[mqtt.MQTTMessage]:
    """Every message `client` received before the one whose payload is `marker`."""
    out = []
    deadline = time.monotonic() + TIMEOUT
    while True:
        msg = client.messages.get(timeout=max(0.01, deadline - time.monotonic()))
        if msg.payload == marker:
            return out
        out.append(msg)


def test_mqtt_session_retained_and_qos2_in_flight_survive_a_leader_kill(cluster):
    leader, sub_node, pub_node = roles(cluster)
    nodes = cluster.nodes
    base = uid("failover")
    q1, q2, status, will = f"{base}/q1", f"{base}/q2", f"{base}/status", f"{base}/will"
    clients: list[Endpoint] = []

    try:
        sub = Endpoint(uid("sub"), clean=False)
        clients.append(sub)
        assert sub.connect_to(nodes[sub_node]) is False
        assert sub.subscribe((q1, 1), (q2, 2), (will, 1)) == [1, 2, 1]
        # A client on the leader that never comes back: its will goes out once the new leader
        # releases what the dead node held.
        bystander = Endpoint(uid("bystander"), clean=True)
        clients.append(bystander)
        bystander.client.will_set(will, b"bystander gone", qos=1)
        assert bystander.connect_to(nodes[leader]) is False

        # The publisher is on the leader: it dies with it and goes on elsewhere.
        pub = Endpoint(uid("pub"), clean=False)
        clients.append(pub)
        assert pub.connect_to(nodes[leader]) is False
        pub.publish_wait(f"{status}/a", b"retained a", qos=1, retain=True)
        pub.publish_wait(f"{status}/b", b"retained b", qos=2, retain=True)

        # QoS 2 exchanges left in flight: PUBREC received, PUBREL not sent.
        pub.client.holding = True
        held = [pub.publish(q2, b"held %d" % i, qos=2) for i in range(3)]
        wait_for(lambda: pub.client.held == set(held), what="the PUBRECs of the held exchanges")
        pub.client.holding = False

        # QoS 1 and 2 messages flow, paced; the leader is killed while they do.
        count, kill_after = 60, 25
        killed = threading.Event()

        def stream() -> None:
            for i in range(count):
                if killed.is_set():
                    return
                pub.publish(q1, b"one %d" % i, qos=1)
                pub.publish(q2, b"two %d" % i, qos=2)
                time.sleep(0.01)

        streamer = threading.Thread(target=stream, daemon=True)
        streamer.start()
        wait_for(lambda: len(pub.sent) >= 5 + 2 * kill_after, what="messages flowing")
        # A burst right before the kill: PUBLISHes the leader has not answered when it dies.
        burst = [(q1 if i % 2 else q2, b"burst %d" % i, 1 if i % 2 else 2) for i in range(10)]
        for topic, payload, qos in burst:
            pub.publish(topic, payload, qos=qos)
        cluster.kill9(leader)
        killed.set()
        streamer.join(TIMEOUT)
        assert pub.disconnects.get(timeout=TIMEOUT) != 0
        with pub.lock:
            sent_at_kill = len(pub.sent)
            unacked_at_kill = sent_at_kill - len(pub.acked)
        acked_before = pub.acked_payloads()
        # The publisher's node is gone: it reconnects at once to another one, which answers
        # once a new leader is elected; its session is there, and paho sends the held PUBRELs
        # and the unacknowledged PUBLISHes again (DUP), then the rest of the stream.
        assert pub.connect_to(nodes[pub_node]) is True
        new_leader = cluster.leader(among=[sub_node, pub_node])
        streamed = len(pub.sent) - 5 - len(burst)
        assert streamed % 2 == 0 and streamed <= 2 * count
        for i in range(streamed // 2, count):
            pub.publish(q1, b"one %d" % i, qos=1)
            pub.publish(q2, b"two %d" % i, qos=2)
        wait_for(
            lambda: len(pub.acked) == len(pub.sent),
            what="every publish acknowledged after the reconnect",
        )
        expected = (
            {(q1, b"one %d" % i, 1) for i in range(count)}
            | {(q2, b"two %d" % i, 2) for i in range(count)}
            | {(q2, b"held %d" % i, 2) for i in range(3)}
            | set(burst)
        )
        assert pub.acked_payloads() == {p for _, p, _ in expected} | {
            b"retained a",
            b"retained b",
        }
        assert acked_before <= pub.acked_payloads()

        # The subscriber, on a surviving follower, saw a pause and no disconnect: everything,
        # QoS 2 exactly once (a QoS 2 marker last, as paho hands QoS 2 over on PUBREL).
        sub.subscribe((f"{base}/marker", 2))
        pub.publish_wait(f"{base}/marker", b"marker 1", qos=2)
        got = messages_until(sub, b"marker 1")
        assert sub.disconnects.empty(), "the subscriber on a surviving node was disconnected"
        assert sub.client.is_connected()
        wills = [m for m in got if m.topic == will]
        got = [m for m in got if m.topic != will]
        counts = Counter((m.topic, m.payload, m.qos) for m in got)
        missing = expected - set(counts)
        assert not missing, f"acknowledged, never delivered: {sorted(missing)}"
        assert set(counts) == expected
        twice = {k: n for k, n in counts.items() if n > 1}
        assert {k: n for k, n in twice.items() if k[2] == 2} == {}, "QoS 2 delivered twice"

        # The dead node is released (cluster_node_down_ms): the bystander's will, once; the
        # clients that moved on are left alone.
        if not wills:
            wills = [sub.messages.get(timeout=TIMEOUT)]
        assert [(m.topic, m.payload) for m in wills] == [(will, b"bystander gone")]
        pub.publish_wait(f"{base}/marker", b"marker 2", qos=2)
        assert messages_until(sub, b"marker 2") == []
        assert sub.disconnects.empty() and pub.disconnects.empty()

        # The session lives on in the cluster: the subscriber reconnects to the other survivor.
        sub.close()
        pub.publish_wait(q1, b"while away 1", qos=1)
        pub.publish_wait(q2, b"while away 2", qos=2)
        assert sub.connect_to(nodes[pub_node]) is True
        pub.publish_wait(f"{base}/marker", b"marker 3", qos=2)
        later = messages_until(sub, b"marker 3")
        assert sorted((m.topic, m.payload, m.qos) for m in later) == [
            (q1, b"while away 1", 1),
            (q2, b"while away 2", 2),
        ], "the session after the failover got more (duplicates) or less"
        print(
            f"\nmqtt: leader {leader} -> {new_leader}; {unacked_at_kill} of {sent_at_kill} "
            f"publishes unacknowledged at the kill ({len(held)} with PUBREL held); subscriber "
            f"got {len(got)} messages, {sum(twice.values()) - len(twice)} QoS 1 duplicates"
        )

        # Retained messages set before the fault reach a new subscriber on the new leader.
        late = Endpoint(uid("late"), clean=True)
        clients.append(late)
        late.connect_to(nodes[new_leader])
        late.subscribe((f"{status}/#", 2))
        retained = [late.messages.get(timeout=TIMEOUT) for _ in range(2)]
        assert sorted((m.topic, m.payload, m.retain, m.qos) for m in retained) == [
            (f"{status}/a", b"retained a", True, 1),
            (f"{status}/b", b"retained b", True, 2),
        ]
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()


# -- CMQ HTTP API --------------------------------------------------------------------------


def cmq_brokers(cl: Cluster, via: int) -> dict[int, CmqBroker]:
    """A CmqBroker per node, the test key created through node `via` (replicated)."""
    brokers = {n: CmqBroker(node) for n, node in cl.nodes.items()}
    CmqBroker.attach(cl.nodes[via])
    for b in brokers.values():  # every member has applied the key before it is used
        wait_for(lambda b=b: b.client().call("ListQueue")["code"] == 0, what="the key")
    return brokers


def make_queue(account: Any, name: str, visibility: int) -> Any:
    q = account.get_queue(name)
    meta = QueueMeta()
    meta.visibilityTimeout = visibility
    q.create(meta)
    return q


def drain(q: Any) -> list[Any]:
    """Receive and delete everything visible in `q`."""
    out = []
    while True:
        try:
            batch = q.batch_receive_message(16, 0)
        except CMQServerException as exc:
            assert exc.code == 7000, exc
            return out
        out.extend(batch)
        q.batch_delete_message([m.receiptHandle for m in batch])


def test_cmq_long_poll_and_receipt_handles_survive_a_leader_kill(cluster):
    leader, follower, other = roles(cluster)
    cmq = cmq_brokers(cluster, via=follower)
    acc = {n: b.account() for n, b in cmq.items()}
    names = {"lp": uid("lp"), "q": uid("q"), "short": uid("short")}
    make_queue(acc[follower], names["lp"], 30)
    q = make_queue(acc[follower], names["q"], 30)
    short = make_queue(acc[follower], names["short"], 2)

    acked: set[str] = set()
    for n in (leader, follower, other):
        for i in range(3):
            body = f"before {n}.{i}"
            acc[n].get_queue(names["q"]).send_message(Message(body))
            acked.add(body)
    # A receipt handle in flight through the fault (hidden for 30 s).
    in_flight = q.receive_message(0)
    short.send_message(Message("runs out"))

    # A long-poll receive waiting on a follower (its own HTTP connection).
    woke: dict[str, Any] = {}

    def long_poll() -> None:
        waiter = cmq[follower].account().get_queue(names["lp"])
        try:
            woke["msg"] = waiter.receive_message(25)
        except Exception as exc:
            woke["error"] = exc
        woke["at"] = time.monotonic()

    poller = threading.Thread(target=long_poll, daemon=True)
    poller.start()
    time.sleep(0.5)  # the receive has found the queue empty and waits

    # SendMessage keeps going through a surviving node while the leader dies.
    stop = threading.Event()
    refused: list[Any] = []

    def send_through_failover() -> None:
        sender = cmq[other].account().get_queue(names["q"])
        i = 0
        while not stop.is_set():
            body = f"during {i}"
            try:
                sender.send_message(Message(body))
            except Exception as exc:  # not acknowledged: may or may not have been sent
                refused.append(exc)
            else:
                acked.add(body)
            i += 1
            time.sleep(0.01)

    sender = threading.Thread(target=send_through_failover, daemon=True)
    sender.start()
    time.sleep(0.3)
    # A receipt handle that runs out (2 s) after the leader is gone: its timer is the new one's.
    lapsed = acc[other].get_queue(names["short"]).receive_message(0)
    lapsed_at = time.monotonic()
    assert lapsed.msgBody == "runs out"
    cluster.kill9(leader)
    assert "msg" not in woke and "error" not in woke, woke

    # At once, a send through the other survivor: answered once a new leader is elected, it
    # wakes the receive waiting on the follower.
    sent_at = time.monotonic()
    acc[other].get_queue(names["lp"]).send_message(Message("wake up"))
    answered = time.monotonic()
    poller.join(TIMEOUT)
    assert "error" not in woke, woke
    assert woke["msg"].msgBody == "wake up"
    assert woke["at"] - answered < 2.0
    cluster.leader(among=[follower, other])

    # The handle received before the fault is still the latest and within its deadline: the
    # delete succeeds on another node (handles and deadlines are replicated state).
    acc[other].get_queue(names["q"]).delete_message(in_flight.receiptHandle)
    # The handle nobody deleted runs out on the new leader's timers: visible again.
    again = acc[follower].get_queue(names["short"]).receive_message(10)
    assert (again.msgBody, again.dequeueCount) == ("runs out", 2)
    assert 1.5 < time.monotonic() - lapsed_at < 8
    with pytest.raises(CMQServerException) as info:
        short.delete_message(lapsed.receiptHandle)
    assert info.value.code == 4430  # only the latest handle is valid
    short.delete_message(again.receiptHandle)

    time.sleep(0.3)
    stop.set()
    sender.join(TIMEOUT)
    assert any(b.startswith("during") for b in acked)
    bodies = Counter(m.msgBody for m in drain(acc[follower].get_queue(names["q"])))
    missing = acked - {in_flight.msgBody} - set(bodies)
    assert not missing, f"acknowledged SendMessage lost: {sorted(missing)}"
    assert in_flight.msgBody not in bodies, "deleted with its handle, yet received again"
    assert [b for b, n in bodies.items() if n > 1] == []
    print(
        f"\ncmq: wake-up send answered {answered - sent_at:.2f} s after the kill; "
        f"{len(acked)} sends acknowledged, {len(refused)} refused: {refused[:3]}"
    )


# -- HTTP push subscriptions ---------------------------------------------------------------


def test_push_subscription_keeps_delivering_after_a_leader_kill(cluster):
    leader, follower, other = roles(cluster)
    cmq = cmq_brokers(cluster, via=follower)
    acc = {n: b.account() for n, b in cmq.items()}
    topic_name = uid("t")
    acc[follower].get_topic(topic_name).create(TopicMeta())

    with PushReceiver() as receiver:
        for path in ("/hook", "/flaky"):
            meta = SubscriptionMeta()
            meta.Endpoint, meta.Protocal = receiver.url(path), "http"
            meta.NotifyContentFormat = "SIMPLIFIED"
            acc[follower].get_subscription(topic_name, path[1:]).create(meta)

        pushed: dict[str, Counter[str]] = {"/hook": Counter(), "/flaky": Counter()}

        def pushes() -> None:
            while True:
                try:
                    p = receiver.pushes.get_nowait()
                except queue.Empty:
                    return
                # Every attempt is counted (/flaky answers 500 while it fails).
                pushed[p.path][p.headers["x-cmq-message-id"]] += 1

        def publish(node: int, body: str) -> str:
            return acc[node].get_topic(topic_name).publish_message(TopicMessage(body)).msgId

        before = [publish(follower, f"before {i}") for i in range(3)]
        wait_for(
            lambda: pushes() or set(before) <= set(pushed["/hook"]), what="pushes from the leader"
        )

        # /flaky now fails: its messages wait for their retry (times stored with them).
        receiver.fail("/flaky", 10**6)
        pending = [publish(other, f"pending {i}") for i in range(2)]
        wait_for(lambda: pushes() or set(pending) <= set(pushed["/flaky"]), what="first attempts")

        # Publishes keep coming through a follower while the leader (and its pushers) die.
        during: list[str] = []
        refused: list[Exception] = []
        stop = threading.Event()

        def publish_through_failover() -> None:
            topic = cmq[follower].account().get_topic(topic_name)
            i = 0
            while not stop.is_set():
                try:
                    during.append(topic.publish_message(TopicMessage(f"during {i}")).msgId)
                except Exception as exc:  # not acknowledged
                    refused.append(exc)
                i += 1
                time.sleep(0.02)

        publisher = threading.Thread(target=publish_through_failover, daemon=True)
        publisher.start()
        time.sleep(0.3)
        cluster.kill9(leader)
        new_leader = cluster.leader(among=[follower, other])
        time.sleep(0.3)
        stop.set()
        publisher.join(TIMEOUT)
        receiver.fail("/flaky", 0)
        flaky_attempts = dict(pushed["/flaky"])
        after = [publish(n, f"after {n}.{i}") for n in (follower, other) for i in range(3)]

        # The new leader's pushers deliver everything published, the pending retries included.
        everything = set(before + pending + during + after)
        wait_for(
            lambda: pushes() or everything <= set(pushed["/hook"]),
            timeout=20,
            what="every message pushed to /hook",
        )
        wait_for(
            lambda: (
                pushes() or all(pushed["/flaky"][m] > flaky_attempts.get(m, 0) for m in pending)
            ),
            timeout=20,
            what="the pending retries pushed by the new leader",
        )
        wait_for(
            lambda: pushes() or set(after) <= set(pushed["/flaky"]),
            what="new messages pushed to /flaky",
        )

        # Pushes cut short by the kill (received by the old leader, hidden for twice the push
        # timeout) are pushed again: at least once, so the subscription queues end up empty.
        def pending_in(sub: str) -> int:
            attrs = acc[other].get_subscription(topic_name, sub).get_attributes()
            return int(attrs.inactiveMsgNum)  # the SDK maps the subscription's msgCount here

        wait_for(
            lambda: pushes() or pending_in("hook") + pending_in("flaky") == 0,
            what="the subscription queues emptied by successful pushes",
        )
        pushes()
        dups = {m: n for m, n in pushed["/hook"].items() if n > 1}
        print(
            f"\npush: leader {leader} -> {new_leader}; {len(during)} publishes through the "
            f"failover, {len(refused)} refused; /hook pushed twice: {len(dups)} messages"
        )


def test_push_subscription_created_through_a_follower_is_pushed(cluster):
    leader, follower, _ = roles(cluster)
    cmq = cmq_brokers(cluster, via=follower)
    topic_name = uid("t")
    cmq[follower].account().get_topic(topic_name).create(TopicMeta())
    with PushReceiver() as receiver:
        meta = SubscriptionMeta()
        meta.Endpoint, meta.Protocal = receiver.url("/hook"), "http"
        cmq[follower].account().get_subscription(topic_name, "hook").create(meta)
        topic = cmq[leader].account().get_topic(topic_name)
        sent = topic.publish_message(TopicMessage("no failover needed"))
        push = receiver.get(timeout=3)  # the leader pushes within ms when it knows the sub
        assert push.headers["x-cmq-message-id"] == sent.msgId


# -- AMQP ----------------------------------------------------------------------------------


def test_amqp_consumer_on_a_follower_keeps_consuming_through_a_leader_kill(cluster):
    leader, consumer_node, publisher_node = roles(cluster)
    nodes = cluster.nodes
    qname = uid("amqp")

    pub_conn = pika.BlockingConnection(nodes[publisher_node].params())
    pub_ch = pub_conn.channel()
    pub_ch.queue_declare(qname, durable=True)
    pub_ch.confirm_delivery()
    confirmed: list[bytes] = []

    def publish(body: bytes) -> float:
        """Publish, confirmed when this returns (an unconfirmed one raises); the wait."""
        start = time.monotonic()
        pub_ch.basic_publish("", qname, body, pika.BasicProperties(delivery_mode=2))
        confirmed.append(body)
        return time.monotonic() - start

    backlog = 150
    for i in range(backlog):
        publish(b"m %d" % i)

    consumed: list[tuple[bytes, bool]] = []
    errors: list[BaseException] = []
    ready = threading.Event()
    stop = threading.Event()
    still_open: list[bool] = []

    def consume() -> None:
        try:
            conn = pika.BlockingConnection(nodes[consumer_node].params())
            ch = conn.channel()
            ch.basic_qos(prefetch_count=20)

            def on_message(ch: Any, method: Any, props: Any, body: bytes) -> None:
                consumed.append((body, method.redelivered))
                time.sleep(0.005)  # a consumer with work to do: deliveries wait in its window
                ch.basic_ack(method.delivery_tag)

            ch.basic_consume(qname, on_message)
            ready.set()
            while not stop.is_set():
                conn.process_data_events(time_limit=0.05)
            still_open.append(conn.is_open and ch.is_open)
            ch.close()
            conn.close()
        except BaseException as exc:
            errors.append(exc)
            ready.set()

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    assert ready.wait(TIMEOUT) and not errors, errors

    # The leader dies while the consumer works through the backlog (20 deliveries unacked,
    # acks on their way to the leader), and publishes go on through the failover.
    wait_for(lambda: len(consumed) >= 40 or errors, what="the consumer started")
    cluster.kill9(leader)
    consumed_at_kill = len(consumed)
    paused = max(publish(b"m %d" % i) for i in range(backlog, 2 * backlog))
    new_leader = cluster.leader(among=[consumer_node, publisher_node])
    assert consumed_at_kill < backlog, "the backlog was gone before the kill"

    wait_for(
        lambda: {b for b, _ in consumed} >= set(confirmed) or errors,
        what="every confirmed message at the consumer",
    )
    stop.set()
    consumer.join(TIMEOUT)
    assert not errors, errors
    assert still_open == [True], "the consumer's connection or channel did not survive"
    counts = Counter(b for b, _ in consumed)
    assert [b for b, n in counts.items() if n > 1] == [], "delivered twice"
    assert not any(redelivered for _, redelivered in consumed)
    # Every ack went through the failover: nothing went back to the queue at the close.
    declared = pub_ch.queue_declare(qname, passive=True)
    assert declared.method.message_count == 0
    pub_conn.close()
    print(
        f"\namqp: leader {leader} -> {new_leader}, {consumed_at_kill} of a {backlog} backlog "
        f"consumed at the kill, {len(confirmed)} confirmed in all, longest confirm wait "
        f"{paused:.2f} s"
    )
