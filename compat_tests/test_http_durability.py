"""What the CMQ API stored survives kill -9: messages, in-flight state, subscriptions and
pending HTTP pushes (with their retry times), access keys."""

from __future__ import annotations

import pytest
from cmq.queue import Message, QueueMeta
from cmq.subscription import SubscriptionMeta
from cmq.topic import Message as TopicMessage
from cmq.topic import TopicMeta

from compat_tests.cmq_helpers import CmqBroker, PushReceiver, ok, uid, write_config

pytestmark = pytest.mark.own_broker


@pytest.fixture
def cmq(broker_factory, tmp_path):
    return CmqBroker.attach(broker_factory("--config", write_config(tmp_path)))


def test_messages_and_in_flight_state_survive_kill9(cmq):
    account = cmq.account()
    q = account.get_queue(uid())
    meta = QueueMeta()
    meta.visibilityTimeout = 60
    meta.rewindSeconds = 600
    q.create(meta)
    q.batch_send_message([Message(f"m{i}") for i in range(5)])
    q.send_message(Message("delayed"), delayTime=600)
    in_flight = q.receive_message(0)
    deleted = q.receive_message(0)
    q.delete_message(deleted.receiptHandle)

    cmq.process.restart(kill=True)

    account = cmq.account()  # the key survived too
    q = account.get_queue(q.queue_name)
    attrs = q.get_attributes()
    assert (attrs.activeMsgNum, attrs.inactiveMsgNum, attrs.delayMsgNum) == (3, 1, 1)
    assert (attrs.visibilityTimeout, attrs.rewindSeconds, attrs.rewindmsgNum) == (60, 600, 1)
    q.delete_message(in_flight.receiptHandle)  # the handle is still the latest, still valid
    assert [m.msgBody for m in q.batch_receive_message(16, 0)] == ["m2", "m3", "m4"]


def test_subscriptions_and_pending_pushes_survive_kill9(cmq):
    account = cmq.account()
    topic = account.get_topic(uid("t"))
    topic.create(TopicMeta())
    with PushReceiver() as receiver:
        receiver.fail("/hook", 1000)
        meta = SubscriptionMeta()
        meta.Endpoint, meta.Protocal = receiver.url("/hook"), "http"
        account.get_subscription(topic.topicName, "hook").create(meta)
        q = account.get_queue(uid())
        q.create(QueueMeta())
        meta = SubscriptionMeta()
        meta.Endpoint, meta.Protocal, meta.NotifyContentFormat = q.queue_name, "queue", "SIMPLIFIED"
        account.get_subscription(topic.topicName, "to-queue").create(meta)
        sent = topic.publish_message(TopicMessage("survivor"))
        receiver.get()  # the first push failed: the message now waits for its retry

        cmq.process.restart(kill=True)
        receiver.fail("/hook", 0)
        account = cmq.account()
        push = receiver.get()  # the pusher resumes from disk
        assert push.body and push.headers["x-cmq-message-id"] == sent.msgId
        total, subs, _ = account.get_topic(topic.topicName).list_subscription()
        assert sorted(s["subscriptionName"] for s in subs) == ["hook", "to-queue"]
        account.get_topic(topic.topicName).publish_message(TopicMessage("after restart"))
        assert receiver.get().headers["x-cmq-message-id"]
    got = sorted(m.msgBody for m in account.get_queue(q.queue_name).batch_receive_message(16, 0))
    assert got == ["after restart", "survivor"]


def test_deleted_keys_stay_deleted(cmq):
    extra = cmq.process.cli("keys", "create", "--vhost", "/").stdout
    secret_id = extra.split("SecretId: ")[1].split()[0]
    cmq.process.cli("keys", "delete", secret_id)
    cmq.process.restart(kill=True)
    listed = cmq.process.cli("keys", "list").stdout
    assert secret_id not in listed and cmq.secret_id in listed
    ok(cmq.client().call("ListQueue"))
