"""JobPublisher on Pub/Sub, using the client's batching publisher."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from google.cloud import pubsub_v1  # type: ignore[attr-defined]

from shared.contracts.messages import ExportMessage, JobMessage, RowsMessage
from shared.domain.errors import TransientError

PUBLISH_TIMEOUT_S = 60.0


class PubSubJobPublisher:
    def __init__(self, client: pubsub_v1.PublisherClient, topic_path: str) -> None:
        self._client = client
        self._topic = topic_path

    def publish(self, messages: Sequence[tuple[JobMessage, Mapping[str, str]]]) -> dict[str, str]:
        futures = {
            message.job_id: self._client.publish(
                self._topic, message.model_dump_json().encode(), **attributes
            )
            for message, attributes in messages
        }
        failed: dict[str, str] = {}
        # Wait for every future: an answer must say exactly which jobs went out.
        for job_id, future in futures.items():
            try:
                future.result(timeout=PUBLISH_TIMEOUT_S)
            except Exception as exc:
                failed[job_id] = f"{type(exc).__name__}: {exc}"
        return failed


class PubSubExportPublisher:
    def __init__(self, client: pubsub_v1.PublisherClient, topic_path: str) -> None:
        self._client = client
        self._topic = topic_path

    def publish_export(self, message: ExportMessage) -> None:
        future = self._client.publish(
            self._topic,
            message.model_dump_json().encode(),
            batch_id=message.batch_id,
            export_id=message.export_id,
        )
        try:
            future.result(timeout=PUBLISH_TIMEOUT_S)
        except Exception as exc:
            raise TransientError(f"the export could not be queued: {exc}") from exc


class PubSubRowsQueue:
    """The fleet's sheet writer's queue: a message per spreadsheet to bring up to date."""

    def __init__(self, client: pubsub_v1.PublisherClient, topic_path: str) -> None:
        self._client = client
        self._topic = topic_path

    def flush(self, spreadsheet_id: str) -> None:
        message = RowsMessage(spreadsheet_id=spreadsheet_id)
        future = self._client.publish(self._topic, message.model_dump_json().encode())
        try:
            future.result(timeout=PUBLISH_TIMEOUT_S)
        except Exception as exc:
            raise TransientError(f"the sheet's rows could not be queued: {exc}") from exc
