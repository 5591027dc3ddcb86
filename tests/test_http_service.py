"""The CMQ service without HTTP or disk: requests in, reply dicts out, through the node's
gateway and committer over a disk in memory."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from broker.config import Config
from broker.core import commands as c
from broker.core.state import StateMachine
from broker.protocols.http import queues, signature, topics
from broker.protocols.http.service import CmqService
from tests.memory_gateway import memory_gateway

HOST = "localhost:15680"


class NoPushers:
    def start(self, vhost: str, topic: str, subscription: str) -> None: ...

    def stop(self, vhost: str, topic: str, subscription: str) -> None: ...

    def start_all(self) -> None: ...

    async def close(self) -> None: ...


class FakeNode:
    """The CMQ service on the node's gateway and committer, with a disk in memory."""

    def __init__(self) -> None:
        self.config = Config()
        self.gateway, self.commit = memory_gateway(
            auto=True, users=False, clock=lambda: int(time.time() * 1000)
        )
        self.commit.submit(c.AddAccessKey("AKID", "key", "/"))
        self.commit.run()
        self.service = CmqService(
            self.gateway,
            self.config,
            {**queues.ACTIONS, **topics.ACTIONS},
            lambda svc: NoPushers(),
        )
        self.gateway.queue_watchers.append(self.service.waiters.notify)

    @property
    def state(self) -> StateMachine:
        return self.commit.state

    async def request(self, action: str, method: str = "POST", **params: Any) -> dict[str, Any]:
        values = {
            "Action": action,
            "SecretId": "AKID",
            "Timestamp": str(int(time.time())),
            "Nonce": str(time.monotonic_ns()),
            **{k: str(v) for k, v in params.items()},
        }
        text = signature.string_to_sign(method, HOST, "/v2/index.php", values)
        values["Signature"] = signature.sign("key", text)
        body = urllib.parse.urlencode(values)
        if method == "GET":
            return await self.service.handle("GET", HOST, "/v2/index.php", body, b"")
        return await self.service.handle(method, HOST, "/v2/index.php", "", body.encode())


def run(test: Callable[[FakeNode], Any]) -> None:
    async def main() -> None:
        await test(FakeNode())

    asyncio.run(main())


def test_send_receive_delete_and_request_ids() -> None:
    async def scenario(node: FakeNode) -> None:
        assert (await node.request("CreateQueue", queueName="q"))["queueId"] == "queue-1"
        sent = await node.request("SendMessage", queueName="q", msgBody="hi", clientRequestId="c1")
        assert sent["code"] == 0 and sent["clientRequestId"] == "c1"
        got = await node.request("ReceiveMessage", method="GET", queueName="q")
        assert (got["msgBody"], got["msgId"], got["dequeueCount"]) == ("hi", sent["msgId"], 1)
        assert got["requestId"] != sent["requestId"]
        assert (
            await node.request("DeleteMessage", queueName="q", receiptHandle=got["receiptHandle"])
        )["code"] == 0
        empty = await node.request("ReceiveMessage", queueName="q", pollingWaitSeconds=0)
        assert (empty["code"], empty["message"]) == (7000, "no message")

    run(scenario)


def test_long_poll_wakes_on_messages_available() -> None:
    async def scenario(node: FakeNode) -> None:
        await node.request("CreateQueue", queueName="q")
        loop = asyncio.get_running_loop()
        start = loop.time()
        waiting = asyncio.create_task(
            node.request("BatchReceiveMessage", queueName="q", numOfMsg=2, pollingWaitSeconds=10)
        )
        for _ in range(20):  # loop turns enough to write and apply what is pending
            await asyncio.sleep(0)
        assert not waiting.done()
        await node.request("SendMessage", queueName="q", msgBody="now")
        got = await asyncio.wait_for(waiting, 2)
        assert [m["msgBody"] for m in got["msgInfoList"]] == ["now"]
        assert loop.time() - start < 1

    run(scenario)


def test_batch_delete_reports_each_failure() -> None:
    async def scenario(node: FakeNode) -> None:
        await node.request("CreateQueue", queueName="q")
        await node.request(
            "BatchSendMessage", queueName="q", **{"msgBody.1": "a", "msgBody.2": "b"}
        )
        got = (await node.request("BatchReceiveMessage", queueName="q", numOfMsg=2))["msgInfoList"]
        handles = {f"receiptHandle.{i}": m["receiptHandle"] for i, m in enumerate(got, 1)}
        handles["receiptHandle.3"] = "99.1"
        reply = await node.request("BatchDeleteMessage", queueName="q", **handles)
        assert reply["code"] == 6010
        assert [(e["code"], e["receiptHandle"]) for e in reply["errorList"]] == [(4430, "99.1")]
        assert node.state.queue("/", "q").messages == {}

    run(scenario)


def test_errors_never_escape() -> None:
    async def scenario(node: FakeNode) -> None:
        assert (await node.request("NoSuchThing"))["message"].startswith("(10280)")
        assert (await node.request("ListQueue", method="DELETE"))["code"] == 4000
        unsigned = await node.service.handle("POST", HOST, "/v2/index.php", "", b"Action=ListQueue")
        assert unsigned["code"] == 4100

        async def broken(svc: CmqService, req: Any) -> dict[str, Any]:
            raise RuntimeError("bug")

        node.service.actions["listqueue"] = broken
        assert (await node.request("ListQueue"))["code"] == 6000

    run(scenario)


def test_topic_publish_routes_through_the_core() -> None:
    async def scenario(node: FakeNode) -> None:
        await node.request("CreateQueue", queueName="q")
        await node.request("CreateTopic", topicName="t", filterType=1)
        sub = await node.request(
            "Subscribe",
            topicName="t",
            subscriptionName="s",
            protocol="queue",
            endpoint="q",
            **{"filterTag.1": "red"},
        )
        assert sub["code"] == 0
        await node.request("PublishMessage", topicName="t", msgBody="blue", **{"msgTag.1": "blue"})
        await node.request("PublishMessage", topicName="t", msgBody="red", **{"msgTag.1": "red"})
        got = await node.request("BatchReceiveMessage", queueName="q", numOfMsg=16)
        assert [m["msgBody"] for m in got["msgInfoList"]] == ["red"]
        await node.request("DeleteTopic", topicName="t")
        assert node.state.vhosts["/"].bindings.get("t") is None

    run(scenario)
