"""The Pub/Sub-pushed entry points through functions-framework's app, wired to fakes."""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import functions_framework
import pytest
from flask.testing import FlaskClient

import functions
from functions import wiring
from shared.contracts.messages import JobMessage, PushMessage, StorageObject
from shared.domain.errors import TransientError
from shared.domain.job import JobState, VariantState
from shared.services.dead_letters import DeadLetters
from shared.services.generation import Generation
from shared.services.ledger import JobLedger
from shared.services.sheet_sync import SheetSync
from tests.fakes import (
    IMAGES_BUCKET,
    FakeClock,
    FakeJobStore,
    FakeObjectStore,
    FakeSheetWriter,
    make_job,
    make_settings,
)

MAIN = Path(__file__).resolve().parents[2] / "main.py"
TOPIC_PATH = "/projects/p/topics/t"
PUBLISH_TIME = "2030-01-02T03:00:00.123Z"


def push_body(data: bytes | str, attributes: dict[str, str] | None = None) -> dict[str, Any]:
    encoded = data if isinstance(data, str) else base64.b64encode(data).decode()
    return {
        "message": {
            "data": encoded,
            "attributes": attributes or {},
            "messageId": "1",
            "publishTime": PUBLISH_TIME,
        },
        "subscription": "projects/p/subscriptions/s",
    }


JOB_BODY = JobMessage(job_id="job_1", batch_id="bat_1", scene_id="sc-001").model_dump_json()
NOTIFICATION = {
    "kind": "storage#object",
    "bucket": IMAGES_BUCKET,
    "name": "images/sc-001/job_1/var_1.png",
    "size": "1234",
    "contentType": "image/png",
    "metadata": {"job_id": "job_1", "variant": "1"},
}
NOTIFICATION_ATTRS = {
    "eventType": "OBJECT_FINALIZE",
    "bucketId": IMAGES_BUCKET,
    "objectId": "images/sc-001/job_1/var_1.png",
    "objectGeneration": "17",
    "payloadFormat": "JSON_API_V1",
}


class Recorder:
    """Stands in for a service: records what ``handle`` got, optionally raises."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls: list[tuple[Any, ...]] = []

    def handle(self, *args: Any) -> None:
        self.calls.append(args)
        if self.error is not None:
            raise self.error


@pytest.fixture
def make_client(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], FlaskClient]:
    def build(target: str) -> FlaskClient:
        for name in ("main", "functions.generate", "functions.thumbnail", "functions.dead_letters"):
            monkeypatch.delitem(sys.modules, name, raising=False)
        for name in ("generate", "thumbnail", "dead_letters"):
            monkeypatch.delattr(functions, name, raising=False)
        app = functions_framework.create_app(target=target, source=str(MAIN))
        client: FlaskClient = app.test_client()
        return client

    return build


def wire(monkeypatch: pytest.MonkeyPatch, factory: str, service: object) -> None:
    monkeypatch.setattr(wiring, factory, lambda: service)


# --------------------------------------------------------------------------- generate


def test_generate_hands_the_job_message_to_the_service(
    make_client: Callable[[str], FlaskClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    service = Recorder()
    wire(monkeypatch, "generation", service)
    response = make_client("generate_images").post(
        TOPIC_PATH, json=push_body(JOB_BODY.encode(), {"batch_id": "bat_1"})
    )
    assert response.status_code == 200
    assert service.calls == [
        (
            JobMessage(job_id="job_1", batch_id="bat_1", scene_id="sc-001"),
            datetime(2030, 1, 2, 3, 0, 0, 123000, tzinfo=UTC),
        )
    ]


@pytest.mark.parametrize("data", [b"not json", b'{"job_id": "job_1"}', b"[]", "%%% not base64 %%%"])
def test_generate_acks_and_drops_malformed_message(
    make_client: Callable[[str], FlaskClient], monkeypatch: pytest.MonkeyPatch, data: bytes | str
) -> None:
    service = Recorder()
    wire(monkeypatch, "generation", service)
    response = make_client("generate_images").post(TOPIC_PATH, json=push_body(data))
    assert 200 <= response.status_code < 300
    assert service.calls == []


def test_generate_transient_error_is_retried(
    make_client: Callable[[str], FlaskClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    wire(monkeypatch, "generation", Recorder(TransientError("Gemini answered 503")))
    response = make_client("generate_images").post(TOPIC_PATH, json=push_body(JOB_BODY.encode()))
    assert response.status_code >= 500


def test_generate_end_to_end_on_fakes(
    make_client: Callable[[str], FlaskClient],
    monkeypatch: pytest.MonkeyPatch,
    make_generation: Callable[..., Generation],
    store: FakeJobStore,
    objects: FakeObjectStore,
    sheet_writer: FakeSheetWriter,
) -> None:
    store.add(make_job())
    # The fake clock stands at 2030-01-02T03:04:05; the message is minutes old.
    wire(monkeypatch, "generation", make_generation())
    response = make_client("generate_images").post(TOPIC_PATH, json=push_body(JOB_BODY.encode()))
    assert response.status_code == 200
    assert objects.names(IMAGES_BUCKET) == [
        "images/sc-001/job_1/var_1.png",
        "images/sc-001/job_1/var_2.png",
    ]
    assert {v.state for v in store.job("job_1").variants.values()} == {VariantState.UPLOADED}
    assert sheet_writer.writes


# --------------------------------------------------------------------------- thumbnails


def test_thumbnail_hands_the_storage_object_to_the_service(
    make_client: Callable[[str], FlaskClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    service = Recorder()
    wire(monkeypatch, "thumbnails", service)
    body = push_body(json.dumps(NOTIFICATION).encode(), NOTIFICATION_ATTRS)
    response = make_client("make_thumbnails").post(TOPIC_PATH, json=body)
    assert response.status_code == 200
    assert service.calls == [
        (
            StorageObject(
                event_type="OBJECT_FINALIZE",
                bucket=IMAGES_BUCKET,
                name="images/sc-001/job_1/var_1.png",
                generation="17",
                content_type="image/png",
                size=1234,
                metadata={"job_id": "job_1", "variant": "1"},
            ),
        )
    ]


@pytest.mark.parametrize("data", [b"{not json", "%%% not base64 %%%"])
def test_thumbnail_acks_and_drops_malformed_notification(
    make_client: Callable[[str], FlaskClient], monkeypatch: pytest.MonkeyPatch, data: bytes | str
) -> None:
    service = Recorder()
    wire(monkeypatch, "thumbnails", service)
    response = make_client("make_thumbnails").post(
        TOPIC_PATH, json=push_body(data, NOTIFICATION_ATTRS)
    )
    assert 200 <= response.status_code < 300
    assert service.calls == []


def test_thumbnail_transient_error_is_retried(
    make_client: Callable[[str], FlaskClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    wire(monkeypatch, "thumbnails", Recorder(TransientError("storage 503")))
    body = push_body(json.dumps(NOTIFICATION).encode(), NOTIFICATION_ATTRS)
    assert make_client("make_thumbnails").post(TOPIC_PATH, json=body).status_code >= 500


# --------------------------------------------------------------------------- dead letters


def test_dead_letter_hands_the_message_to_the_service(
    make_client: Callable[[str], FlaskClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    service = Recorder()
    wire(monkeypatch, "dead_letters", service)
    attrs = {"CloudPubSubDeadLetterSourceDeliveryCount": "5"}
    response = make_client("handle_dead_letters").post(
        TOPIC_PATH, json=push_body(JOB_BODY.encode(), attrs)
    )
    assert response.status_code == 200
    (message,) = service.calls[0]
    assert isinstance(message, PushMessage)
    assert (message.data, message.attributes) == (JOB_BODY.encode(), attrs)


def test_dead_letter_with_bad_base64_is_dropped(
    make_client: Callable[[str], FlaskClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    service = Recorder()
    wire(monkeypatch, "dead_letters", service)
    response = make_client("handle_dead_letters").post(TOPIC_PATH, json=push_body("%%%"))
    assert 200 <= response.status_code < 300
    assert service.calls == []


def test_dead_letter_end_to_end_fails_the_job(
    make_client: Callable[[str], FlaskClient],
    monkeypatch: pytest.MonkeyPatch,
    store: FakeJobStore,
    sheet_sync: SheetSync,
    sheet_writer: FakeSheetWriter,
    clock: FakeClock,
) -> None:
    store.add(make_job())
    letters = DeadLetters(JobLedger(store, sheet_sync), make_settings(), FakeObjectStore(), clock)
    wire(monkeypatch, "dead_letters", letters)
    attrs = {"CloudPubSubDeadLetterSourceDeliveryCount": "5"}
    response = make_client("handle_dead_letters").post(
        TOPIC_PATH, json=push_body(JOB_BODY.encode(), attrs)
    )
    assert response.status_code == 200
    assert store.job("job_1").state == JobState.FAILED
    assert sheet_writer.row("sc-001")["status_img"].value.startswith("failed: ")
