"""The management API on a 3-node set: every member serves it; a change made through a
follower is committed through the leader and shows on every member."""

from __future__ import annotations

import pytest

from compat_tests.cluster import Cluster, wait_for

from .management_helpers import Api

pytestmark = [pytest.mark.own_broker, pytest.mark.timeout(120)]


def test_every_member_serves_the_committed_state(cluster: Cluster) -> None:
    leader = cluster.leader()
    follower = cluster.followers(leader)[0]
    apis = {n: Api(node) for n, node in cluster.nodes.items()}
    via = apis[follower]
    assert via.put("/api/queues/%2F/replicated", {"durable": True}) == 201
    status, reply = via.post(
        "/api/exchanges/%2F/amq.default/publish",
        {"routing_key": "replicated", "payload": "one", "payload_encoding": "string"},
    )
    assert (status, reply) == (200, {"routed": True})
    for n, api in apis.items():
        wait_for(
            lambda api=api: (
                api.call("GET", "/api/queues/%2F/replicated")[0] == 200
                and api.get("/api/queues/%2F/replicated")["messages"] == 1
            ),
            what=f"the queue and its message on node {n}",
        )
    nodes = {api.get("/api/nodes")[0]["name"] for api in apis.values()}
    assert len(nodes) == 3
    status, got = apis[leader].post(
        "/api/queues/%2F/replicated/get", {"count": 1, "ackmode": "ack_requeue_false"}
    )
    assert status == 200 and got[0]["payload"] == "one"
    for n, api in apis.items():
        wait_for(
            lambda api=api: api.get("/api/queues/%2F/replicated")["messages"] == 0,
            what=f"the get on node {n}",
        )
