"""What travels through Pub/Sub: our job and export messages, and the push
envelopes (ours, and Cloud Storage's finalize notifications) that bring them."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from shared.domain.errors import PermanentError


class ExportMessage(BaseModel):
    """Pub/Sub payload asking the exporter for one zip."""

    batch_id: str
    export_id: str


class RowsMessage(BaseModel):
    """Pub/Sub payload asking the fleet's sheet writer to bring a spreadsheet's rows
    up to date (every row whose job changed since it was written)."""

    spreadsheet_id: str = Field(min_length=1)


class JobMessage(BaseModel):
    """Pub/Sub payload of one job; Firestore stays the source of truth.

    With ``variant`` and ``version`` it asks for that one later version (a re-roll
    or an edit) instead of the job's first images.
    """

    job_id: str
    batch_id: str
    scene_id: str
    variant: int | None = None
    version: int | None = None


@dataclass(frozen=True)
class PushMessage:
    data: bytes
    attributes: dict[str, str]
    message_id: str
    publish_time: str

    @property
    def published_at(self) -> datetime | None:
        """The publish time, if Pub/Sub gave a readable one."""
        try:
            stamp = datetime.fromisoformat(self.publish_time.replace("Z", "+00:00"))
        except ValueError:
            return None
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def push_message(event_data: Any) -> PushMessage:
    """The Pub/Sub message inside a ``messagePublished`` CloudEvent."""
    if not isinstance(event_data, dict) or not isinstance(event_data.get("message"), dict):
        raise PermanentError("event has no Pub/Sub message")
    message = event_data["message"]
    raw = message.get("data") or ""
    if not isinstance(raw, str):
        raise PermanentError("message data is not a base64 string")
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PermanentError("message data is not base64") from exc
    return PushMessage(
        data=data,
        attributes={str(k): str(v) for k, v in (message.get("attributes") or {}).items()},
        message_id=str(message.get("messageId") or message.get("message_id") or ""),
        publish_time=str(message.get("publishTime") or message.get("publish_time") or ""),
    )


def job_message(message: PushMessage) -> JobMessage:
    try:
        return JobMessage.model_validate_json(message.data)
    except ValidationError as exc:
        raise PermanentError(f"job message is malformed: {exc.error_count()} error(s)") from exc


def export_message(message: PushMessage) -> ExportMessage:
    try:
        return ExportMessage.model_validate_json(message.data)
    except ValidationError as exc:
        raise PermanentError(f"export message is malformed: {exc.error_count()} error(s)") from exc


def rows_message(message: PushMessage) -> RowsMessage:
    try:
        return RowsMessage.model_validate_json(message.data)
    except ValidationError as exc:
        raise PermanentError(f"rows message is malformed: {exc.error_count()} error(s)") from exc


@dataclass(frozen=True)
class StorageObject:
    """The parts of a GCS ``OBJECT_FINALIZE`` notification we act on."""

    event_type: str
    bucket: str
    name: str
    generation: str
    content_type: str
    size: int
    metadata: dict[str, str]


def storage_object(message: PushMessage) -> StorageObject:
    try:
        payload = json.loads(message.data) if message.data else {}
    except ValueError as exc:
        raise PermanentError("notification payload is not JSON") from exc
    if not isinstance(payload, dict):
        raise PermanentError("notification payload is not a JSON object")
    attrs = message.attributes
    return StorageObject(
        event_type=attrs.get("eventType", ""),
        bucket=attrs.get("bucketId") or str(payload.get("bucket", "")),
        name=attrs.get("objectId") or str(payload.get("name", "")),
        generation=attrs.get("objectGeneration") or str(payload.get("generation", "")),
        content_type=str(payload.get("contentType", "")),
        size=int(payload.get("size") or 0),
        metadata={str(k): str(v) for k, v in (payload.get("metadata") or {}).items()},
    )
