"""The sans-IO MQTT 3.1.1 server connection: packets in, core commands out, packets back.

`receive_data()` decodes packets and turns them into core commands; replies that promise
something (CONNACK, PUBACK, PUBREC, PUBCOMP, SUBACK, ...) are written from the commands'
completion callbacks, which the commit path calls only once the work is durable and in
submission order. The client id, the session's end and the will are core state (OpenSession,
CloseSession), so a takeover or a crash is handled the same way on whichever node leads.
Deliveries arrive from the node as `Deliver` effects of the session queue's consumer. Nothing
here touches a socket or the event loop.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from broker.core import commands as c
from broker.core.errors import AccessRefused, BrokerError, ConnectionLimit, PreconditionFailed
from broker.core.model import Deliver, PublishResult, User
from broker.gateway import Gateway
from broker.protocols.mqtt import codec
from broker.protocols.mqtt.codec import (
    PUBACK,
    PUBCOMP,
    PUBREC,
    PUBREL,
    Ack,
    Connect,
    Disconnect,
    PingReq,
    ProtocolError,
    Publish,
    Subscribe,
    Unsubscribe,
)
from broker.protocols.mqtt.session import Session, shared_queue
from broker.protocols.mqtt.topics import (
    SHARE_PREFIX,
    filter_matches,
    shared_filter,
    subscribable,
    sys_filter,
    to_pattern,
    to_routing_key,
    to_topic,
)

log = logging.getLogger(__name__)

EXCHANGE = "amq.topic"
QOS_HEADER = "x-mqtt-publish-qos"
RETAIN_HEADER = "x-mqtt-retain"
#: marks the copies of retained messages made for a new subscription (sent with RETAIN=1)
RETAINED_COPY_HEADER = "x-mqtt-retained-copy"
CONSUMER_TAG = "mqtt"
#: longer client ids would make queue names other protocols cannot express
MAX_CLIENT_ID_BYTES = 200
#: the longest queue name AMQP can express (a short string): longer shared ones are refused
MAX_QUEUE_NAME_BYTES = 255
OVERFLOW_POLICIES = {"drop-oldest": "drop-head", "refuse": "reject-publish"}
_TOPIC_CACHE_SIZE = 4096
#: output (bytes) a connection may hold, not yet handed to its transport, before QoS 0
#: deliveries stop being settled at once: beyond it the consumer's window bounds what waits
MAX_PENDING_OUTPUT = 1024 * 1024
#: bytes a client may send after CONNECT and before its CONNACK (MQTT lets it not wait)
MAX_EARLY_INPUT = 1024 * 1024
#: publishes of a client that may wait for an answer (a withheld PUBACK; for QoS 0, word
#: of whether they fed a congested queue) before the client's input is not read any more
MAX_UNANSWERED = 256
#: user tags that may subscribe to `$SYS` topics
SYS_TAGS = frozenset(("monitoring", "administrator"))


def _properties(qos: int, retain: bool) -> dict[str, Any]:
    return {
        "delivery_mode": 2 if qos else 1,
        "headers": {QOS_HEADER: qos, RETAIN_HEADER: retain},
    }


#: message properties of each (QoS, retain) pair, shared by every message (never mutated)
_PROPERTIES = {
    (qos, retain): _properties(qos, retain) for qos in range(3) for retain in (False, True)
}


@dataclass
class Settings:
    """MQTT limits and access rules, from the node's configuration."""

    max_packet_size: int = 16 * 1024 * 1024
    #: unacknowledged QoS 1/2 deliveries per client (the session consumer's prefetch)
    max_inflight: int = 100
    #: messages a session queue holds before its overflow policy applies (0: unlimited)
    max_queued: int = 100_000
    overflow: str = "drop-oldest"
    allow_anonymous: bool = False
    anonymous_user: str = "guest"
    default_vhost: str = "/"


class State(Enum):
    AWAIT_CONNECT = 0
    #: CONNECT accepted, the session being opened: later packets wait until it is
    OPENING = 1
    OPEN = 2
    CLOSED = 3


class _Refused(Exception):
    def __init__(self, code: int, reason: str, logged: bool = False) -> None:
        super().__init__(reason)
        self.code = code
        #: already logged (refused logins are, rate-limited per address, by the gateway)
        self.logged = logged


class MQTTConnection:
    # Slots: a node holds one per device, and past 30 attributes an instance dict stops
    # sharing its keys with the class's other instances (about 1.3 KB more per connection).
    __slots__ = (
        "id",
        "owner",
        "refusal",
        "gateway",
        "traffic",
        "settings",
        "loopback",
        "cert_user",
        "source",
        "output_delay",
        "on_output",
        "state",
        "reader",
        "keepalive",
        "user",
        "vhost",
        "client_id",
        "session",
        "has_published",
        "should_close",
        "outbound",
        "_out",
        "_out_size",
        "_settles",
        "_replies",
        "_withheld",
        "_probing",
        "_unanswered_qos0",
        "_writable",
        "_consuming",
        "_detached",
        "_may_publish",
        "_may_subscribe",
        "_topics",
        "_joined",
        "__weakref__",
    )

    def __init__(
        self,
        connection_id: c.ConnectionId,
        gateway: Gateway,
        settings: Settings,
        peer_is_loopback: bool,
        on_output: Callable[[], None] | None = None,
        refusal: str | None = None,
        source: str = "",
    ) -> None:
        self.id = connection_id
        self.owner: c.Owner = (*connection_id, 0)
        #: why the node refuses this connection (its connection limits): CONNACK 3
        self.refusal = refusal
        self.gateway = gateway
        self.traffic = gateway.traffic["mqtt"]
        self.settings = settings
        self.loopback = peer_is_loopback
        #: the common name of the client's verified TLS certificate: the user of a client
        #: that sends no user name
        self.cert_user: str | None = None
        #: the client's address, for the log and the per-address slowing of refused logins
        self.source = source
        #: seconds the transport holds what follows a refused login (broker.login_guard)
        self.output_delay = 0.0
        self.on_output = on_output
        self.state = State.AWAIT_CONNECT
        self.reader = codec.PacketReader(settings.max_packet_size)
        self.keepalive = 0
        self.user: User | None = None
        self.vhost = ""
        self.client_id = ""
        self.session: Session | None = None
        self.has_published = False
        #: set once the transport should close after flushing
        self.should_close = False
        #: packet id -> ((vhost, queue, seq), QoS) of deliveries awaiting PUBACK or PUBREC
        self.outbound: dict[int, tuple[tuple[str, str, int], int]] = {}
        self._out: list[bytes] = []
        #: bytes in `_out`
        self._out_size = 0
        self._settles: list[tuple[str, str, int]] = []
        #: replies waiting for their commands to be durable, in submission order (made on
        #: first use: a deque is 0.7 KB, and most devices of a fleet sit idle)
        self._replies: deque[bytes] | None = None
        #: replies withheld while a queue this client published to is congested
        self._withheld: list[bytes] | None = None
        #: a QoS 0 publish waits for its reply, to learn whether it fed a congested queue
        self._probing = False
        #: QoS 0 publishes sent since that one (MAX_UNANSWERED while a queue is congested)
        self._unanswered_qos0 = 0
        #: False while the transport is paused (the client does not read fast enough)
        self._writable = True
        self._consuming = False
        self._detached = False
        self._may_publish = False
        self._may_subscribe: bool | None = None
        #: routing key -> (PUBLISH topic field, highest granted QoS or -1 when no filter
        #: matches)
        self._topics: dict[str, tuple[bytes, int]] = {}
        #: shared queues this connection consumes -> (full filter, filter)
        self._joined: dict[str, tuple[str, str]] = {}

    # -- output --------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.should_close:
            return
        if not self._out and self.on_output is not None:
            self.on_output()
        self._out.append(data)
        self._out_size += len(data)
        self.traffic.packets_sent += 1

    def _write_publish(self, header: bytes, payload: bytes) -> None:
        """A PUBLISH as its header and its payload, joined with the rest of the turn's output."""
        if self.should_close:
            return
        if not self._out and self.on_output is not None:
            self.on_output()
        self._out += (header, payload)
        self._out_size += len(header) + len(payload)
        traffic = self.traffic
        traffic.packets_sent += 1
        traffic.delivered += 1

    def data_to_send(self) -> bytes:
        self._flush_settles()
        out = b"".join(self._out)
        self._out.clear()
        self._out_size = 0
        return out

    def _settle_later(self, item: tuple[str, str, int]) -> None:
        """Acks of one turn go to the core as one Settle (QoS 0 deliveries, PUBACKs)."""
        if not self._settles and self.on_output is not None:
            self.on_output()
        self._settles.append(item)

    def _flush_settles(self) -> None:
        if self._settles:
            items, self._settles = self._settles, []
            self.gateway.submit(c.Settle(self.owner, items, "ack"))

    def _submit(self, commands: list[c.Command], reply: bytes | None = None) -> None:
        """Submit `commands`; write `reply` once all are durable, or close on an error."""
        submit = self.gateway.submit
        if reply is None:
            for command in commands:
                submit(command, self._check_done)
            return
        # Replies are released in submission order, so they wait in one queue rather than
        # each in a callback of its own.
        self._reply_later(reply)
        if not commands:
            self.gateway.after(self._reply_now)
            return
        for command in commands[:-1]:
            submit(command, self._check_done)
        submit(commands[-1], self._reply_done)

    def _reply_later(self, reply: bytes) -> None:
        """`reply` goes out once the command submitted next is durable (`_reply_done`)."""
        if self._replies is None:
            self._replies = deque()
        self._replies.append(reply)

    def _reply_done(self, result: Any, error: BrokerError | None) -> None:
        # The earlier commands of the reply are durable too (submission order).
        assert self._replies is not None
        reply = self._replies.popleft()
        if error is not None:
            self._check_done(result, error)
            return
        congested = _congested(result)
        if congested:
            self._withhold_replies(congested)
        self._send_reply(reply)

    def _reply_now(self) -> None:
        assert self._replies is not None
        self._send_reply(self._replies.popleft())

    def _send_reply(self, reply: bytes) -> None:
        if self._withheld is None:
            self.write(reply)
        else:
            self._withheld.append(reply)

    def _withhold_replies(self, queues: list[tuple[str, str]]) -> None:
        """A message went to a congested queue: PUBACKs (and the replies after them) wait
        until it drains, so a client with a bounded in-flight window stops publishing
        instead of the queue growing to its limit (broker.flow). A client that sends on
        regardless is not read any more once MAX_UNANSWERED replies wait."""
        if self._withheld is None:
            self._withheld = []
            self.gateway.wait_for_room(queues, self._release_replies)

    def _qos0_applied(self, result: Any, error: BrokerError | None) -> None:
        """QoS 0 publishes have no PUBACK to withhold: a connection that only publishes
        is not read while a queue it feeds is congested. One that also subscribes is not
        held back (it must go on reading its own PUBACKs); its QoS 0 messages meet the
        queue's length limit instead, as they would on a broker without flow control."""
        self._probing = False
        congested = _congested(result)
        if congested and not self._consuming and not self._joined:
            self._unanswered_qos0 = MAX_UNANSWERED
            self.gateway.wait_for_room(congested, self._qos0_room)
        elif self._unanswered_qos0 >= MAX_UNANSWERED:
            self._qos0_room()
        else:
            self._unanswered_qos0 = 0

    def _qos0_room(self) -> None:
        self._unanswered_qos0 = 0
        self._go_on()

    @property
    def held_back(self) -> bool:
        """Whether the client's input waits: too many of its publishes wait for an answer."""
        withheld = self._withheld
        return self._unanswered_qos0 >= MAX_UNANSWERED or (
            withheld is not None and len(withheld) >= MAX_UNANSWERED
        )

    def _go_on(self) -> None:
        """Read again what the client sent while held back (the transport resumes reading
        as it flushes)."""
        if self.held_back:
            return
        if self.on_output is not None:
            self.on_output()
        self._parse()

    def _release_replies(self) -> None:
        withheld, self._withheld = self._withheld, None
        for reply in withheld or ():
            self.write(reply)
        self._go_on()

    def _check_done(self, result: Any, error: BrokerError | None) -> None:
        if error is not None and self.state is State.OPEN:
            self.close(f"broker refused a request: {error}", publish_will=True)

    # -- input ---------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if self.state is State.CLOSED:
            return
        self.reader.feed(data)
        self._parse()

    def _parse(self) -> None:
        try:
            while (
                self.state is State.OPEN or self.state is State.AWAIT_CONNECT
            ) and not self.held_back:
                packet = self.reader.next_packet()
                if packet is None:
                    return
                self._handle(packet)
            if self.state is State.OPENING and self.reader.buffered > MAX_EARLY_INPUT:
                raise ProtocolError("too much sent before CONNACK")
        except ProtocolError as exc:
            self.close(f"protocol error: {exc}", publish_will=True)

    def _handle(self, packet: codec.Packet) -> None:
        self.traffic.packets_received += 1
        if self.state is State.AWAIT_CONNECT:
            if not isinstance(packet, Connect):
                raise ProtocolError("the first packet must be CONNECT")
            self._on_connect(packet)
        elif isinstance(packet, Publish):
            self._on_publish(packet)
        elif isinstance(packet, Ack):
            self._on_ack(packet)
        elif isinstance(packet, PingReq):
            self.write(codec.PINGRESP_PACKET)
        elif isinstance(packet, Subscribe):
            self._on_subscribe(packet)
        elif isinstance(packet, Unsubscribe):
            self._on_unsubscribe(packet)
        elif isinstance(packet, Disconnect):
            self.close("client disconnected", publish_will=False)
        else:
            raise ProtocolError("a second CONNECT on the same connection")

    # -- CONNECT -------------------------------------------------------------------------

    def _on_connect(self, p: Connect) -> None:
        if p.protocol_name not in ("MQTT", "MQIsdp"):
            raise ProtocolError(f"unknown protocol name '{p.protocol_name}'")
        try:
            if p.level != 4:
                raise _Refused(
                    codec.UNACCEPTABLE_PROTOCOL_VERSION, f"protocol level {p.level} (not 3.1.1)"
                )
            if self.refusal is not None:
                raise _Refused(codec.SERVER_UNAVAILABLE, self.refusal)
            client_id = self._client_id(p)
            self.user, self.vhost = self._login(p)
            queue = Session(self.vhost, client_id, False).queue
            try:
                self.gateway.check_permission(self.user, self.vhost, "configure", "queue", queue)
                if p.will is not None:
                    self._check_will(p.will)
            except AccessRefused as exc:
                raise _Refused(codec.NOT_AUTHORIZED, str(exc)) from None
        except _Refused as refused:
            # Connection limits and refused logins log themselves, once per interval.
            if not refused.logged and refused.code != codec.SERVER_UNAVAILABLE:
                log.info("mqtt connection %s refused (code %d): %s", self.id, refused.code, refused)
            self.write(codec.connack(False, refused.code))
            self._finish()
            return
        self.client_id = client_id
        self.keepalive = p.keepalive
        self.state = State.OPENING
        self._open_session(p.clean_session, p.will)
        log.info(
            "mqtt connection %s: client id '%s', user '%s', vhost '%s', clean session %d",
            self.id,
            client_id,
            self.user.name,
            self.vhost,
            p.clean_session,
        )

    def _check_will(self, will: codec.Will) -> None:
        """A will is a publish the core makes later for the client: refused at CONNECT when
        the client could not publish it itself (no write permission, a `$` topic)."""
        if will.topic[:1] == "$":
            raise AccessRefused(f"will topic '{will.topic}' is reserved ('$' topics)")
        assert self.user is not None
        self.gateway.check_permission(self.user, self.vhost, "write", "exchange", EXCHANGE)

    def _client_id(self, p: Connect) -> str:
        if not p.client_id:
            if not p.clean_session:
                raise _Refused(codec.IDENTIFIER_REJECTED, "empty client id with clean session 0")
            return self.gateway.new_name("mqtt-")
        if len(p.client_id.encode()) > MAX_CLIENT_ID_BYTES:
            raise _Refused(codec.IDENTIFIER_REJECTED, "client id is too long")
        return p.client_id

    def _login(self, p: Connect) -> tuple[User, str]:
        """The user and vhost: user names may name a vhost as RabbitMQ's do ("vhost:user")."""
        vhost = self.settings.default_vhost
        if p.username is None and p.password is None and self.cert_user:
            # RabbitMQ's ssl_cert_login: a user name and password sent take priority.
            try:
                user = self.gateway.trusted_user(self.cert_user, self.loopback, self.source)
            except AccessRefused as exc:
                self.output_delay = self.gateway.refusal_delay(self.source)
                raise _Refused(codec.NOT_AUTHORIZED, str(exc), logged=True) from None
        elif p.username is None:
            if not self.settings.allow_anonymous:
                raise _Refused(codec.NOT_AUTHORIZED, "anonymous access is disabled")
            try:
                user = self.gateway.trusted_user(
                    self.settings.anonymous_user, self.loopback, self.source
                )
            except AccessRefused as exc:
                self.output_delay = self.gateway.refusal_delay(self.source)
                raise _Refused(codec.NOT_AUTHORIZED, str(exc), logged=True) from None
        else:
            name = p.username
            if ":" in name:
                vhost, name = name.split(":", 1)
            try:
                password = (p.password or b"").decode()
                user = self.gateway.authenticate(name, password, self.loopback, self.source)
            except UnicodeDecodeError as undecodable:
                raise _Refused(codec.BAD_USERNAME_OR_PASSWORD, str(undecodable)) from None
            except AccessRefused as exc:
                self.output_delay = self.gateway.refusal_delay(self.source)
                raise _Refused(codec.BAD_USERNAME_OR_PASSWORD, str(exc), logged=True) from None
        try:
            self.gateway.vhost_access(user, vhost)
        except ConnectionLimit as limit:
            raise _Refused(codec.SERVER_UNAVAILABLE, str(limit)) from None
        except BrokerError as refused:
            raise _Refused(codec.NOT_AUTHORIZED, str(refused)) from None
        return user, vhost

    def _open_session(self, clean: bool, will: codec.Will | None) -> None:
        """Claim the client id in the core (taking it over from another connection); the
        CONNACK goes out once that is durable, and the packets sent meanwhile are read then."""
        session = Session(self.vhost, self.client_id, persistent=not clean)
        self.session = session
        last_will = None
        if will is not None:
            properties = _PROPERTIES[(will.qos, will.retain)]
            routing_key = to_routing_key(will.topic)
            last_will = c.Will(EXCHANGE, routing_key, properties, will.payload, will.retain)
        command = c.OpenSession(
            self.vhost,
            self.client_id,
            self.id,
            self.owner,
            clean,
            session.queue,
            session.group,
            last_will,
        )
        self.gateway.submit(command, self._session_opened)

    def _session_opened(self, records: dict[str, Any] | None, error: BrokerError | None) -> None:
        session = self.session
        if self.state is not State.OPENING or session is None:
            return
        if error is not None:
            log.info("mqtt connection %s refused: %s", self.id, error)
            self.write(codec.connack(False, codec.SERVER_UNAVAILABLE))
            self._finish()
            return
        present = session.persistent and "session" in (records or {})
        if present:
            session.restore(records or {}, self._monitoring())
        elif session.persistent:
            self._submit(session.save_subscriptions())
        self.state = State.OPEN
        self.write(codec.connack(present, codec.ACCEPTED))
        for packet_id in sorted(session.awaiting_complete):
            self.write(codec.ack(PUBREL, packet_id))
        patterns = session.patterns()
        if patterns:
            self._start_consuming()
            # Re-asserted so a session whose queue was deleted while offline heals.
            self._submit([self._bind(pattern) for pattern in sorted(patterns)])
        for queue, filters in sorted(session.shared().items()):
            self._join(queue, *filters)
        self._parse()

    def _start_consuming(self) -> None:
        """Declare the session queue and consume from it (once per connection)."""
        if self._consuming:
            return
        self._consuming = True
        session = self.session
        assert session is not None
        declare = c.DeclareQueue(
            self.vhost, session.queue, session.persistent, None, False, self._queue_arguments()
        )
        self.gateway.submit(declare, self._declared)
        consume = c.Consume(
            self.vhost,
            session.queue,
            self.owner,
            CONSUMER_TAG,
            prefetch=self.settings.max_inflight,
            connection=self.id,
            settle_transient=True,
        )
        self.gateway.submit(consume, self._check_done)

    def _queue_arguments(self) -> dict[str, Any]:
        arguments: dict[str, Any] = {}
        if self.settings.max_queued:
            arguments["x-max-length"] = self.settings.max_queued
            arguments["x-overflow"] = OVERFLOW_POLICIES[self.settings.overflow]
        return arguments

    def _join(self, queue: str, full_filter: str, topic_filter: str) -> None:
        """Become a member of a shared subscription: hold its queue (first, so a member
        leaving meanwhile cannot delete it under us), declare and bind it, consume from it."""
        if queue in self._joined:
            return
        self._joined[queue] = (full_filter, topic_filter)
        vhost = self.vhost
        self.gateway.submit(c.PutRecord(vhost, c.holders_of(queue), self.client_id, True))
        arguments = self._queue_arguments()
        self.gateway.submit(
            c.DeclareQueue(vhost, queue, True, None, False, arguments), self._declared
        )
        bind = c.Bind(vhost, EXCHANGE, queue, True, to_pattern(topic_filter))
        consume = c.Consume(
            vhost,
            queue,
            self.owner,
            full_filter,
            prefetch=self.settings.max_inflight,
            connection=self.id,
            settle_transient=True,
        )
        self._submit([bind, consume])

    def _leave(self, queue: str) -> list[c.Command]:
        """Stop being a member: the queue goes with its last member (core holders)."""
        commands: list[c.Command] = []
        joined = self._joined.pop(queue, None)
        if joined is not None:
            commands.append(c.Cancel(self.owner, joined[0]))
        commands.append(c.PutRecord(self.vhost, c.holders_of(queue), self.client_id, None))
        return commands

    def _declared(self, result: Any, error: BrokerError | None) -> None:
        if isinstance(error, PreconditionFailed):
            # Declared earlier with other limits: the queue keeps them rather than its messages
            # being thrown away to apply new ones.
            log.warning("mqtt session queue keeps its earlier arguments: %s", error)
        elif error is not None:
            self._check_done(result, error)

    def _bind(self, pattern: str) -> c.Command:
        assert self.session is not None
        return c.Bind(self.vhost, EXCHANGE, self.session.queue, True, pattern)

    # -- publishing ----------------------------------------------------------------------

    def _on_publish(self, p: Publish) -> None:
        if p.topic[:1] == "$":
            # MQTT-4.7.2: `$` topics are the server's; 3.1.1 can only refuse by closing.
            self.close(f"publish to '{p.topic}' refused: '$' topics are reserved", True)
            return
        if not self._may_publish:
            assert self.user is not None
            try:
                self.gateway.check_permission(self.user, self.vhost, "write", "exchange", EXCHANGE)
            except AccessRefused as exc:
                self.close(f"publish refused: {exc}", publish_will=True)
                return
            self._may_publish = True
        self.has_published = True
        self.traffic.received += 1
        session = self.session
        assert session is not None
        routing_key = to_routing_key(p.topic)
        qos = p.qos
        properties = _PROPERTIES[(qos, p.retain)]
        publish = c.Publish(self.vhost, EXCHANGE, routing_key, properties, p.payload)
        self.gateway.note_publisher(publish, self._publisher)
        if not p.retain and qos < 2:
            # The common case, without a list: one command, and at QoS 1 its PUBACK.
            if qos == 0:
                # amq.topic cannot refuse it; one publish per commit round asks whether it
                # fed a congested queue
                if self._probing:
                    self._unanswered_qos0 += 1
                    self.gateway.submit(publish, durable=False)
                else:
                    self._probing = True
                    self.gateway.submit(publish, self._qos0_applied, durable=False)
            else:
                self._reply_later(codec.ack(PUBACK, p.packet_id))
                self.gateway.submit(publish, self._reply_done)
            return
        commands: list[c.Command] = []
        if p.retain:
            commands.append(
                c.StoreRetained(self.vhost, EXCHANGE, routing_key, properties, p.payload or None)
            )
        commands.append(publish)
        if qos == 0:
            self._submit(_atomic(commands))
        elif qos == 1:
            self._submit(_atomic(commands), codec.ack(PUBACK, p.packet_id))
        elif p.packet_id in session.awaiting_release:
            # A retransmission of a message already passed on: exactly once means not again.
            self._submit([], codec.ack(PUBREC, p.packet_id))
        else:
            # The message and its packet id are one command: both happen, or neither.
            commands += session.received(p.packet_id)
            self._submit(_atomic(commands), codec.ack(PUBREC, p.packet_id))

    def _on_ack(self, p: Ack) -> None:
        session = self.session
        assert session is not None
        packet_id = p.packet_id
        if p.type == PUBACK:
            out = self.outbound.get(packet_id)
            if out is not None and out[1] == 1:
                del self.outbound[packet_id]
                self._settle_later(out[0])
        elif p.type == PUBREC:
            out = self.outbound.get(packet_id)
            commands: list[c.Command] = []
            if out is not None and out[1] == 2:
                del self.outbound[packet_id]
                # Acked in the queue and remembered as released, as one command.
                settle: list[c.Command] = [c.Settle(self.owner, [out[0]], "ack")]
                commands = _atomic(settle + session.released_by_us(packet_id))
            self._submit(commands, codec.ack(PUBREL, packet_id))
        elif p.type == PUBREL:
            commands = []
            if packet_id in session.awaiting_release:
                commands = session.released_by_client(packet_id)
            self._submit(commands, codec.ack(PUBCOMP, packet_id))
        elif packet_id in session.awaiting_complete:
            self._submit(session.completed(packet_id))

    # -- subscriptions -------------------------------------------------------------------

    def _subscribe_allowed(self) -> bool:
        if self._may_subscribe is None:
            assert self.user is not None and self.session is not None
            try:
                check = self.gateway.check_permission
                check(self.user, self.vhost, "read", "exchange", EXCHANGE)
                check(self.user, self.vhost, "write", "queue", self.session.queue)
                check(self.user, self.vhost, "read", "queue", self.session.queue)
                self._may_subscribe = True
            except AccessRefused as exc:
                log.info("mqtt connection %s may not subscribe: %s", self.id, exc)
                self._may_subscribe = False
        return self._may_subscribe

    def _monitoring(self) -> bool:
        """The user may read the `$SYS` topics (RabbitMQ's monitoring tag, or more)."""
        assert self.user is not None
        return not SYS_TAGS.isdisjoint(self.user.tags)

    def _shared_allowed(self, queue: str) -> bool:
        """A shared subscription's member reads amq.topic and declares, binds and reads the
        group's queue."""
        assert self.user is not None
        check = self.gateway.check_permission
        try:
            check(self.user, self.vhost, "read", "exchange", EXCHANGE)
            for permission in ("configure", "write", "read"):
                check(self.user, self.vhost, permission, "queue", queue)
        except AccessRefused as exc:
            log.info("mqtt connection %s may not join '%s': %s", self.id, queue, exc)
            return False
        return True

    def _granted(self, topic_filter: str) -> str | None:
        """The shared queue of `topic_filter` ("" for a plain filter), None if refused."""
        try:
            shared = shared_filter(topic_filter)
        except ValueError:
            return None
        if shared is None:
            if sys_filter(topic_filter):
                return "" if self._monitoring() and self._subscribe_allowed() else None
            return "" if subscribable(topic_filter) and self._subscribe_allowed() else None
        queue = shared_queue(*shared)
        if len(queue.encode()) > MAX_QUEUE_NAME_BYTES or not self._shared_allowed(queue):
            return None
        return queue

    def _on_subscribe(self, p: Subscribe) -> None:
        session = self.session
        assert session is not None
        codes = []
        plain = []
        joined = {}
        for topic_filter, qos in p.topics:
            queue = self._granted(topic_filter)
            if queue is None:
                codes.append(codec.SUBSCRIPTION_FAILURE)
                continue
            session.subscriptions[topic_filter] = qos
            if queue:
                joined[queue] = topic_filter
            else:
                plain.append(topic_filter)
            codes.append(qos)
        suback = codec.suback(p.packet_id, codes)
        if not plain and not joined:
            self._submit([], suback)
            return
        patterns = dict.fromkeys(to_pattern(f) for f in plain)
        if plain:
            self._topics.clear()
            self._start_consuming()
            self._submit([self._bind(pattern) for pattern in patterns])
        for queue, full_filter in joined.items():
            parsed = shared_filter(full_filter)
            assert parsed is not None
            self._join(queue, full_filter, parsed[1])
        self._submit(session.save_subscriptions())
        # Retained messages are not sent on shared subscriptions (MQTT 5, Mosquitto for 3.1.1).
        copy = c.CopyRetained(
            self.vhost, list(patterns), session.queue, {RETAINED_COPY_HEADER: True}
        )

        def subscribed() -> None:
            # After the SUBACK: retained messages arrive as deliveries of the session queue.
            self.write(suback)
            if patterns:
                self._submit([copy])

        self.gateway.after(subscribed)

    def _on_unsubscribe(self, p: Unsubscribe) -> None:
        session = self.session
        assert session is not None
        shared = session.shared()
        removed = [f for f in p.filters if session.subscriptions.pop(f, None) is not None]
        if removed:
            self._topics.clear()
            still_bound = session.patterns()
            plain = [f for f in removed if f not in {full for full, _ in shared.values()}]
            gone = dict.fromkeys(to_pattern(f) for f in plain if to_pattern(f) not in still_bound)
            commands: list[c.Command] = [
                c.Unbind(self.vhost, EXCHANGE, session.queue, True, pattern) for pattern in gone
            ]
            for queue, (full, _) in shared.items():
                if full in removed:
                    commands += self._leave(queue)
            self._submit(commands)
            self._submit(session.save_subscriptions())
        self._submit([], codec.ack(codec.UNSUBACK, p.packet_id))

    # -- deliveries ----------------------------------------------------------------------

    def deliver(self, effect: Deliver) -> None:
        if self.state is not State.OPEN:
            return  # the consumer's release returns it to the queue
        msg = effect.message
        item = (self.vhost, effect.queue, msg.seq)
        if effect.queue in self._joined:
            topic, granted = self._shared_topic(effect.queue, msg.routing_key)
        elif self.session is not None and effect.queue == self.session.queue:
            topic, granted = self._topic(msg.routing_key)
        else:
            # Sent by a shared queue before our unsubscribe reached it: for other members.
            if msg.persistent:
                self.gateway.submit(c.Settle(self.owner, [item], "requeue"))
            return
        if granted < 0:
            # Matched the AMQP pattern but no MQTT filter (a `$` topic, a literal `*`, or an
            # unsubscribed filter): not for this client.
            if msg.persistent:
                self._settle_later(item)
            return
        headers = msg.properties.get("headers") or _NO_HEADERS
        retain = bool(headers.get(RETAINED_COPY_HEADER))
        body = msg.body
        if not msg.persistent:
            # The core settled it as it left (settle_transient): at most once, so QoS 0.
            self._write_publish(codec.publish_header(topic, len(body), 0, retain, False, 0), body)
            return
        qos = min(granted, _message_qos(headers, msg.persistent))
        if qos == 0:
            self._write_publish(codec.publish_header(topic, len(body), 0, retain, False, 0), body)
            self._settle_qos0(item)
            return
        packet_id = self._packet_id(msg.seq)
        if packet_id == 0:
            self.close("no free packet identifier", publish_will=True)
            return
        self.outbound[packet_id] = (item, qos)
        header = codec.publish_header(topic, len(body), qos, retain, effect.redelivered, packet_id)
        if qos == 2:
            # Deliveries may leave before the message is on disk; a QoS 2 one may not: after
            # a crash its publisher would send it again, and the subscriber get it twice.
            self.gateway.after(lambda: self._write_publish(header, body))
        else:
            self._write_publish(header, body)

    def _settle_qos0(self, item: tuple[str, str, int]) -> None:
        """A QoS 0 delivery is done once written: settle it with the turn's other acks.

        The settles of a whole consumer window go to the core at once, while the output
        waiting for the transport is small and the client reads: the core then delivers the
        next window in the same turn, so a QoS 0 stream is not held to one window per loop
        turn (its session queue would grow, and with it the latency). Past the output limit
        they wait for the flush, and a paused transport pauses the consumer (SetFlow).
        """
        self._settle_later(item)
        if (
            len(self._settles) + len(self.outbound) >= self.settings.max_inflight
            and self._writable
            and self._out_size < MAX_PENDING_OUTPUT
        ):
            self._flush_settles()

    def _topic(self, routing_key: str) -> tuple[bytes, int]:
        known = self._topics.get(routing_key)
        if known is not None:
            return known
        topic = to_topic(routing_key)
        assert self.session is not None
        granted = max(
            (
                q
                for f, q in self.session.subscriptions.items()
                if filter_matches(f, topic) and not f.startswith(SHARE_PREFIX)
            ),
            default=-1,
        )
        if len(self._topics) >= _TOPIC_CACHE_SIZE:
            self._topics.clear()
        known = self._topics[routing_key] = (codec.topic_field(topic), granted)
        return known

    def _shared_topic(self, queue: str, routing_key: str) -> tuple[bytes, int]:
        """The topic field and granted QoS of a delivery from a shared subscription's queue."""
        assert self.session is not None
        full_filter, topic_filter = self._joined[queue]
        topic = to_topic(routing_key)
        granted = self.session.subscriptions.get(full_filter, -1)
        if not filter_matches(topic_filter, topic):
            granted = -1
        return codec.topic_field(topic), granted

    def _packet_id(self, seq: int) -> int:
        """Derived from the queue sequence, so a redelivery reuses its packet identifier."""
        assert self.session is not None
        releasing = self.session.awaiting_complete
        packet_id = (seq - 1) % 0xFFFF + 1
        for _ in range(0xFFFF):
            if packet_id not in self.outbound and packet_id not in releasing:
                return packet_id
            packet_id = packet_id % 0xFFFF + 1
        return 0

    def consumer_cancelled(self, tag: str) -> None:
        """The queue went (deleted by an administrator): reconnecting declares it again."""
        what = "the session queue" if tag == CONSUMER_TAG else f"the queue of '{tag}'"
        self.close(f"{what} was deleted", publish_will=True)

    def set_writable(self, writable: bool) -> None:
        """Pause deliveries while the client does not read what was sent."""
        self._writable = writable
        if self._consuming and self.state is State.OPEN:
            self.gateway.submit(c.SetFlow(self.owner, writable), durable=False)

    # -- closing -------------------------------------------------------------------------

    def _publisher(self) -> dict[str, Any]:
        """Who publishes on this connection, for message trace."""
        return {
            "protocol": "mqtt",
            "user": self.user.name if self.user else "",
            "connection": list(self.id),
            "peer": self.source,
            "client_id": self.client_id,
        }

    def close(self, reason: str, publish_will: bool) -> None:
        """End the connection; the transport closes once pending output is written."""
        if self.should_close:
            return
        log.info("closing mqtt connection %s: %s", self.id, reason)
        self._detach(publish_will)
        self._finish()

    def _finish(self) -> None:
        self.state = State.CLOSED
        if self.on_output is not None:
            self.on_output()
        self.should_close = True

    def keepalive_expired(self) -> None:
        self.close(f"no packet within 1.5 x keepalive ({self.keepalive} s)", publish_will=True)

    def connection_lost(self) -> None:
        """The network connection ended; without a DISCONNECT first, the will goes out."""
        self._detach(publish_will=True)
        self.state = State.CLOSED

    def _detach(self, publish_will: bool) -> None:
        """Let the client id go: the core requeues the deliveries in flight, publishes the
        will if asked (MQTT-3.1.2-8) and ends a clean session. A connection whose client id
        was taken over holds nothing any more, and the command changes nothing."""
        if self._detached:
            return
        self._detached = True
        if self.session is None:
            return
        self._flush_settles()
        self.gateway.submit(c.CloseSession(self.vhost, self.client_id, self.id, publish_will))


_NO_HEADERS: dict[str, Any] = {}


def _atomic(commands: list[c.Command]) -> list[c.Command]:
    """Several commands as one that applies all of them or none (one stays as it is)."""
    return commands if len(commands) < 2 else [c.Batch(commands)]


def _congested(result: Any) -> list[tuple[str, str]] | None:
    """The congested queues a publish (alone or in a batch) fed."""
    if type(result) is PublishResult:
        return result.congested
    if type(result) is list:
        for item in result:
            if type(item) is PublishResult and item.congested:
                return item.congested
    return None


def _message_qos(headers: dict[str, Any], persistent: bool) -> int:
    """An MQTT publisher's QoS from its header; otherwise persistent messages are QoS 1."""
    qos = headers.get(QOS_HEADER)
    if isinstance(qos, int) and 0 <= qos <= 2:
        return qos
    return 1 if persistent else 0
