"""devstack.pubsub_push without an emulator: the backoff and the push body."""

from __future__ import annotations

import argparse

import pytest
from google.protobuf import timestamp_pb2
from google.pubsub_v1 import types

from devstack.pubsub_push import Route, backoff_s, parse_route, push_body

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
