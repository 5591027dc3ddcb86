"""Access keys from the admin CLI: one vhost each, nothing crosses the tenant boundary."""

from __future__ import annotations

import pytest
from cmq.cmq_exception import CMQServerException
from cmq.queue import Message, QueueMeta

from compat_tests.cmq_helpers import CmqBroker, error, ok, uid, write_config


def create_key(process, vhost: str, *extra: str) -> tuple[str, str]:
    out = process.cli("keys", "create", "--vhost", vhost, *extra).stdout
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    return lines["SecretId"], lines["SecretKey"]


def test_generated_keys_work_and_deleted_keys_do_not(cmq_broker):
    process = cmq_broker.process
    secret_id, secret_key = create_key(process, "/")
    assert secret_id.startswith("AKID") and len(secret_key) >= 32
    assert f"{secret_id}\t/" in process.cli("keys", "list").stdout
    account = cmq_broker.account(secret_id, secret_key)
    q = account.get_queue(uid())
    q.create(QueueMeta())
    process.cli("keys", "delete", secret_id)
    with pytest.raises(CMQServerException) as info:
        q.send_message(Message("x"))
    assert info.value.code == 4100
    assert process.cli("keys", "delete", secret_id, check=False).returncode != 0


def test_given_keys_and_duplicates(cmq_broker):
    process = cmq_broker.process
    secret_id = "AKID" + uid("given").replace("-", "")
    assert create_key(process, "/", "--secret-id", secret_id, "--secret-key", "k1") == (
        secret_id,
        "k1",
    )
    again = process.cli("keys", "create", "--vhost", "/", "--secret-id", secret_id, check=False)
    assert again.returncode != 0 and "already exists" in again.stderr
    missing = process.cli("keys", "create", "--vhost", "no-such-vhost", check=False)
    assert missing.returncode != 0
    ok(cmq_broker.client(secret_id=secret_id, secret_key="k1").call("ListQueue"))


def test_a_key_sees_only_its_vhost(cmq_broker):
    process = cmq_broker.process
    vhost = uid("tenant")
    process.cli("vhosts", "add", vhost)
    secret_id, secret_key = create_key(process, vhost)
    mine = cmq_broker.client()
    theirs = cmq_broker.client(secret_id=secret_id, secret_key=secret_key)
    name = uid()
    ok(mine.call("CreateQueue", queueName=name))
    ok(mine.call("SendMessage", queueName=name, msgBody="private"))
    assert name not in str(ok(theirs.call("ListQueue", searchWord=name)))
    error(theirs.call("ReceiveMessage", queueName=name, pollingWaitSeconds=0), 4440)
    ok(theirs.call("CreateQueue", queueName=name))  # same name, another tenant
    error(theirs.call("ReceiveMessage", queueName=name, pollingWaitSeconds=0), 7000)
    assert ok(mine.call("ReceiveMessage", queueName=name))["msgBody"] == "private"
    process.cli("vhosts", "delete", vhost)  # takes its keys along
    error(theirs.call("ListQueue"), 4100)


@pytest.mark.own_broker
def test_queue_and_topic_count_limits(broker_factory, tmp_path):
    config = write_config(tmp_path, "http_max_queues = 2\nhttp_max_topics = 1\n")
    cmq = CmqBroker.attach(broker_factory("--config", config))
    client = cmq.client()
    ok(client.call("CreateQueue", queueName="one"))
    ok(client.call("CreateQueue", queueName="two"))
    error(client.call("CreateQueue", queueName="three"), 4450)
    ok(client.call("CreateTopic", topicName="t1"))
    error(client.call("CreateTopic", topicName="t2"), 4450)
