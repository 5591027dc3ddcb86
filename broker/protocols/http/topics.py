"""CMQ topics and subscriptions: a topic is a topic exchange of the key's vhost.

A subscription is a set of bindings from that exchange (see filters): to its endpoint queue
(protocol `queue`), or to an internal durable queue that the node's pusher delivers from
(protocol `http`), so pending pushes and their retry times survive a restart. Topic and
subscription settings are adapter records in the vhost; AMQP clients see plain exchanges.
"""

from __future__ import annotations

import asyncio
from typing import Any

from broker.core import commands as c
from broker.protocols.http import errors, filters, retry
from broker.protocols.http.bodies import sent_bodies
from broker.protocols.http.errors import CmqError
from broker.protocols.http.params import page
from broker.protocols.http.service import Action, CmqService, Request

TOPICS = ("cmq", "topics")
SUBSCRIPTIONS = ("cmq", "subscriptions")
#: topic messages wait this long for their HTTP pushes (CMQ's default topic retention)
TOPIC_RETENTION_S = 86_400
MAX_BATCH = 16
MAX_BATCH_BYTES = 65_536
MAX_SUBSCRIPTIONS = 100
JSON = "JSON"
SIMPLIFIED = "SIMPLIFIED"
#: binding argument naming the subscription, so equal bindings of two subscriptions differ
SUBSCRIPTION_ARGUMENT = "x-cmq-subscription"
TAGS_HEADER = "x-cmq-message-tag"


def subscriptions_group(topic: str) -> tuple[str, ...]:
    return (*SUBSCRIPTIONS, topic)


def push_queue_name(topic: str, subscription: str) -> str:
    """The internal queue of an HTTP subscription (dots keep it out of CMQ's name space)."""
    return f"cmq-push.{topic}.{subscription}"


def topic_record(svc: CmqService, vhost: str, name: str) -> dict[str, Any]:
    """The topic's settings; topic exchanges made over AMQP get routing-key defaults."""
    ex = svc.vhost(vhost).exchanges.get(name)
    if ex is None or ex.type != "topic":
        raise CmqError(errors.NOT_FOUND, f"topic {name} does not exist")
    record = svc.records(vhost, TOPICS).get(name)
    if record is None:
        return {
            "id": f"topic-{name}",
            "filterType": filters.ROUTING_KEY_FILTER,
            "maxMsgSize": 65_536,
            "createTime": 0,
            "lastModifyTime": 0,
        }
    return dict(record)


def subscription_record(svc: CmqService, vhost: str, topic: str, name: str) -> dict[str, Any]:
    record = svc.records(vhost, subscriptions_group(topic)).get(name)
    if record is None:
        raise CmqError(errors.NOT_FOUND, f"subscription {name} of topic {topic} does not exist")
    return dict(record)


def is_bound(svc: CmqService, vhost: str, topic: str, name: str, sub: dict[str, Any]) -> bool:
    """Whether the subscription's bindings are all in place. They are not once its queue was
    deleted outside CMQ (over AMQP): it then delivers nothing, and says so."""
    args = {SUBSCRIPTION_ARGUMENT: name}
    state = svc.state
    return all(
        state.has_binding(vhost, topic, sub["queue"], pattern, args) for pattern in sub["patterns"]
    )


def queue_subscriptions(svc: CmqService, vhost: str, queue: str) -> list[tuple[str, str]]:
    """(topic, subscription) of every protocol `queue` subscription pushing into `queue`."""
    found = []
    for (owner, group), subs in sorted(svc.state.records.items()):
        if owner != vhost or group[:-1] != SUBSCRIPTIONS:
            continue
        for name, sub in sorted(subs.items()):
            if sub["protocol"] == "queue" and sub["queue"] == queue:
                found.append((group[-1], name))
    return found


def pending_pushes(svc: CmqService, vhost: str, sub: dict[str, Any]) -> int:
    """Messages an HTTP subscription has yet to deliver."""
    if sub["protocol"] != "http":
        return 0
    q = svc.vhost(vhost).queues.get(sub["queue"])
    return 0 if q is None else len(q.messages)


async def _all(svc: CmqService, commands: list[c.Command]) -> None:
    """Apply `commands` in order, in one group commit, and wait until they are durable."""
    await asyncio.gather(*[svc.call(command) for command in commands])


# -- topics --------------------------------------------------------------------------------


async def create_topic(svc: CmqService, req: Request) -> dict[str, Any]:
    name = req.params.name("topicName")
    vh = svc.vhost(req.vhost)
    filter_type = req.params.integer(
        "filterType", filters.TAG_FILTER, filters.ROUTING_KEY_FILTER, filters.TAG_FILTER
    )
    max_size = req.params.integer("maxMsgSize", 1024, 1_048_576, 65_536)
    if name in vh.exchanges:
        raise CmqError(errors.EXISTS, f"topic {name} already exists")
    if len(svc.records(req.vhost, TOPICS)) >= svc.config.http_max_topics:
        raise CmqError(errors.TOO_MANY, f"at most {svc.config.http_max_topics} topics")
    now_s = svc.now_ms() // 1000
    record = {
        "id": f"topic-{svc.new_message_id()}",
        "filterType": filter_type,
        "maxMsgSize": max_size,
        "createTime": now_s,
        "lastModifyTime": now_s,
    }
    # Subscriptions left by a topic exchange deleted over AMQP go now, push queues included.
    commands = _drop_subscriptions(svc, req.vhost, name)
    commands += [
        c.DeclareExchange(req.vhost, name, "topic"),
        c.PutRecord(req.vhost, TOPICS, name, record),
    ]
    await _all(svc, commands)
    return {"topicId": record["id"]}


def _drop_subscriptions(svc: CmqService, vhost: str, topic: str) -> list[c.Command]:
    """Stop the topic's pushers; the commands removing its subscriptions and push queues."""
    commands: list[c.Command] = []
    for sub_name, sub in svc.records(vhost, subscriptions_group(topic)).items():
        if sub["protocol"] == "http":
            svc.pushers.stop(vhost, topic, sub_name)
            commands.append(c.DeleteQueue(vhost, sub["queue"]))
    commands.append(c.DropRecords(vhost, subscriptions_group(topic)))
    return commands


async def delete_topic(svc: CmqService, req: Request) -> dict[str, Any]:
    name = req.params.name("topicName")
    topic_record(svc, req.vhost, name)
    commands = _drop_subscriptions(svc, req.vhost, name)
    commands += [c.DeleteExchange(req.vhost, name), c.PutRecord(req.vhost, TOPICS, name, None)]
    await _all(svc, commands)
    return {}


async def list_topic(svc: CmqService, req: Request) -> dict[str, Any]:
    vh = svc.vhost(req.vhost)
    topics = [name for name, ex in vh.exchanges.items() if ex.type == "topic"]
    total, names = page(topics, req.params)
    return {
        "totalCount": total,
        "topicList": [
            {"topicId": topic_record(svc, req.vhost, n)["id"], "topicName": n} for n in names
        ],
    }


async def get_topic_attributes(svc: CmqService, req: Request) -> dict[str, Any]:
    name = req.params.name("topicName")
    record = topic_record(svc, req.vhost, name)
    subs = svc.records(req.vhost, subscriptions_group(name)).values()
    return {
        "topicName": name,
        "msgCount": sum(pending_pushes(svc, req.vhost, sub) for sub in subs),
        "maxMsgSize": record["maxMsgSize"],
        "msgRetentionSeconds": TOPIC_RETENTION_S,
        "createTime": record["createTime"],
        "lastModifyTime": record["lastModifyTime"],
        "filterType": record["filterType"],
    }


async def set_topic_attributes(svc: CmqService, req: Request) -> dict[str, Any]:
    name = req.params.name("topicName")
    record = topic_record(svc, req.vhost, name)
    max_size = req.params.optional_integer("maxMsgSize", 1024, 1_048_576)
    if max_size is not None:
        record.update(maxMsgSize=max_size, lastModifyTime=svc.now_ms() // 1000)
        await svc.call(c.PutRecord(req.vhost, TOPICS, name, record))
    return {}


def _publication(
    svc: CmqService, req: Request, texts: list[str]
) -> tuple[str, list[bytes], str, dict[str, Any]]:
    """(topic, bodies, routing key, headers) of a PublishMessage or BatchPublishMessage."""
    name = req.params.name("topicName")
    record = topic_record(svc, req.vhost, name)
    bodies = sent_bodies(req.params, texts)
    for body in bodies:
        if not body:
            raise errors.out_of_range("msgBody", "at least 1 byte")
        if len(body) > record["maxMsgSize"]:
            raise CmqError(errors.TOO_LARGE, f"message is larger than {record['maxMsgSize']} B")
    tags = filters.tag_param(req.params, "msgTag")
    routing_key = filters.check_routing_key(
        "routingKey", req.params.optional_text("routingKey") or ""
    )
    if record["filterType"] == filters.TAG_FILTER:
        routing_key = filters.tags_routing_key(tags)
    return name, bodies, routing_key, {TAGS_HEADER: tags} if tags else {}


async def _publish(
    svc: CmqService,
    req: Request,
    topic: str,
    bodies: list[bytes],
    key: str,
    headers: dict[str, Any],
) -> list[str]:
    svc.refuse_if_blocked()
    ids = [svc.new_message_id() for _ in bodies]
    props = [{"delivery_mode": 2, "message_id": mid} for mid in ids]
    if headers:
        for p in props:
            p["headers"] = headers
    commands: list[c.Command] = []
    for p, body in zip(props, bodies, strict=True):
        publish = c.Publish(req.vhost, topic, key, p, body)
        svc.gateway.note_publisher(publish, req.publisher)
        commands.append(publish)
    await _all(svc, commands)
    svc.gateway.traffic["http"].received += len(ids)
    return ids


async def publish_message(svc: CmqService, req: Request) -> dict[str, Any]:
    topic, bodies, key, headers = _publication(svc, req, [req.params.text("msgBody")])
    return {"msgId": (await _publish(svc, req, topic, bodies, key, headers))[0]}


async def batch_publish_message(svc: CmqService, req: Request) -> dict[str, Any]:
    texts = req.params.array("msgBody", MAX_BATCH, required=True)
    topic, bodies, key, headers = _publication(svc, req, texts)
    if sum(len(b) for b in bodies) > MAX_BATCH_BYTES:
        raise CmqError(errors.TOO_LARGE, f"a batch may carry at most {MAX_BATCH_BYTES} bytes")
    ids = await _publish(svc, req, topic, bodies, key, headers)
    return {"msgList": [{"msgId": mid} for mid in ids]}


# -- subscriptions -------------------------------------------------------------------------


def _patterns(filter_type: int, tags: list[str], keys: list[str]) -> list[str]:
    if filter_type == filters.TAG_FILTER:
        if keys:
            raise errors.out_of_range("bindingKey", "only for topics with filterType 2")
        return filters.tag_patterns(tags)
    if tags:
        raise errors.out_of_range("filterTag", "only for topics with filterType 1")
    return filters.key_patterns(keys)


def _rebind(
    vhost: str, topic: str, sub: str, queue: str, old: list[str], new: list[str]
) -> list[c.Command]:
    """Bind/unbind commands turning the subscription's bindings from `old` into `new`."""
    args = {SUBSCRIPTION_ARGUMENT: sub}
    commands: list[c.Command] = [
        c.Unbind(vhost, topic, queue, True, p, args) for p in old if p not in new
    ]
    commands += [c.Bind(vhost, topic, queue, True, p, args) for p in new if p not in old]
    return commands


def _strategy(req: Request, default: str) -> str:
    value = req.params.optional_text("notifyStrategy") or default
    if value not in retry.STRATEGIES:
        raise errors.out_of_range("notifyStrategy", " or ".join(retry.STRATEGIES))
    return value


def _format(req: Request, default: str) -> str:
    """The subscription's notifyContentFormat. A queue endpoint gets the bare body either way
    (Tencent's Java SDK subscribes queues with its default JSON; the service accepts it)."""
    value = req.params.optional_text("notifyContentFormat") or default
    if value not in (JSON, SIMPLIFIED):
        raise errors.out_of_range("notifyContentFormat", f"{JSON} or {SIMPLIFIED}")
    return value


async def subscribe(svc: CmqService, req: Request) -> dict[str, Any]:
    topic = req.params.name("topicName")
    name = req.params.name("subscriptionName")
    record = topic_record(svc, req.vhost, topic)
    protocol = req.params.text("protocol")
    if protocol not in ("http", "queue"):
        raise errors.out_of_range("protocol", "http or queue")
    endpoint = req.params.text("endpoint", max_length=1024)
    strategy = _strategy(req, retry.EXPONENTIAL)
    content_format = _format(req, SIMPLIFIED if protocol == "queue" else JSON)
    tags = filters.tag_param(req.params, "filterTag")
    keys = filters.binding_key_param(req.params)
    patterns = _patterns(record["filterType"], tags, keys)
    vh = svc.vhost(req.vhost)
    existing = svc.records(req.vhost, subscriptions_group(topic))
    if name in existing:
        raise CmqError(errors.EXISTS, f"subscription {name} already exists")
    if len(existing) >= MAX_SUBSCRIPTIONS:
        raise CmqError(errors.TOO_MANY, f"at most {MAX_SUBSCRIPTIONS} subscriptions per topic")
    commands: list[c.Command] = []
    if protocol == "http":
        if not endpoint.startswith(("http://", "https://")):
            raise errors.out_of_range("endpoint", "a URL starting with http:// or https://")
        queue = push_queue_name(topic, name)
        ttl = {"x-message-ttl": TOPIC_RETENTION_S * 1000}
        commands.append(c.DeclareQueue(req.vhost, queue, durable=True, arguments=ttl))
    else:
        if endpoint not in vh.queues:
            raise CmqError(errors.NOT_FOUND, f"queue {endpoint} does not exist")
        queue = endpoint
    now_s = svc.now_ms() // 1000
    sub = {
        "id": f"subscription-{svc.new_message_id()}",
        "protocol": protocol,
        "endpoint": endpoint,
        "queue": queue,
        "notifyStrategy": strategy,
        "notifyContentFormat": content_format,
        "filterTags": tags,
        "bindingKeys": keys,
        "patterns": patterns,
        "createTime": now_s,
        "lastModifyTime": now_s,
    }
    commands += _rebind(req.vhost, topic, name, queue, [], patterns)
    commands.append(c.PutRecord(req.vhost, subscriptions_group(topic), name, sub))
    await _all(svc, commands)
    if protocol == "http":
        svc.pushers.start(req.vhost, topic, name)
    return {"subscriptionId": sub["id"]}


async def unsubscribe(svc: CmqService, req: Request) -> dict[str, Any]:
    topic = req.params.name("topicName")
    name = req.params.name("subscriptionName")
    sub = subscription_record(svc, req.vhost, topic, name)
    vh = svc.vhost(req.vhost)
    commands: list[c.Command] = []
    if sub["protocol"] == "http":
        svc.pushers.stop(req.vhost, topic, name)
        commands.append(c.DeleteQueue(req.vhost, sub["queue"]))
    elif sub["queue"] in vh.queues and topic in vh.exchanges:
        commands += _rebind(req.vhost, topic, name, sub["queue"], sub["patterns"], [])
    commands.append(c.PutRecord(req.vhost, subscriptions_group(topic), name, None))
    await _all(svc, commands)
    return {}


async def list_subscription_by_topic(svc: CmqService, req: Request) -> dict[str, Any]:
    topic = req.params.name("topicName")
    topic_record(svc, req.vhost, topic)
    subs = svc.records(req.vhost, subscriptions_group(topic))
    total, names = page(subs, req.params)
    return {
        "totalCount": total,
        "subscriptionList": [
            {
                "subscriptionId": subs[n]["id"],
                "subscriptionName": n,
                "protocol": subs[n]["protocol"],
                "endpoint": subs[n]["endpoint"],
                "bound": is_bound(svc, req.vhost, topic, n, subs[n]),
            }
            for n in names
        ],
    }


async def get_subscription_attributes(svc: CmqService, req: Request) -> dict[str, Any]:
    topic = req.params.name("topicName")
    name = req.params.name("subscriptionName")
    sub = subscription_record(svc, req.vhost, topic, name)
    return {
        "topicOwner": req.vhost,
        "endpoint": sub["endpoint"],
        "protocol": sub["protocol"],
        # the official Python SDK reads this misspelling
        "protocal": sub["protocol"],
        "notifyStrategy": sub["notifyStrategy"],
        "notifyContentFormat": sub["notifyContentFormat"],
        "createTime": sub["createTime"],
        "lastModifyTime": sub["lastModifyTime"],
        "msgCount": pending_pushes(svc, req.vhost, sub),
        "filterTags": sub["filterTags"],
        "bindingKey": sub["bindingKeys"],
        "bound": is_bound(svc, req.vhost, topic, name, sub),
    }


async def _update_subscription(
    svc: CmqService, req: Request, tags: list[str] | None, keys: list[str] | None
) -> None:
    """Apply new settings (and filters, unless None) to a subscription."""
    topic = req.params.name("topicName")
    name = req.params.name("subscriptionName")
    sub = subscription_record(svc, req.vhost, topic, name)
    record = topic_record(svc, req.vhost, topic)
    sub["notifyStrategy"] = _strategy(req, sub["notifyStrategy"])
    sub["notifyContentFormat"] = _format(req, sub["notifyContentFormat"])
    tags = sub["filterTags"] if tags is None else tags
    keys = sub["bindingKeys"] if keys is None else keys
    patterns = _patterns(record["filterType"], tags, keys)
    commands: list[c.Command] = []
    if sub["queue"] in svc.vhost(req.vhost).queues:
        commands = _rebind(req.vhost, topic, name, sub["queue"], sub["patterns"], patterns)
    sub.update(
        filterTags=tags, bindingKeys=keys, patterns=patterns, lastModifyTime=svc.now_ms() // 1000
    )
    commands.append(c.PutRecord(req.vhost, subscriptions_group(topic), name, sub))
    await _all(svc, commands)


async def set_subscription_attributes(svc: CmqService, req: Request) -> dict[str, Any]:
    tags = filters.tag_param(req.params, "filterTag") if req.params.has_array("filterTag") else None
    keys = filters.binding_key_param(req.params) if req.params.has_array("bindingKey") else None
    await _update_subscription(svc, req, tags, keys)
    return {}


async def clear_subscription_filter_tags(svc: CmqService, req: Request) -> dict[str, Any]:
    await _update_subscription(svc, req, [], None)
    return {}


ACTIONS: dict[str, Action] = {
    "CreateTopic": create_topic,
    "DeleteTopic": delete_topic,
    "ListTopic": list_topic,
    "GetTopicAttributes": get_topic_attributes,
    "SetTopicAttributes": set_topic_attributes,
    "PublishMessage": publish_message,
    "BatchPublishMessage": batch_publish_message,
    "Subscribe": subscribe,
    "Unsubscribe": unsubscribe,
    "ListSubscriptionByTopic": list_subscription_by_topic,
    "GetSubscriptionAttributes": get_subscription_attributes,
    "SetSubscriptionAttributes": set_subscription_attributes,
    "ClearSubscriptionFilterTags": clear_subscription_filter_tags,
}
