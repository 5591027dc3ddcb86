"""One AMQP channel: content assembly, delivery tags, consumers, confirms and transactions.

Each client method becomes a core command; its reply frame is sent from the command's
completion callback, which the commit path calls only once the command is durable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pamqp import commands as spec
from pamqp.base import Frame

from broker.core import commands as c
from broker.core.errors import BrokerError, StoreFailed
from broker.core.model import Deliver, GetResult, PublishResult, QueueInfo
from broker.protocols.amqp import codec
from broker.protocols.amqp.arguments import consumer_priority
from broker.protocols.amqp.errors import AMQPError, ConnectionError_, reply_text

if TYPE_CHECKING:
    from broker.protocols.amqp.connection import AMQPConnection

REPLY_TO = "amq.rabbitmq.reply-to"
#: stands for basic.publish in error replies (class and method ids)
_PUBLISH = spec.Basic.Publish()
MAX_MESSAGE_SIZE = 128 * 1024 * 1024


@dataclass(slots=True)
class ConsumerInfo:
    queue: str
    no_ack: bool
    reply_to_key: str | None = None


class Channel:
    def __init__(self, conn: AMQPConnection, number: int) -> None:
        self.conn = conn
        self.number = number
        self.owner: c.Owner = (*conn.id, number)
        self.gateway = conn.gateway
        self.traffic = conn.gateway.traffic["amqp091"]
        self.closing = False
        self.released = False
        self.prefetch = 0
        self.global_prefetch = 0
        self.flow_active = True
        self.confirm = False
        self.publish_seq = 0
        self.tx = False
        #: the publishes and settlements of the open transaction, committed as one Batch
        self.tx_commands: list[c.Publish | c.Settle] = []
        #: deliveries settled inside the open transaction, restored on rollback
        self.tx_settled: dict[int, tuple[str, str, int]] = {}
        self.next_tag = 0
        #: delivery tag -> (vhost, queue, seq) for deliveries awaiting ack
        self.unacked: dict[int, tuple[str, str, int]] = {}
        self.consumers: dict[str, ConsumerInfo] = {}
        #: deliveries that arrived before their consumer's consume-ok was sent
        self._before_consume_ok: dict[str, list[Deliver]] = {}
        self.reply_to_key: str | None = None
        self.last_queue = ""
        self._permitted: set[tuple[str, str, str]] = set()
        self._publish: tuple[str, str, bool] | None = None
        self._header: tuple[int, dict[str, Any], bytes] | None = None
        self._body: list[bytes] = []
        self._received = 0
        self._confirms: list[tuple[int, bool]] = []
        #: acks received in the current read, settled together by one command
        self._acks: list[tuple[str, str, int]] = []

    # -- plumbing ------------------------------------------------------------------------

    @property
    def vhost(self) -> str:
        return self.conn.vhost

    def send(self, method: Frame) -> None:
        if not self.closing:
            self.conn.send_method(self.number, method)

    def _call(
        self,
        method: Frame,
        command: c.Command,
        reply: Callable[[Any], Frame | None],
        durable: bool = True,
    ) -> None:
        """Submit `command`; once applied (and durable), send `reply(result)` or close on
        error."""

        def done(result: Any, error: BrokerError | None) -> None:
            if self.closing:
                return
            if error is not None:
                self.conn.core_error(self.number, error, method)
                return
            frame = reply(result)
            if frame is not None:
                self.send(frame)

        self.gateway.submit(command, done, durable)

    def _check(self, kind: str, resource: str, name: str) -> None:
        key = (kind, resource, name)
        if key in self._permitted:
            return
        if resource == "exchange" and name == "":
            name = "amq.default"  # how RabbitMQ names the default exchange in permissions
        assert self.conn.user is not None
        self.gateway.check_permission(self.conn.user, self.vhost, kind, resource, name)
        self._permitted.add(key)

    # -- frames --------------------------------------------------------------------------

    def handle_frame(self, ftype: int, payload: bytes) -> None:
        if self.closing:
            if ftype == codec.FRAME_METHOD:
                method = codec.decode_method(payload)
                if isinstance(method, spec.Channel.CloseOk):
                    self.conn.channel_closed(self.number)
                elif isinstance(method, spec.Channel.Close):
                    self.conn.send_method(self.number, spec.Channel.CloseOk())
                    self.conn.channel_closed(self.number)
            return
        if ftype == codec.FRAME_METHOD:
            if self._publish is not None:
                raise ConnectionError_(
                    505,
                    "UNEXPECTED_FRAME - expected content header for class 60, "
                    "got non content header frame instead",
                    60,
                    40,
                )
            mid = codec.method_id(payload)
            if mid == codec.PUBLISH_ID:
                exchange, routing_key, mandatory, immediate = codec.decode_publish(payload)
                if immediate:
                    raise ConnectionError_(540, "NOT_IMPLEMENTED - immediate=true", 60, 40)
                self._publish = (exchange, routing_key, mandatory)
                return
            if mid == codec.ACK_ID and not self.tx:
                tag, multiple = codec.decode_ack(payload)
                # The hottest client method: one ack, collected without the generic path.
                item = None if multiple else self.unacked.pop(tag, None)
                if item is None:
                    self._run(lambda: self._collect_ack(tag, multiple), None)
                    return
                if not self._acks:
                    self.conn.acks_pending.add(self)
                self._acks.append(item)
                return
            self.flush_acks()
            method = codec.decode_method(payload)
            handler = _HANDLERS.get(type(method))
            if handler is None:
                raise ConnectionError_(
                    503 if not isinstance(method, spec.Channel.Open) else 504,
                    f"unexpected method {method.name} on channel {self.number}",
                    (method.index >> 16),
                    method.index & 0xFFFF,
                )
            self._run(lambda: handler(self, method), method)
        elif ftype == codec.FRAME_HEADER:
            self.flush_acks()
            self._on_content_header(payload)
        else:
            self._on_content_body(payload)

    def _run(self, action: Callable[[], None], method: Frame | None) -> None:
        try:
            action()
        except AMQPError as exc:
            if method is not None and not exc.class_id:
                exc.class_id, exc.method_id = method.index >> 16, method.index & 0xFFFF
            self.conn.channel_error(self.number, exc)
        except BrokerError as exc:
            self.conn.core_error(self.number, exc, method)

    def _on_content_header(self, payload: bytes) -> None:
        if self._publish is None or self._header is not None:
            raise ConnectionError_(505, "UNEXPECTED_FRAME - content header without a method")
        size, props, raw = codec.decode_content_header(payload)
        if size > MAX_MESSAGE_SIZE:
            self._publish = None
            self.conn.channel_error(
                self.number,
                AMQPError(
                    406,
                    f"message size {size} is larger than configured max size {MAX_MESSAGE_SIZE}",
                    60,
                    40,
                ),
            )
            return
        self._header = (size, props, raw)
        self._body = []
        self._received = 0
        if size == 0:
            self._content_complete()

    def _on_content_body(self, payload: bytes) -> None:
        if self._header is None:
            raise ConnectionError_(505, "UNEXPECTED_FRAME - content body without a header")
        self._body.append(payload)
        self._received += len(payload)
        if self._received > self._header[0]:
            raise ConnectionError_(505, "UNEXPECTED_FRAME - content body exceeds its size")
        if self._received == self._header[0]:
            self._content_complete()

    def _content_complete(self) -> None:
        assert self._publish is not None and self._header is not None
        exchange, routing_key, mandatory = self._publish
        _, props, raw = self._header
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._publish = None
        self._header = None
        self._body = []
        try:
            self._publish_message(exchange, routing_key, mandatory, props, raw, body)
        except AMQPError as exc:
            if not exc.class_id:
                exc.class_id, exc.method_id = 60, 40
            self.conn.channel_error(self.number, exc)
        except BrokerError as exc:
            self.conn.core_error(self.number, exc, _PUBLISH)

    # -- publishing ----------------------------------------------------------------------

    def _publish_message(
        self,
        exchange: str,
        routing_key: str,
        mandatory: bool,
        props: dict[str, Any],
        raw: bytes,
        body: bytes,
    ) -> None:
        self.conn.has_published = True
        self._check("write", "exchange", exchange)
        user = self.conn.user
        assert user is not None
        user_id = props.get("user_id")
        if user_id is not None and user_id != user.name:
            raise AMQPError(
                406,
                f"user_id property set to '{user_id}' but authenticated user was '{user.name}'",
            )
        properties: dict[str, Any]
        if props.get("reply_to") == REPLY_TO:
            if self.reply_to_key is None:
                raise AMQPError(406, "fast reply consumer does not exist")
            properties = dict(props, reply_to=self.reply_to_key)
        else:
            properties = props
        self.traffic.received += 1
        if exchange == "" and routing_key.startswith(REPLY_TO + "."):
            self._publish_reply(routing_key, properties, body)
            return
        seq = 0
        if self.confirm:
            self.publish_seq += 1
            seq = self.publish_seq
        command = c.Publish(self.vhost, exchange, routing_key, properties, body, mandatory)
        self.gateway.note_publisher(command, self._publisher)
        if self.tx:
            self.tx_commands.append(command)
            return
        self._submit_publish(command, seq)

    def _publisher(self) -> dict[str, Any]:
        """Who publishes on this channel, for message trace."""
        conn = self.conn
        return {
            "protocol": "amqp",
            "user": conn.user.name if conn.user else "",
            "connection": list(conn.id),
            "peer": conn.source,
            "channel": self.number,
            "client": str(conn.client_properties.get("product", "")),
        }

    def _submit_publish(self, command: c.Publish, seq: int) -> None:
        def done(result: PublishResult | None, error: BrokerError | None) -> None:
            if self.closing:
                return
            if error is not None:
                if seq and isinstance(error, StoreFailed):
                    self._confirm(seq, False)  # not on disk: a nack, as RabbitMQ sends one
                    return
                self.conn.core_error(self.number, error, _PUBLISH)
                return
            assert result is not None
            if command.mandatory and not result.routed:
                self._basic_return(312, "NO_ROUTE", command)
            if seq:
                self._confirm(seq, not result.rejected)

        # Only a confirm promises the message is on disk; without one, nothing waits for it.
        self.gateway.submit(command, done, durable=bool(seq))

    def _publish_reply(self, routing_key: str, properties: dict[str, Any], body: bytes) -> None:
        # A reply whose requester is gone is dropped silently, as RabbitMQ does.
        self.gateway.deliver_reply(routing_key, properties, body, "")
        seq = 0
        if self.confirm:
            self.publish_seq += 1
            seq = self.publish_seq
        if seq:
            self.gateway.after(lambda: self._confirm(seq, True))

    def _basic_return(self, code: int, text: str, command: c.Publish) -> None:
        frame = _frame(
            spec.Basic.Return,
            reply_code=code,
            reply_text=text,
            exchange=command.exchange,
            routing_key=command.routing_key,
        )
        self.conn.write(
            codec.method_frame(self.number, frame)
            + codec.content_frames(
                self.number,
                codec.properties_bytes(command.properties),
                command.body,
                self.conn.frame_max,
            )
        )

    def _confirm(self, seq: int, ok: bool) -> None:
        if not self._confirms and self.conn.on_output is not None:
            self.conn.on_output()
        self._confirms.append((seq, ok))

    @property
    def confirms_pending(self) -> bool:
        return bool(self._confirms)

    def flush_confirms(self) -> None:
        """Coalesce consecutive positive confirms into one basic.ack(multiple=True)."""
        run_end = 0
        for seq, ok in self._confirms:
            if ok:
                run_end = seq
                continue
            if run_end:
                self.send(spec.Basic.Ack(delivery_tag=run_end, multiple=True))
                run_end = 0
            self.send(spec.Basic.Nack(delivery_tag=seq, multiple=False, requeue=False))
        if run_end:
            self.send(spec.Basic.Ack(delivery_tag=run_end, multiple=True))
        self._confirms.clear()

    # -- deliveries ----------------------------------------------------------------------

    def deliver(self, effect: Deliver) -> None:
        waiting = self._before_consume_ok.get(effect.tag)
        if waiting is not None:
            waiting.append(effect)
            return
        self.next_tag += 1
        tag = self.next_tag
        self.traffic.delivered += 1
        info = self.consumers.get(effect.tag)
        msg = effect.message
        conn = self.conn
        if info is None or not info.no_ack:
            self.unacked[tag] = (conn.vhost, effect.queue, msg.seq)
        properties = msg.properties
        if effect.delivery_count:
            headers = dict(properties.get("headers") or {})
            headers["x-delivery-count"] = effect.delivery_count
            properties = dict(properties, headers=headers)
        before, after = codec.deliver_frame_parts(
            self.number, effect.tag, msg.exchange, msg.routing_key
        )
        conn.write_parts([before, codec.delivery_tag(tag, effect.redelivered), after])
        conn.write_parts(
            codec.content_parts(
                self.number, codec.properties_bytes(properties), msg.body, conn.frame_max
            )
        )

    def deliver_reply(
        self,
        consumer_tag: str,
        exchange: str,
        routing_key: str,
        props: dict[str, Any],
        body: bytes,
    ) -> None:
        self.next_tag += 1
        self.conn.write(
            codec.deliver_frame(
                self.number, consumer_tag, self.next_tag, False, exchange, routing_key
            )
            + codec.content_frames(
                self.number, codec.properties_bytes(props), body, self.conn.frame_max
            )
        )

    def consumer_cancelled_by_broker(self, tag: str) -> None:
        if self.consumers.pop(tag, None) is None:
            return
        if self.conn.capability("consumer_cancel_notify"):
            self.send(spec.Basic.Cancel(consumer_tag=tag, nowait=True))

    def _take(self, tag: int, multiple: bool) -> list[tuple[str, str, int]]:
        if multiple:
            tags = [t for t in self.unacked if tag == 0 or t <= tag]
            if not tags and tag != 0:
                raise AMQPError(406, f"unknown delivery tag {tag}")
        else:
            if tag not in self.unacked:
                raise AMQPError(406, f"unknown delivery tag {tag}")
            tags = [tag]
        if self.tx:
            self.tx_settled.update((t, self.unacked[t]) for t in tags)
        return [self.unacked.pop(t) for t in tags]

    def _collect_ack(self, tag: int, multiple: bool) -> None:
        if not self._acks:
            self.conn.acks_pending.add(self)
        self._acks.extend(self._take(tag, multiple))

    def flush_acks(self) -> None:
        """Settle the acks collected so far (before anything else this channel asks)."""
        if self._acks:
            self.gateway.submit(c.Settle(self.owner, self._acks, "ack"))
            self._acks = []

    def _on_ack(self, method: spec.Basic.Ack) -> None:
        self._settle(method.delivery_tag, method.multiple, "ack")

    def _on_reject(self, method: spec.Basic.Reject) -> None:
        tag = method.delivery_tag  # pamqp types it optional; a decoded reject always has one
        self._settle(tag, False, "requeue" if method.requeue else "reject")  # type: ignore[arg-type]

    def _on_nack(self, method: spec.Basic.Nack) -> None:
        self._settle(
            method.delivery_tag, method.multiple, "requeue" if method.requeue else "reject"
        )

    def _settle(self, tag: int, multiple: bool, outcome: str) -> None:
        items = self._take(tag, multiple)
        command = c.Settle(self.owner, items, outcome)
        if self.tx:
            self.tx_commands.append(command)
            return
        self.gateway.submit(command)

    # -- channel class -------------------------------------------------------------------

    def _on_close(self, method: spec.Channel.Close) -> None:
        self.closing = True

        def closed() -> None:
            self.conn.send_method(self.number, spec.Channel.CloseOk())
            self.conn.channel_closed(self.number)

        self.release(closed)

    def _on_close_ok(self, method: spec.Channel.CloseOk) -> None:
        raise ConnectionError_(503, "channel.close-ok without channel.close", 20, 41)

    def close_with(self, error: AMQPError) -> None:
        """Close the channel with an error; the client answers close-ok."""
        if self.closing:
            return
        self.send(
            spec.Channel.Close(
                reply_code=error.code,
                reply_text=reply_text(error.code, error.text)[:255],
                class_id=error.class_id,
                method_id=error.method_id,
            )
        )
        self.closing = True
        self.release()

    def release(self, then: Callable[[], None] | None = None) -> None:
        """Cancel this channel's consumers and requeue its unacked deliveries."""
        if self.released:
            if then is not None:
                self.gateway.after(then)
            return
        self.flush_acks()
        self.released = True
        self.closing = True
        if self.reply_to_key is not None:
            self.gateway.unregister_reply_to(self.reply_to_key)
        self.unacked.clear()
        self.consumers.clear()
        # Nothing durable to promise: held, not refused, while the store has failed, so the
        # channel's unacked messages still go back to their queues.
        self.gateway.submit(
            c.ReleaseOwner(self.owner), None if then is None else lambda r, e: then(), False
        )

    def _on_flow_ok(self, method: spec.Channel.FlowOk) -> None:
        pass

    def _on_flow(self, method: spec.Channel.Flow) -> None:
        active = bool(method.active)
        self.flow_active = active
        self._call(
            method,
            c.SetFlow(self.owner, self.deliveries_wanted),
            lambda _: spec.Channel.FlowOk(active=active),
            durable=False,
        )

    @property
    def deliveries_wanted(self) -> bool:
        """The client asked for deliveries (channel.flow) and is reading what we send."""
        return self.flow_active and self.conn.writable

    def writable_changed(self) -> None:
        if self.flow_active and not self.closing:
            self.gateway.submit(c.SetFlow(self.owner, self.deliveries_wanted))

    # -- exchanges -----------------------------------------------------------------------

    def _on_exchange_declare(self, m: spec.Exchange.Declare) -> None:
        if not m.passive:
            self._check("configure", "exchange", m.exchange)
            alternate = (m.arguments or {}).get("alternate-exchange")
            if isinstance(alternate, str | bytes):
                # What the exchange cannot route goes on to `alternate`: a publish to it there.
                self._check("read", "exchange", m.exchange)
                self._check("write", "exchange", _text(alternate))
        command = c.DeclareExchange(
            self.vhost,
            m.exchange,
            m.exchange_type,
            bool(m.durable),
            bool(m.auto_delete),
            bool(m.internal),
            dict(m.arguments or {}),
            bool(m.passive),
        )
        self._call(m, command, lambda _: None if m.nowait else spec.Exchange.DeclareOk())

    def _on_exchange_delete(self, m: spec.Exchange.Delete) -> None:
        self._check("configure", "exchange", m.exchange)
        self._call(
            m,
            c.DeleteExchange(self.vhost, m.exchange, bool(m.if_unused)),
            lambda _: None if m.nowait else spec.Exchange.DeleteOk(),
        )

    def _on_exchange_bind(self, m: spec.Exchange.Bind) -> None:
        self._check("write", "exchange", m.destination)
        self._check("read", "exchange", m.source)
        command = c.Bind(
            self.vhost, m.source, m.destination, False, m.routing_key, dict(m.arguments or {})
        )
        self._call(m, command, lambda _: None if m.nowait else spec.Exchange.BindOk())

    def _on_exchange_unbind(self, m: spec.Exchange.Unbind) -> None:
        self._check("write", "exchange", m.destination)
        self._check("read", "exchange", m.source)
        command = c.Unbind(
            self.vhost, m.source, m.destination, False, m.routing_key, dict(m.arguments or {})
        )
        self._call(m, command, lambda _: None if m.nowait else spec.Exchange.UnbindOk())

    # -- queues --------------------------------------------------------------------------

    def _queue_name(self, name: str) -> str:
        if name:
            return name
        if not self.last_queue:
            raise AMQPError(404, "no previously declared queue")
        return self.last_queue

    def _on_queue_declare(self, m: spec.Queue.Declare) -> None:
        name, server_named = m.queue, False
        if name == REPLY_TO and m.passive:
            self.send(spec.Queue.DeclareOk(queue=name, message_count=0, consumer_count=0))
            return
        if not name:
            name, server_named = self.gateway.new_name("amq.gen-"), True
        if not m.passive:
            self._check("configure", "queue", name)
            dlx = (m.arguments or {}).get("x-dead-letter-exchange")
            if isinstance(dlx, str | bytes):
                # Dead letters leave the queue for `dlx`: a read here and a publish there.
                self._check("read", "queue", name)
                self._check("write", "exchange", _text(dlx))
        command = c.DeclareQueue(
            self.vhost,
            name,
            bool(m.durable),
            self.conn.id if m.exclusive else None,
            bool(m.auto_delete),
            dict(m.arguments or {}),
            bool(m.passive),
            server_named,
            self.conn.id,
        )

        def reply(info: QueueInfo) -> Frame | None:
            self.last_queue = info.name
            if m.nowait:
                return None
            return _frame(
                spec.Queue.DeclareOk,
                queue=info.name,
                message_count=info.message_count,
                consumer_count=info.consumer_count,
            )

        self._call(m, command, reply)

    def _on_queue_bind(self, m: spec.Queue.Bind) -> None:
        queue = self._queue_name(m.queue)
        routing_key = m.routing_key if (m.routing_key or m.queue) else queue
        self._check("write", "queue", queue)
        self._check("read", "exchange", m.exchange)
        command = c.Bind(
            self.vhost, m.exchange, queue, True, routing_key, dict(m.arguments or {}), self.conn.id
        )
        self._call(m, command, lambda _: None if m.nowait else spec.Queue.BindOk())

    def _on_queue_unbind(self, m: spec.Queue.Unbind) -> None:
        queue = self._queue_name(m.queue)
        self._check("write", "queue", queue)
        self._check("read", "exchange", m.exchange)
        command = c.Unbind(
            self.vhost,
            m.exchange,
            queue,
            True,
            m.routing_key,
            dict(m.arguments or {}),
            self.conn.id,
        )
        self._call(m, command, lambda _: spec.Queue.UnbindOk())

    def _on_queue_purge(self, m: spec.Queue.Purge) -> None:
        queue = self._queue_name(m.queue)
        self._check("read", "queue", queue)
        self._call(
            m,
            c.PurgeQueue(self.vhost, queue, self.conn.id),
            lambda n: None if m.nowait else spec.Queue.PurgeOk(message_count=n),
        )

    def _on_queue_delete(self, m: spec.Queue.Delete) -> None:
        queue = self._queue_name(m.queue)
        self._check("configure", "queue", queue)
        command = c.DeleteQueue(
            self.vhost, queue, bool(m.if_unused), bool(m.if_empty), self.conn.id
        )
        self._call(m, command, lambda n: None if m.nowait else spec.Queue.DeleteOk(message_count=n))

    # -- consuming -----------------------------------------------------------------------

    def _on_qos(self, m: spec.Basic.Qos) -> None:
        if m.prefetch_size:
            raise ConnectionError_(
                540, f"NOT_IMPLEMENTED - prefetch_size!=0 ({m.prefetch_size})", 60, 10
            )
        if m.global_:
            self.global_prefetch = m.prefetch_count
        else:
            self.prefetch = m.prefetch_count
        self.send(spec.Basic.QosOk())

    def _on_consume(self, m: spec.Basic.Consume) -> None:
        tag = m.consumer_tag or self.gateway.new_name("amq.ctag-")
        if tag in self.consumers:
            raise ConnectionError_(
                530, f"NOT_ALLOWED - attempt to reuse consumer tag '{tag}'", 60, 20
            )
        if m.queue == REPLY_TO:
            self._consume_reply_to(m, tag)
            return
        queue = self._queue_name(m.queue)
        self._check("read", "queue", queue)
        priority = consumer_priority(self.vhost, queue, m.arguments or {})
        self.consumers[tag] = ConsumerInfo(queue, bool(m.no_ack))
        self._before_consume_ok[tag] = []
        command = c.Consume(
            self.vhost,
            queue,
            self.owner,
            tag,
            bool(m.no_ack),
            bool(m.exclusive),
            self.prefetch,
            priority,
            self.conn.id,
            self.global_prefetch,
            self.deliveries_wanted,
        )

        def done(result: Any, error: BrokerError | None) -> None:
            early = self._before_consume_ok.pop(tag, [])
            if error is not None:
                self.consumers.pop(tag, None)
                if not self.closing:
                    self.conn.core_error(self.number, error, m)
                return
            if not m.nowait:
                self.send(spec.Basic.ConsumeOk(consumer_tag=tag))
            for effect in early:
                self.deliver(effect)

        # Consumers are not durable: consume-ok need not wait for the disk.
        self.gateway.submit(command, done, durable=False)

    def _consume_reply_to(self, m: spec.Basic.Consume, tag: str) -> None:
        if not m.no_ack:
            raise AMQPError(406, "reply consumer cannot acknowledge")
        if self.reply_to_key is not None:
            raise AMQPError(406, "reply consumer already set")
        self.reply_to_key = self.gateway.register_reply_to(self.conn.id, self.number, tag)
        self.consumers[tag] = ConsumerInfo(REPLY_TO, True, self.reply_to_key)
        if not m.nowait:
            self.send(spec.Basic.ConsumeOk(consumer_tag=tag))

    def _on_cancel(self, m: spec.Basic.Cancel) -> None:
        tag = m.consumer_tag or ""
        info = self.consumers.get(tag)
        if info is not None and info.reply_to_key is not None:
            self.gateway.unregister_reply_to(info.reply_to_key)
            self.reply_to_key = None
            del self.consumers[tag]
            if not m.nowait:
                self.send(spec.Basic.CancelOk(consumer_tag=tag))
            return

        def reply(_: Any) -> Frame | None:
            self.consumers.pop(tag, None)
            return None if m.nowait else spec.Basic.CancelOk(consumer_tag=tag)

        self._call(m, c.Cancel(self.owner, tag), reply, durable=False)

    def _on_get(self, m: spec.Basic.Get) -> None:
        queue = self._queue_name(m.queue)
        self._check("read", "queue", queue)

        def reply(result: GetResult) -> Frame | None:
            msg = result.message
            if msg is None:
                return spec.Basic.GetEmpty()
            self.next_tag += 1
            self.traffic.delivered += 1
            if not m.no_ack:
                self.unacked[self.next_tag] = (self.vhost, queue, msg.seq)
            frame = _frame(
                spec.Basic.GetOk,
                delivery_tag=self.next_tag,
                redelivered=result.redelivered,
                exchange=msg.exchange,
                routing_key=msg.routing_key,
                message_count=result.message_count,
            )
            properties = msg.properties
            if msg.returns:
                headers = dict(properties.get("headers") or {})
                headers["x-delivery-count"] = msg.returns
                properties = dict(properties, headers=headers)
            self.conn.write(
                codec.method_frame(self.number, frame)
                + codec.content_frames(
                    self.number, codec.properties_bytes(properties), msg.body, self.conn.frame_max
                )
            )
            return None

        get = c.Get(self.vhost, queue, self.owner, bool(m.no_ack), self.conn.id)
        self._call(m, get, reply, durable=False)

    def _on_recover(self, m: spec.Basic.Recover | spec.Basic.RecoverAsync) -> None:
        if not m.requeue:
            raise ConnectionError_(540, "NOT_IMPLEMENTED - requeue=false", 60, 110)
        self.unacked.clear()
        ok = isinstance(m, spec.Basic.Recover)
        self._call(m, c.Recover(self.owner), lambda _: spec.Basic.RecoverOk() if ok else None)

    # -- confirms and transactions -------------------------------------------------------

    def _on_confirm_select(self, m: spec.Confirm.Select) -> None:
        if self.tx:
            raise AMQPError(406, "cannot switch from tx to confirm mode")
        self.confirm = True
        if not m.nowait:
            self.send(spec.Confirm.SelectOk())

    def _on_tx_select(self, m: spec.Tx.Select) -> None:
        if self.confirm:
            raise AMQPError(406, "cannot switch from confirm to tx mode")
        self.tx = True
        self.send(spec.Tx.SelectOk())

    def _on_tx_commit(self, m: spec.Tx.Commit) -> None:
        if not self.tx:
            raise AMQPError(406, "channel is not transactional")
        commands, self.tx_commands = self.tx_commands, []
        self.tx_settled = {}
        if not commands:
            self.gateway.after(lambda: self.send(spec.Tx.CommitOk()))
            return

        def done(results: list[Any] | None, error: BrokerError | None) -> None:
            if self.closing:
                return
            if error is not None:
                self.conn.core_error(self.number, error, m)
                return
            assert results is not None
            for command, result in zip(commands, results, strict=True):
                if isinstance(command, c.Publish) and command.mandatory and not result.routed:
                    self._basic_return(312, "NO_ROUTE", command)
            self.send(spec.Tx.CommitOk())

        # All of the transaction or none of it (a publish to a missing exchange fails it).
        self.gateway.submit(c.Batch(list(commands)), done)

    def _on_tx_rollback(self, m: spec.Tx.Rollback) -> None:
        if not self.tx:
            raise AMQPError(406, "channel is not transactional")
        self.tx_commands = []
        if self.tx_settled:
            self.unacked = dict(sorted({**self.unacked, **self.tx_settled}.items()))
            self.tx_settled = {}
        self.send(spec.Tx.RollbackOk())


def _frame(cls: type[Frame], **values: Any) -> Frame:
    """Build an outgoing frame, skipping pamqp's name validation (RabbitMQ allows any UTF-8)."""
    try:
        return cls(**values)
    except ValueError:
        return _unvalidated(cls)(**values)


_UNVALIDATED: dict[str, type[Frame]] = {}


def _unvalidated(cls: type[Frame]) -> type[Frame]:
    """`cls` without its `validate`, which pamqp runs when marshalling too."""
    made = _UNVALIDATED.get(cls.name)
    if made is None:
        made = _UNVALIDATED[cls.name] = type(cls.__name__, (cls,), {"validate": lambda _: None})
    return made


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


#: Method handlers by method class: plain functions, not bound methods, so a channel holds
#: no reference to itself and is freed by reference counting once its connection drops it.
_HANDLERS: dict[type, Callable[[Channel, Any], None]] = {
    spec.Channel.Close: Channel._on_close,
    spec.Channel.CloseOk: Channel._on_close_ok,
    spec.Channel.Flow: Channel._on_flow,
    spec.Channel.FlowOk: Channel._on_flow_ok,
    spec.Exchange.Declare: Channel._on_exchange_declare,
    spec.Exchange.Delete: Channel._on_exchange_delete,
    spec.Exchange.Bind: Channel._on_exchange_bind,
    spec.Exchange.Unbind: Channel._on_exchange_unbind,
    spec.Queue.Declare: Channel._on_queue_declare,
    spec.Queue.Bind: Channel._on_queue_bind,
    spec.Queue.Unbind: Channel._on_queue_unbind,
    spec.Queue.Purge: Channel._on_queue_purge,
    spec.Queue.Delete: Channel._on_queue_delete,
    spec.Basic.Qos: Channel._on_qos,
    spec.Basic.Consume: Channel._on_consume,
    spec.Basic.Cancel: Channel._on_cancel,
    spec.Basic.Get: Channel._on_get,
    spec.Basic.Ack: Channel._on_ack,
    spec.Basic.Reject: Channel._on_reject,
    spec.Basic.Nack: Channel._on_nack,
    spec.Basic.Recover: Channel._on_recover,
    spec.Basic.RecoverAsync: Channel._on_recover,
    spec.Confirm.Select: Channel._on_confirm_select,
    spec.Tx.Select: Channel._on_tx_select,
    spec.Tx.Commit: Channel._on_tx_commit,
    spec.Tx.Rollback: Channel._on_tx_rollback,
}
