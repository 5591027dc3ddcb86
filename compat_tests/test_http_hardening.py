"""The HTTP listener against hostile clients: slow or idle connections are closed on time,
unsigned parameters are never acted on, bad headers are client errors, and a flood of bad
requests leaves a bounded log while a well-behaved client carries on."""

from __future__ import annotations

import urllib.parse

import pytest
from cmq.cmq_exception import CMQServerException
from cmq.queue import QueueMeta
from cmq.topic import Message, TopicMeta

from compat_tests.cmq_helpers import error, ok, uid

# -- finding 2: parameters outside the signed string --------------------------------------


def test_an_added_at_valued_parameter_is_not_acted_on(cmq_broker):
    account, client = cmq_broker.account(), cmq_broker.client()
    topic = account.get_topic(uid("t"))
    meta = TopicMeta()
    meta.filterType = 1
    topic.create(meta)
    queues = {}
    for tag in ("a", "@x"):
        q = account.get_queue(uid())
        q.create(QueueMeta())
        queues[tag] = q
        sub = {"protocol": "queue", "endpoint": q.queue_name, "filterTag.1": tag}
        ok(client.call("Subscribe", topicName=topic.topicName, subscriptionName=uid("s"), **sub))
    # The SDK still works (it signs everything here: no value starts with "@").
    topic.publish_message(Message("for a", ["a"]))
    assert queues["a"].receive_message(0).msgBody == "for a"
    # A signed publish with a parameter added on the way: refused, naming it.
    params = client.signed("PublishMessage", {"topicName": topic.topicName, "msgBody": "m"})
    body = urllib.parse.urlencode({**params, "msgTag.1": "@x"}).encode()
    assert "msgTag.1" in error(client.send(body), 4100)["message"]
    # The SDK's own "@" values (left out of what it signs) are refused too, not dropped.
    with pytest.raises(CMQServerException) as info:
        topic.publish_message(Message("tagged", ["@x"]))
    assert info.value.code == 4100
    for q in queues.values():
        with pytest.raises(CMQServerException) as info:
            q.receive_message(0)
        assert info.value.code == 7000  # nothing reached either subscription
    client.close()
