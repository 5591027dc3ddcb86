"""Exchange declaration, types, routing, e2e bindings and alternate exchanges."""

from __future__ import annotations

import pika
import pika.exceptions
import pytest

from .helpers import (
    channel,
    expect_channel_close,
    expect_connection_close,
    fresh,
    get_all,
    uid,
    wait_get,
)


def drain_until_sentinel(ch, q, timeout=10):
    """Publish a sentinel straight to q, then get everything before it (FIFO per queue)."""
    ch.basic_publish("", q, b"<sentinel>")
    got = []
    while True:
        body = wait_get(ch, q, timeout=timeout)[2]
        if body == b"<sentinel>":
            return got
        got.append(body)


@pytest.fixture
def ch(broker):
    with channel(broker) as c:
        yield c


@pytest.mark.parametrize("etype", ["direct", "fanout", "topic", "headers"])
def test_declare_all_types(ch, etype):
    x = uid("x")
    ok = ch.exchange_declare(x, etype)
    assert isinstance(ok.method, pika.spec.Exchange.DeclareOk)
    ch.exchange_declare(x, etype)  # same args: idempotent
    ch.exchange_declare(x, passive=True)
    ch.exchange_declare(x, etype, passive=True)
    ch.exchange_delete(x)


def test_passive_declare_missing_404(ch):
    x = uid("missing")
    e = expect_channel_close(lambda: ch.exchange_declare(x, passive=True), 404)
    assert e.reply_text.startswith("NOT_FOUND")
    assert x in e.reply_text


def test_redeclare_different_type_406(ch):
    x = uid("x")
    ch.exchange_declare(x, "direct")
    try:
        e = expect_channel_close(lambda: ch.exchange_declare(x, "fanout"), 406)
        # RabbitMQ: "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'x' in
        # vhost '/': received 'fanout' but current is 'direct'"
        assert e.reply_text.startswith("PRECONDITION_FAILED")
    finally:
        fresh(ch).exchange_delete(x)


def test_redeclare_different_durability_406(ch):
    x = uid("x")
    ch.exchange_declare(x, "direct", durable=False)
    try:
        expect_channel_close(lambda: ch.exchange_declare(x, "direct", durable=True), 406)
    finally:
        fresh(ch).exchange_delete(x)


def test_unknown_exchange_type_rejected(ch):
    # RabbitMQ: connection.close 503 "COMMAND_INVALID - unknown exchange type 'bogus-type'"
    e = expect_connection_close(lambda: ch.exchange_declare(uid("x"), "bogus-type"), 503)
    assert e.reply_text == "COMMAND_INVALID - unknown exchange type 'bogus-type'"


def test_delete_exchange(ch):
    x = uid("x")
    ch.exchange_declare(x, "fanout")
    ch.exchange_delete(x)
    expect_channel_close(lambda: ch.exchange_declare(x, passive=True), 404)


def test_delete_missing_exchange_is_ok(ch):
    # RabbitMQ (3.x) treats deleting a non-existent exchange as success
    ch.exchange_delete(uid("never-existed"))


def test_delete_if_unused(ch):
    x, q = uid("x"), uid("q")
    ch.exchange_declare(x, "fanout")
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, x)
    e = expect_channel_close(lambda: ch.exchange_delete(x, if_unused=True), 406)
    assert e.reply_text.startswith("PRECONDITION_FAILED")
    ch2 = fresh(ch)
    ch2.exchange_declare(x, passive=True)  # still there
    ch2.queue_unbind(q, x)
    ch2.exchange_delete(x, if_unused=True)
    expect_channel_close(lambda: ch2.exchange_declare(x, passive=True), 404)


@pytest.mark.parametrize(
    "name,etype",
    [
        ("amq.direct", "direct"),
        ("amq.fanout", "fanout"),
        ("amq.topic", "topic"),
        ("amq.headers", "headers"),
        ("amq.match", "headers"),
    ],
)
def test_predeclared_amq_exchanges(ch, name, etype):
    ch.exchange_declare(name, passive=True)
    ch.exchange_declare(name, etype, durable=True)  # equivalent redeclare is allowed
    q = uid("q")
    ch.queue_declare(q, exclusive=True)
    if etype == "headers":
        ch.queue_bind(q, name, arguments={"x-match": "all", "k": "v"})
        ch.basic_publish(name, "", b"m", pika.BasicProperties(headers={"k": "v"}))
    else:
        ch.queue_bind(q, name, routing_key="rk")
        ch.basic_publish(name, "rk", b"m")
    assert wait_get(ch, q)[2] == b"m"


def test_amq_prefix_reserved_403(ch):
    e = expect_channel_close(lambda: ch.exchange_declare("amq.foo-" + uid(), "direct"), 403)
    # RabbitMQ: "ACCESS_REFUSED - exchange name 'amq.foo' contains reserved prefix 'amq.*'"
    assert e.reply_text.startswith("ACCESS_REFUSED")


def test_amq_prefix_passive_missing_is_404(ch):
    expect_channel_close(lambda: ch.exchange_declare("amq.foo-" + uid(), passive=True), 404)


def test_cannot_delete_amq_exchange(ch):
    expect_channel_close(lambda: ch.exchange_delete("amq.direct"), 403)


def test_publish_to_missing_exchange_closes_channel_404(ch):
    x = uid("nope")
    ch.basic_publish(x, "rk", b"m")
    e = expect_channel_close(lambda: ch.queue_declare("", exclusive=True), 404)
    assert e.reply_text.startswith("NOT_FOUND")


def test_bind_to_missing_exchange_404(ch):
    q = uid("q")
    ch.queue_declare(q, exclusive=True)
    expect_channel_close(lambda: ch.queue_bind(q, uid("nope"), routing_key="a"), 404)


def test_default_exchange_routes_by_queue_name(ch):
    q = uid("q")
    ch.queue_declare(q, exclusive=True)
    ch.basic_publish("", q, b"direct-to-queue")
    assert wait_get(ch, q)[2] == b"direct-to-queue"


def test_default_exchange_cannot_be_bound(ch):
    q = uid("q")
    ch.queue_declare(q, exclusive=True)
    e = expect_channel_close(lambda: ch.queue_bind(q, "", routing_key="x"), 403)
    assert e.reply_text.startswith("ACCESS_REFUSED")


def test_direct_routing(ch):
    x, q1, q2 = uid("x"), uid("q"), uid("q")
    ch.exchange_declare(x, "direct", auto_delete=True)
    for q in (q1, q2):
        ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q1, x, routing_key="a")
    ch.queue_bind(q2, x, routing_key="b")
    ch.queue_bind(q2, x, routing_key="a")
    for rk in ("a", "b", "c"):
        ch.basic_publish(x, rk, rk.encode())
    assert drain_until_sentinel(ch, q1) == [b"a"]
    assert sorted(drain_until_sentinel(ch, q2)) == [b"a", b"b"]


def test_fanout_ignores_routing_key(ch):
    x = uid("x")
    qs = [uid("q") for _ in range(3)]
    ch.exchange_declare(x, "fanout", auto_delete=True)
    for q in qs:
        ch.queue_declare(q, exclusive=True)
        ch.queue_bind(q, x, routing_key="ignored-%s" % q)
    ch.basic_publish(x, "whatever", b"all")
    for q in qs:
        assert wait_get(ch, q)[2] == b"all"


@pytest.mark.parametrize(
    "pattern,matches,non_matches",
    [
        ("a.*.c", ["a.b.c", "a.x.c"], ["a.c", "a.b.b.c", "a.b.c.d", "b.b.c"]),
        ("a.#", ["a", "a.b", "a.b.c.d"], ["b.a", "ab"]),
        ("#.c", ["c", "a.c", "a.b.c"], ["a.c.d", "ac"]),
        ("#", ["", "a", "a.b.c"], []),
        ("*", ["a", "xyz"], ["", "a.b"]),
        ("a.#.c", ["a.c", "a.b.c", "a.b.b.c"], ["a.b", "a.c.d"]),
        ("*.*", ["a.b"], ["a", "a.b.c"]),
        ("a.b", ["a.b"], ["a.b.c", "a"]),
        ("#.#", ["", "a", "a.b"], []),
        ("*.#", ["a", "a.b", "a.b.c"], [""]),
    ],
)
def test_topic_wildcards(ch, pattern, matches, non_matches):
    x, q = uid("x"), uid("q")
    ch.exchange_declare(x, "topic", auto_delete=True)
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, x, routing_key=pattern)
    for rk in matches + non_matches:
        ch.basic_publish(x, rk, rk.encode(), pika.BasicProperties(delivery_mode=1))
    ch.basic_publish("", q, b"<sentinel>")  # FIFO per queue: everything routed before this
    got = []
    for _ in range(len(matches) + 1):
        got.append(wait_get(ch, q)[2])
    assert got[-1] == b"<sentinel>"
    assert sorted(got[:-1]) == sorted(m.encode() for m in matches)
    assert get_all(ch, q) == []


def _headers_setup(ch, bind_args):
    x, q = uid("x"), uid("q")
    ch.exchange_declare(x, "headers", auto_delete=True)
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, x, arguments=bind_args)
    return x, q


def _route_headers(ch, x, q, cases):
    for i, hdrs in enumerate(cases):
        ch.basic_publish(x, "", str(i).encode(), pika.BasicProperties(headers=hdrs))
    ch.basic_publish("", q, b"<sentinel>")
    got = []
    while True:
        body = wait_get(ch, q)[2]
        if body == b"<sentinel>":
            return sorted(int(b) for b in got)
        got.append(body)


def test_headers_match_all(ch):
    x, q = _headers_setup(ch, {"x-match": "all", "format": "pdf", "type": "report"})
    got = _route_headers(
        ch,
        x,
        q,
        [
            {"format": "pdf", "type": "report"},  # 0 match
            {"format": "pdf", "type": "report", "extra": 1},  # 1 match
            {"format": "pdf"},  # 2 no
            {"format": "zip", "type": "report"},  # 3 no
            None,  # 4 no
        ],
    )
    assert got == [0, 1]


def test_headers_match_any(ch):
    x, q = _headers_setup(ch, {"x-match": "any", "format": "pdf", "type": "report"})
    got = _route_headers(
        ch,
        x,
        q,
        [
            {"format": "pdf", "type": "log"},  # 0 match
            {"type": "report"},  # 1 match
            {"format": "zip", "type": "log"},  # 2 no
            {},  # 3 no
        ],
    )
    assert got == [0, 1]


def test_headers_default_is_all_and_value_types(ch):
    # no x-match -> "all"; values compare by type and value
    x, q = _headers_setup(ch, {"n": 1, "s": "one"})
    got = _route_headers(
        ch,
        x,
        q,
        [
            {"n": 1, "s": "one"},  # 0 match
            {"n": 2, "s": "one"},  # 1 no
            {"s": "one"},  # 2 no
        ],
    )
    assert got == [0]


def test_headers_empty_binding_matches_everything(ch):
    x, q = _headers_setup(ch, {"x-match": "all"})
    got = _route_headers(ch, x, q, [{"a": 1}, None])
    assert got == [0, 1]


def test_exchange_to_exchange_bind_unbind(ch):
    src, dst, q = uid("src"), uid("dst"), uid("q")
    ch.exchange_declare(src, "topic", auto_delete=False)
    ch.exchange_declare(dst, "direct", auto_delete=False)
    try:
        ch.queue_declare(q, exclusive=True)
        ch.queue_bind(q, dst, routing_key="k.1")
        ch.exchange_bind(destination=dst, source=src, routing_key="k.*")
        ch.basic_publish(src, "k.1", b"via-e2e")
        assert wait_get(ch, q)[2] == b"via-e2e"
        ch.basic_publish(src, "k.2", b"no-queue-binding")  # routed to dst, dropped there
        ch.basic_publish(src, "x.1", b"no-e2e-match")
        ch.exchange_unbind(destination=dst, source=src, routing_key="k.*")
        ch.basic_publish(src, "k.1", b"after-unbind")
        ch.basic_publish("", q, b"<sentinel>")
        assert wait_get(ch, q)[2] == b"<sentinel>"
    finally:
        ch.exchange_delete(src)
        ch.exchange_delete(dst)


def test_exchange_to_exchange_cycle_delivers_once(ch):
    a, b, q = uid("a"), uid("b"), uid("q")
    ch.exchange_declare(a, "fanout", auto_delete=False)
    ch.exchange_declare(b, "fanout", auto_delete=False)
    try:
        ch.queue_declare(q, exclusive=True)
        ch.exchange_bind(b, a)
        ch.exchange_bind(a, b)
        ch.queue_bind(q, a)
        ch.queue_bind(q, b)
        ch.basic_publish(a, "", b"once")
        ch.basic_publish("", q, b"<sentinel>")
        assert wait_get(ch, q)[2] == b"once"
        assert wait_get(ch, q)[2] == b"<sentinel>"
    finally:
        ch.exchange_delete(a)
        ch.exchange_delete(b)


def test_queue_bound_twice_gets_one_copy(ch):
    x, q = uid("x"), uid("q")
    ch.exchange_declare(x, "topic", auto_delete=True)
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, x, routing_key="a.*")
    ch.queue_bind(q, x, routing_key="*.b")
    ch.basic_publish(x, "a.b", b"one")
    ch.basic_publish("", q, b"<sentinel>")
    assert wait_get(ch, q)[2] == b"one"
    assert wait_get(ch, q)[2] == b"<sentinel>"


def test_alternate_exchange(ch):
    x, ae, q_main, q_alt = uid("x"), uid("ae"), uid("q"), uid("q")
    ch.exchange_declare(ae, "fanout", auto_delete=False)
    ch.exchange_declare(x, "direct", auto_delete=False, arguments={"alternate-exchange": ae})
    try:
        ch.queue_declare(q_main, exclusive=True)
        ch.queue_declare(q_alt, exclusive=True)
        ch.queue_bind(q_main, x, routing_key="known")
        ch.queue_bind(q_alt, ae)
        ch.confirm_delivery()
        ch.basic_publish(x, "known", b"routed")
        # unroutable on x -> goes to the AE; mandatory is satisfied (no basic.return)
        ch.basic_publish(x, "unknown", b"to-ae", mandatory=True)
        assert wait_get(ch, q_main)[2] == b"routed"
        assert wait_get(ch, q_alt)[2] == b"to-ae"
        assert get_all(ch, q_main) == []
    finally:
        ch.exchange_delete(x)
        ch.exchange_delete(ae)


def test_auto_delete_exchange_deleted_after_last_unbind(ch):
    x, q = uid("x"), uid("q")
    ch.exchange_declare(x, "fanout", auto_delete=True)
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, x)
    ch.exchange_declare(x, passive=True)
    ch.queue_unbind(q, x)
    expect_channel_close(lambda: ch.exchange_declare(x, passive=True), 404)


def test_unbind_missing_binding_ok(ch):
    # RabbitMQ treats unbinding a non-existent binding (existing queue and exchange) as ok
    x, q = uid("x"), uid("q")
    ch.exchange_declare(x, "direct", auto_delete=False)
    try:
        ch.queue_declare(q, exclusive=True)
        ch.queue_unbind(q, x, routing_key="never-bound")
    finally:
        ch.exchange_delete(x)


# -- sender-selected distribution (CC and BCC headers) -------------------------------------


def test_cc_and_bcc_headers_add_routing_keys_and_bcc_is_not_delivered(ch):
    """RabbitMQ's sender-selected distribution: one copy per queue reached by the routing key
    or a CC/BCC key; the BCC header is removed before delivery."""
    x = uid("x")
    ch.exchange_declare(x, "direct")
    queues = {}
    for key in ("to", "cc", "bcc", "none"):
        queues[key] = ch.queue_declare(uid(key), exclusive=True).method.queue
        ch.queue_bind(queues[key], x, key)
    ch.queue_bind(queues["to"], x, "cc")  # reached twice: still one copy
    headers = {"CC": ["cc"], "BCC": ["bcc"], "other": 1}
    ch.basic_publish(x, "to", b"m", pika.BasicProperties(headers=headers))
    for key in ("to", "cc", "bcc"):
        assert drain_until_sentinel(ch, queues[key]) == [b"m"], key
    assert drain_until_sentinel(ch, queues["none"]) == []
    ch.basic_publish(x, "to", b"again", pika.BasicProperties(headers=headers))
    _, props, _ = wait_get(ch, queues["bcc"])
    assert props.headers == {"CC": ["cc"], "other": 1}


def test_cc_on_the_default_exchange_names_more_queues(ch):
    a, b = (ch.queue_declare(uid(n), exclusive=True).method.queue for n in ("a", "b"))
    ch.basic_publish("", a, b"m", pika.BasicProperties(headers={"CC": [b], "BCC": ["missing"]}))
    assert wait_get(ch, a)[2] == b"m"
    assert wait_get(ch, b)[2] == b"m"
