"""devstack.pubsub_push without an emulator: the backoffs and the push body."""

from __future__ import annotations

import argparse
import socket
import threading
import time

import pytest
from google.protobuf import timestamp_pb2
from google.pubsub_v1 import types

from devstack.pubsub_push import (
    PushPace,
    Route,
    _RouteWorker,
    backoff_s,
    parse_route,
    push_body,
)

SUB = "projects/p/subscriptions/s"


def received(data: bytes = b"{}", attempt: int = 0, **message: object) -> types.ReceivedMessage:
    publish_time = timestamp_pb2.Timestamp(seconds=1_800_000_000, nanos=123_000_000)
    return types.ReceivedMessage(
        ack_id="ack-1",
        delivery_attempt=attempt,
        message=types.PubsubMessage(
            data=data, message_id="42", publish_time=publish_time, **message
        ),
    )


def test_backoff_doubles_from_the_minimum_and_stops_at_the_maximum() -> None:
    route = Route(SUB, "http://127.0.0.1:1/", min_backoff_s=10, max_backoff_s=600)
    assert [backoff_s(route, n) for n in range(1, 9)] == [10, 20, 40, 80, 160, 320, 600, 600]
    # Ack deadlines are whole seconds: a fraction rounds up, never down to "now".
    assert backoff_s(Route(SUB, "x", min_backoff_s=0.5, max_backoff_s=2), 1) == 1
    assert backoff_s(Route(SUB, "x", min_backoff_s=0, max_backoff_s=0), 3) == 0


def test_push_body_is_pubsubs_push_request() -> None:
    body = push_body(received(b"hello", attempt=3, attributes={"k": "v"}), SUB)
    assert body == {
        "message": {
            "attributes": {"k": "v"},
            "data": "aGVsbG8=",
            "messageId": "42",
            "message_id": "42",
            "publishTime": "2027-01-15T08:00:00.123Z",
            "publish_time": "2027-01-15T08:00:00.123Z",
        },
        "subscription": SUB,
        "deliveryAttempt": 3,
    }


def test_push_body_leaves_out_what_the_message_does_not_have() -> None:
    # No data: functions-framework refuses it (400), as it does with Pub/Sub's push.
    body = push_body(received(b""), SUB)
    assert set(body) == {"message", "subscription"}
    assert set(body["message"]) == {"messageId", "message_id", "publishTime", "publish_time"}
    assert push_body(received(ordering_key="scene-1"), SUB)["message"]["orderingKey"] == "scene-1"


def test_routes_name_a_subscription_path_and_a_url() -> None:
    route = parse_route(f"{SUB}=http://127.0.0.1:8080/projects/p/topics/t", {"concurrency": 3})
    assert route == Route(SUB, "http://127.0.0.1:8080/projects/p/topics/t", concurrency=3)
    for bad in ("s=http://x/", f"{SUB}", f"{SUB}=127.0.0.1:80"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_route(bad, {})


def test_a_failing_route_pauses_longer_per_failure_in_a_row_and_a_success_lifts_it() -> None:
    pace = PushPace(low_s=0.1, high_s=1.0)
    assert pace.wait_s(100.0) == 0
    pauses = []
    for _ in range(6):
        pace.failed(100.0)
        pauses.append(round(pace.wait_s(100.0), 3))
    assert pauses == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert pace.wait_s(101.0) == 0  # the pause is over
    pace.succeeded()
    pace.failed(200.0)
    assert round(pace.wait_s(200.0), 3) == 0.1  # the doubling started again


class RecordingSubscriber:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def acknowledge(self, subscription: str, ack_ids: list[str]) -> None:
        self.calls.append(("ack", ack_ids))

    def modify_ack_deadline(
        self, subscription: str, ack_ids: list[str], ack_deadline_seconds: int
    ) -> None:
        self.calls.append(("deadline", ack_deadline_seconds))


def test_a_push_to_an_endpoint_that_is_down_pauses_the_route_and_spends_one_attempt() -> None:
    with socket.socket() as sock:  # a port nothing listens on: refused at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    route = Route(SUB, f"http://127.0.0.1:{port}/", min_backoff_s=1, max_backoff_s=10)
    subscriber = RecordingSubscriber()
    worker = _RouteWorker(route, subscriber, threading.Event())
    try:
        worker._push(received(attempt=2))
        assert subscriber.calls == [("deadline", 2)]  # the message's own backoff
        assert worker.pace.wait_s(time.monotonic()) > 0  # and the route's pause
        assert worker.snapshot()["failed"] == 1
    finally:
        worker.join(0, wait=False)
