"""Pub/Sub push payloads and GCS notifications (shared/contracts/messages.py)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from shared.contracts.messages import (
    JobMessage,
    PushMessage,
    job_message,
    push_message,
    storage_object,
)
from shared.domain.errors import PermanentError


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def event(
    data: str | None, attributes: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    message: dict[str, Any] = {"messageId": "123", "publishTime": "2030-01-02T03:04:05Z", **extra}
    if data is not None:
        message["data"] = data
    if attributes is not None:
        message["attributes"] = attributes
    return {"message": message, "subscription": "projects/p/subscriptions/s"}


def test_push_message_decodes_data_and_attributes() -> None:
    msg = push_message(event(b64(b'{"a": 1}'), {"batch_id": "bat_1", "n": 3}))
    assert msg == PushMessage(
        data=b'{"a": 1}',
        attributes={"batch_id": "bat_1", "n": "3"},
        message_id="123",
        publish_time="2030-01-02T03:04:05Z",
    )


def test_push_message_snake_case_ids_and_missing_parts() -> None:
    data = {"message": {"message_id": "9", "publish_time": "t"}}
    assert push_message(data) == PushMessage(b"", {}, "9", "t")


@pytest.mark.parametrize(
    "data",
    [None, "not a dict", [], {}, {"message": "x"}, {"message": None}],
)
def test_push_message_without_message_is_permanent(data: Any) -> None:
    with pytest.raises(PermanentError, match="no Pub/Sub message"):
        push_message(data)


@pytest.mark.parametrize("data", ["not base64!!", "YWJ", "é"])
def test_push_message_bad_base64_is_permanent(data: str) -> None:
    with pytest.raises(PermanentError, match="not base64"):
        push_message(event(data))


def test_push_message_non_string_data_is_permanent() -> None:
    with pytest.raises(PermanentError):
        push_message({"message": {"data": 123, "messageId": "1"}})


def test_job_message_parses() -> None:
    body = JobMessage(job_id="job_1", batch_id="bat_1", scene_id="sc-001").model_dump_json()
    msg = push_message(event(b64(body.encode())))
    assert job_message(msg) == JobMessage(job_id="job_1", batch_id="bat_1", scene_id="sc-001")


@pytest.mark.parametrize(
    "data", [b"", b"not json", b"[]", b'{"job_id": "job_1"}', b'{"job_id": 1, "batch_id": 2}']
)
def test_malformed_job_message_is_permanent(data: bytes) -> None:
    with pytest.raises(PermanentError, match="job message is malformed"):
        job_message(push_message(event(b64(data))))


# --------------------------------------------------------------------------- storage


def fake_gcs_notification(**metadata: str) -> dict[str, Any]:
    """A notification as fake-gcs-server (and GCS, JSON_API_V1) pushes it."""
    resource = {
        "kind": "storage#object",
        "id": "images-bucket/images/sc-001/job_1/var_1.png/1700000000000001",
        "name": "images/sc-001/job_1/var_1.png",
        "bucket": "images-bucket",
        "generation": "1700000000000001",
        "contentType": "image/png",
        "size": "52431",
        "metadata": metadata,
    }
    attributes = {
        "notificationConfig": "projects/_/buckets/images-bucket/notificationConfigs/1",
        "eventType": "OBJECT_FINALIZE",
        "payloadFormat": "JSON_API_V1",
        "bucketId": "images-bucket",
        "objectId": "images/sc-001/job_1/var_1.png",
        "objectGeneration": "1700000000000001",
        "eventTime": "2030-01-02T03:04:05.000Z",
    }
    return event(b64(json.dumps(resource).encode()), attributes)


def test_storage_object_from_fake_gcs_notification() -> None:
    obj = storage_object(push_message(fake_gcs_notification(job_id="job_1", variant="1")))
    assert obj.event_type == "OBJECT_FINALIZE"
    assert obj.bucket == "images-bucket"
    assert obj.name == "images/sc-001/job_1/var_1.png"
    assert obj.generation == "1700000000000001"
    assert obj.content_type == "image/png"
    assert obj.size == 52431
    assert obj.metadata == {"job_id": "job_1", "variant": "1"}


def test_storage_object_falls_back_to_payload_without_attributes() -> None:
    payload = {"bucket": "b", "name": "images/x.png", "generation": 7, "metadata": {"variant": 2}}
    obj = storage_object(PushMessage(json.dumps(payload).encode(), {}, "1", "t"))
    assert (obj.event_type, obj.bucket, obj.name, obj.generation) == ("", "b", "images/x.png", "7")
    assert (obj.size, obj.content_type, obj.metadata) == (0, "", {"variant": "2"})


def test_storage_object_without_payload_uses_attributes() -> None:
    msg = PushMessage(b"", {"eventType": "OBJECT_DELETE", "bucketId": "b", "objectId": "o"}, "", "")
    obj = storage_object(msg)
    assert (obj.event_type, obj.bucket, obj.name, obj.metadata) == ("OBJECT_DELETE", "b", "o", {})


def test_storage_object_non_json_payload_is_permanent() -> None:
    with pytest.raises(PermanentError, match="not JSON"):
        storage_object(PushMessage(b"{nope", {}, "1", "t"))


@pytest.mark.parametrize("payload", [b"[]", b"null", b'"text"'])
def test_storage_object_non_object_payload_is_permanent(payload: bytes) -> None:
    with pytest.raises(PermanentError):
        storage_object(PushMessage(payload, {}, "1", "t"))
