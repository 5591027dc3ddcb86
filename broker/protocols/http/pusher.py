"""Delivery of HTTP subscriptions: one loop per subscription, pulling from its durable queue.

A message is received (hidden for the push timeout), POSTed to the endpoint, then deleted on a
2xx answer. On failure its visibility is set to the retry delay of the subscription's strategy,
so the retry time is on disk: after a restart the loop finds it when it comes due. Past the
strategy's attempts the message is dropped for that subscriber, as CMQ does: counted with the
node's other drops (`dropped_push_given_up` in `broker status`) and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from typing import Any

import aiohttp

from broker.core import commands as c
from broker.core.errors import BrokerError, ClusterUnavailable, NotFound, StoreFailed
from broker.core.model import Dropped, Received
from broker.protocols.http import retry
from broker.protocols.http.bodies import body_fields
from broker.protocols.http.service import CmqService, message_id
from broker.protocols.http.topics import (
    JSON,
    SUBSCRIPTIONS,
    TAGS_HEADER,
    subscriptions_group,
)

log = logging.getLogger(__name__)

#: seconds between receives while the node's store has failed (a full disk)
STORE_RETRY_S = 1.0

BATCH = 16


class PushManager:
    def __init__(self, svc: CmqService) -> None:
        self.svc = svc
        self._tasks: dict[tuple[str, str, str], asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._rng = random.Random()
        #: pushers run on one node only: a cluster's leader (see set_active)
        self.active = True
        #: push attempts since the node started: that reached their endpoint, that failed
        #: (retried later or, past the strategy's attempts, given up), and of all attempts
        #: those that were retries
        self.counts = {"delivered": 0, "failed": 0, "retries": 0}

    def set_active(self, active: bool) -> None:
        """Run the pushers here (this node leads its cluster), or stop them."""
        self.active = active
        if active:
            self.start_all()
        else:
            for task in self._tasks.values():
                task.cancel()

    def start_all(self) -> None:
        """Start the loops of every stored HTTP subscription (at node start)."""
        if not self.active:
            return
        for (vhost, group), subs in list(self.svc.state.records.items()):
            if group[:-1] != SUBSCRIPTIONS:
                continue
            for name, sub in subs.items():
                if sub["protocol"] == "http":
                    self.start(vhost, group[2], name)

    def start(self, vhost: str, topic: str, subscription: str) -> None:
        key = (vhost, topic, subscription)
        if self.active and key not in self._tasks:
            task = asyncio.get_running_loop().create_task(self._run(*key))
            self._tasks[key] = task
            task.add_done_callback(lambda _: self._forget(key, task))

    def _forget(self, key: tuple[str, str, str], task: asyncio.Task[None]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled() and task.exception() is not None:
            log.error("pusher %s stopped", key, exc_info=task.exception())

    def stop(self, vhost: str, topic: str, subscription: str) -> None:
        task = self._tasks.pop((vhost, topic, subscription), None)
        if task is not None:
            task.cancel()

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()

    # -- one subscription ----------------------------------------------------------------

    def _subscription(self, vhost: str, topic: str, name: str) -> dict[str, Any] | None:
        sub: dict[str, Any] | None = self.svc.records(vhost, subscriptions_group(topic)).get(name)
        return sub

    async def _run(self, vhost: str, topic: str, name: str) -> None:
        svc = self.svc
        # Twice the push timeout: a push in progress is never received a second time, and one
        # cut short by a crash is retried soon after a restart.
        visibility = int(svc.config.http_push_timeout * 2000)
        while not svc.closing:
            sub = self._subscription(vhost, topic, name)
            if sub is None:
                return
            queue = sub["queue"]
            woken = svc.waiters.register(vhost, queue)
            try:
                try:
                    got: list[Received] = await svc.call(c.Receive(vhost, queue, BATCH, visibility))
                except NotFound:
                    log.warning(
                        "subscription %s of topic %s in vhost '%s' stopped pushing to %s: its "
                        "queue %s was deleted outside CMQ (Unsubscribe removes it)",
                        name,
                        topic,
                        vhost,
                        sub["endpoint"],
                        queue,
                    )
                    return
                except ClusterUnavailable:
                    return  # pushing goes on where a leader is (see Node._keep_pushers)
                except StoreFailed:
                    await asyncio.sleep(STORE_RETRY_S)  # a single node's store recovers itself
                    continue
                except BrokerError:  # its vhost is gone
                    return
                if not got:
                    await woken
                    continue
            finally:
                svc.waiters.unregister(vhost, queue, woken)
            await asyncio.gather(*(self._deliver(vhost, topic, name, sub, queue, r) for r in got))

    async def _deliver(
        self,
        vhost: str,
        topic: str,
        name: str,
        sub: dict[str, Any],
        queue: str,
        received: Received,
    ) -> None:
        msg = received.message
        attempt = msg.delivery_count
        mid = message_id(received.qid, msg)
        tags = (msg.properties.get("headers") or {}).get(TAGS_HEADER) or []
        headers = {
            "Content-Type": "text/plain",
            "x-cmq-request-id": self.svc.new_request_id(),
            "x-cmq-message-id": mid,
            "x-cmq-message-tag": ",".join(tags),
        }
        if sub["notifyContentFormat"] == JSON:
            payload = {
                "TopicOwner": vhost,
                "topicName": topic,
                "subscriptionName": name,
                "msgId": mid,
                **body_fields(msg.body),
                "publishTime": msg.enqueued_at // 1000,
            }
            data = json.dumps(payload, ensure_ascii=False).encode()
        else:
            data = msg.body
        strategy = sub["notifyStrategy"]
        command: c.Command
        pushed = await self._post(sub["endpoint"], data, headers)
        self.counts["delivered" if pushed else "failed"] += 1
        if attempt > 1:
            self.counts["retries"] += 1
        if pushed:
            self.svc.gateway.traffic["http"].delivered += 1
            command = c.DeleteByHandle(vhost, queue, received.handle)
        elif attempt >= retry.attempts_allowed(strategy):
            detail = f"pushing to {sub['endpoint']} failed after its last retry"
            self.svc.gateway.dropped(Dropped(vhost, f"{topic}/{name}", "push-given-up", 1, detail))
            command = c.DeleteByHandle(vhost, queue, received.handle)
        else:
            unit = self.svc.config.http_push_retry_unit_ms
            delay = retry.retry_delay_ms(strategy, attempt, unit, self._rng)
            command = c.ChangeVisibility(vhost, queue, received.handle, delay)
        with contextlib.suppress(BrokerError):  # unsubscribed, or the handle ran out meanwhile
            await self.svc.call(command)

    async def _post(self, url: str, data: bytes, headers: dict[str, str]) -> bool:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.svc.config.http_push_timeout)
            )
        try:
            async with self._session.post(url, data=data, headers=headers) as resp:
                await resp.read()
                return 200 <= resp.status < 300
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.debug("push to %s failed: %r", url, exc)
            return False
