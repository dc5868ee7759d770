"""The local stack's push delivery (``devstack.pubsub_push``) on the real Pub/Sub emulator.

The emulator's own push, under a retry policy, stops redelivering a
subscription for good once two of its messages fail together (measured by
``python -m bench.pubsub_emulator``: 8 messages failing at once were all lost
on 6 subscriptions of 6). The first test is that case; it passes only because
the stack delivers through ``devstack.pubsub_push`` instead.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from devstack.pubsub_push import PushConfigError, PushDispatcher, Route, backoff_s
from devstack.stack import LOCALHOST, emulator_env, pubsub_emulator

pytestmark = pytest.mark.integration

PROJECT = "push-test"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


@dataclass
class Delivery:
    at: float
    path: str
    content_type: str
    body: dict[str, Any]
    status: int


@dataclass
class Endpoint:
    """A push endpoint answering 500 to the first ``fail_first`` deliveries of a message."""

    fail_first: int
    port: int = 0
    deliveries: list[Delivery] = field(default_factory=list)
    _seen: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, path: str, content_type: str, body: dict[str, Any]) -> int:
        with self._lock:
            self._seen[body["message"]["messageId"]] += 1
            status = 500 if self._seen[body["message"]["messageId"]] <= self.fail_first else 204
            self.deliveries.append(Delivery(time.monotonic(), path, content_type, body, status))
        return status

    def by_message(self) -> dict[str, list[Delivery]]:
        with self._lock:
            grouped: dict[str, list[Delivery]] = defaultdict(list)
            for delivery in self.deliveries:
                grouped[delivery.body["message"]["messageId"]].append(delivery)
            return grouped


@pytest.fixture
def endpoint() -> Iterator[Callable[[int], Endpoint]]:
    servers: list[ThreadingHTTPServer] = []

    def make(fail_first: int) -> Endpoint:
        target = Endpoint(fail_first)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = target.answer(self.path, self.headers["Content-Type"], body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer((LOCALHOST, 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        target.port = server.server_address[1]
        return target

    yield make
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def pubsub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Pub/Sub emulator of its own; yields clients bound to it."""
    log = Path(tmp_path_factory.mktemp("pubsub")) / "pubsub.log"
    with pubsub_emulator(log, PROJECT) as host, emulator_env({"PUBSUB_EMULATOR_HOST": host}):
        from google.cloud import pubsub_v1  # type: ignore[attr-defined]

        yield _Clients(pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient())


@dataclass
class _Clients:
    publisher: Any
    subscriber: Any

    def subscription(self, name: str, dead_letter_after: int = 0, **extra: Any) -> str:
        """A topic and a pull subscription ``name`` (plus ``name-dl`` with a dead letter)."""
        from google.pubsub_v1 import types

        topic = self.publisher.topic_path(PROJECT, name)
        self.publisher.create_topic(name=topic)
        policy = None
        if dead_letter_after:
            self.publisher.create_topic(name=f"{topic}-dl")
            self.subscriber.create_subscription(
                name=self.subscriber.subscription_path(PROJECT, f"{name}-dl"), topic=f"{topic}-dl"
            )
            policy = types.DeadLetterPolicy(
                dead_letter_topic=f"{topic}-dl", max_delivery_attempts=dead_letter_after
            )
        path = str(self.subscriber.subscription_path(PROJECT, name))
        self.subscriber.create_subscription(
            request=types.Subscription(
                name=path,
                topic=topic,
                ack_deadline_seconds=60,
                dead_letter_policy=policy,
                **extra,
            )
        )
        return path

    def publish(self, name: str, count: int, attributes: dict[str, str]) -> list[str]:
        topic = self.publisher.topic_path(PROJECT, name)
        futures = [
            self.publisher.publish(topic, f"{name} {i}".encode(), **attributes)
            for i in range(count)
        ]
        return [str(f.result()) for f in futures]


def _wait(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_messages_failing_at_the_same_moment_are_all_delivered_in_the_end(
    pubsub: _Clients, endpoint: Callable[[int], Endpoint]
) -> None:
    # 12 messages, 4 pushed at once, each failing 4 times: failures coincide
    # on every round, which is what stalls the emulator's own push for good.
    target = endpoint(4)
    name = "simultaneous"
    sub = pubsub.subscription(name, dead_letter_after=10)
    url = f"http://{LOCALHOST}:{target.port}/projects/{PROJECT}/topics/{name}"
    route = Route(sub, url, min_backoff_s=1, max_backoff_s=2, concurrency=4, ack_deadline_s=60)
    dispatcher = PushDispatcher([route], pubsub.subscriber)
    dispatcher.start()
    try:
        ids = pubsub.publish(name, 12, {"job_id": "job-1"})
        _wait(
            lambda: sum(d[-1].status == 204 for d in target.by_message().values()) == 12,
            timeout_s=45,
            what="every message answered 204",
        )
    finally:
        dispatcher.stop()

    deliveries = target.by_message()
    assert sorted(deliveries) == sorted(ids)
    for message_id, seen in deliveries.items():
        # Four failures, one success, never more: acked at once, never redelivered early.
        assert [d.status for d in seen] == [500, 500, 500, 500, 204], message_id
        assert [d.body["deliveryAttempt"] for d in seen] == [1, 2, 3, 4, 5]
        for attempt, (before, after) in enumerate(itertools.pairwise(seen), 1):
            # The retry backoff, doubling from 1 s to 2 s; the emulator's clock ticks by 0.1 s.
            assert after.at - before.at >= backoff_s(route, attempt) - 0.15, (attempt, seen)
    assert dispatcher.stats()[sub] == {"acked": 12, "failed": 48, "dead_lettered": 0, "errors": 0}

    # The request is Pub/Sub's push request, on the URL that names the topic.
    first = deliveries[ids[0]][0]
    assert first.path == f"/projects/{PROJECT}/topics/{name}"
    assert first.content_type == "application/json"
    message = first.body["message"]
    assert set(first.body) == {"message", "subscription", "deliveryAttempt"}
    assert first.body["subscription"] == sub
    assert message["data"] == "c2ltdWx0YW5lb3VzIDA="  # base64 of "simultaneous 0"
    assert message["attributes"] == {"job_id": "job-1"}
    assert message["messageId"] == message["message_id"] == ids[0]
    assert message["publishTime"] == message["publish_time"]
    assert TIMESTAMP.match(message["publishTime"]), message["publishTime"]


def test_a_message_failing_every_attempt_is_dead_lettered_after_max_attempts(
    pubsub: _Clients, endpoint: Callable[[int], Endpoint]
) -> None:
    target = endpoint(10**6)
    name = "always-failing"
    sub = pubsub.subscription(name, dead_letter_after=5)
    url = f"http://{LOCALHOST}:{target.port}/projects/{PROJECT}/topics/{name}"
    route = Route(sub, url, min_backoff_s=1, max_backoff_s=2, concurrency=3, ack_deadline_s=60)
    dispatcher = PushDispatcher([route], pubsub.subscriber)
    dispatcher.start()
    dead: dict[str, Any] = {}
    dl_sub = pubsub.subscriber.subscription_path(PROJECT, f"{name}-dl")

    def all_dead_lettered() -> bool:
        answer = pubsub.subscriber.pull(request={"subscription": dl_sub, "max_messages": 10})
        for received in answer.received_messages:
            dead[received.message.data.decode()] = dict(received.message.attributes)
        if answer.received_messages:
            pubsub.subscriber.acknowledge(
                subscription=dl_sub, ack_ids=[r.ack_id for r in answer.received_messages]
            )
        return len(dead) == 3

    try:
        ids = pubsub.publish(name, 3, {"job_id": "job-2"})
        _wait(all_dead_lettered, timeout_s=45, what="three dead letters")
    finally:
        dispatcher.stop()

    assert sorted(dead) == [f"{name} {i}" for i in range(3)]
    for attributes in dead.values():
        assert attributes["job_id"] == "job-2"
        assert attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"
        assert attributes["CloudPubSubDeadLetterSourceSubscription"] == name
    deliveries = target.by_message()
    assert {i: [d.body["deliveryAttempt"] for d in deliveries[i]] for i in ids} == {
        i: [1, 2, 3, 4, 5] for i in ids
    }
    assert dispatcher.stats()[sub] == {"acked": 0, "failed": 15, "dead_lettered": 3, "errors": 0}


def test_subscriptions_the_emulator_would_push_or_retry_are_refused(pubsub: _Clients) -> None:
    from google.protobuf import duration_pb2
    from google.pubsub_v1 import types

    retry = types.RetryPolicy(minimum_backoff=duration_pb2.Duration(seconds=1))
    pushed = types.PushConfig(push_endpoint=f"http://{LOCALHOST}:9/projects/{PROJECT}/topics/x")
    refused: dict[str, dict[str, Any]] = {
        "with-retry": {"retry_policy": retry},
        "pushed": {"push_config": pushed},
    }
    for name, extra in refused.items():
        sub = pubsub.subscription(name, **extra)
        dispatcher = PushDispatcher([Route(sub, "http://127.0.0.1:9/")], pubsub.subscriber)
        with pytest.raises(PushConfigError):
            dispatcher.start()
