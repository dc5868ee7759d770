"""In-memory fakes of the ports in ``shared/services/ports.py``, plus small builders.

Every fake records the calls it receives so tests can assert on them. They are
thread-safe because the generation service works on variants in a thread pool.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, BinaryIO, TypeVar

from PIL import Image

from shared.config.settings import Settings
from shared.contracts.messages import ExportMessage, JobMessage, StorageObject
from shared.contracts.sheet_row import Cell
from shared.domain import daily_usage, quota, request_records
from shared.domain.batch import Batch
from shared.domain.batch_news import NoticeRecord, finish_notice, take_notice
from shared.domain.daily_usage import DailyUsage
from shared.domain.economy_batches import EconomyBatch
from shared.domain.errors import MissingWorksheet, NotFound, PermanentError, TransientError
from shared.domain.job import Job, JobState, VariantState
from shared.domain.quota import GateState, Limit, Slot
from shared.domain.request_records import RequestRecord
from shared.services.ports import (
    BatchProgress,
    DriveFile,
    EconomyLine,
    Fence,
    FencedOut,
    FoundObject,
    GeneratedImage,
    LineResult,
    ModelCheck,
    ReferenceImage,
    SheetLayout,
    Usage,
)

R = TypeVar("R")

T0 = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
IMAGES_BUCKET = "images-bucket"
PUBLIC_BASE_URL = "https://api.example.test"
LINK_SIGNING_KEY = "test-link-signing-key"


# --------------------------------------------------------------------------- builders


def png_bytes(
    size: tuple[int, int] = (8, 8),
    color: Any = (200, 30, 30),
    mode: str = "RGB",
) -> bytes:
    """A small valid PNG."""
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, format="PNG")
    return out.getvalue()


def jpeg_bytes(size: tuple[int, int] = (8, 8), color: Any = (30, 200, 30)) -> bytes:
    """A small valid JPEG."""
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="JPEG")
    return out.getvalue()


def make_settings(**overrides: Any) -> Settings:
    """Settings for tests; the environment is isolated by an autouse fixture."""
    values: dict[str, Any] = {
        "google_cloud_project": "test-project",
        "images_bucket": IMAGES_BUCKET,
        "public_base_url": PUBLIC_BASE_URL,
        "link_signing_key": LINK_SIGNING_KEY,
        "claim_wait_s": 30.0,
    }
    values.update(overrides)
    return Settings(**values)


def make_job(**overrides: Any) -> Job:
    """A queued job of two variants unless told otherwise."""
    values: dict[str, Any] = {
        "job_id": "job_1",
        "batch_id": "bat_1",
        "scene_id": "sc-001",
        "prompt": "a red fox in the snow",
        "variant_count": 2,
        "caller": "alice",
        "spreadsheet_id": "sheet123",
        "worksheet": "Scenes",
        "model": "gemini-3.1-flash-image",
        "price_per_image": "0.0670",
        "created_at": T0,
        "updated_at": T0,
    }
    values.update(overrides)
    return Job(**values)


def make_batch(*jobs: Job, **overrides: Any) -> Batch:
    """The batch of ``jobs`` as intake records it (bat_1 of alice unless told otherwise)."""
    values: dict[str, Any] = {
        "batch_id": "bat_1",
        "caller": "alice",
        "spreadsheet_id": "sheet123",
        "worksheet": "Scenes",
        "model": "gemini-3.1-flash-image",
        "job_ids": [job.job_id for job in jobs],
        "image_count": sum(job.variant_count for job in jobs),
        "estimated_cost_usd": "0",
        "created_at": T0,
    }
    values.update(overrides)
    return Batch(**values)


def mark_done(job: Job, *numbers: int) -> Job:
    """Variants as the thumbnail path leaves them: done, with image and thumbnail names."""
    for n in numbers:
        variant = job.variant(n)
        variant.state = VariantState.DONE
        variant.object_name = (
            variant.object_name or f"images/{job.scene_id}/{job.job_id}/var_{n}.png"
        )
        variant.thumb_name = f"thumbnails/{job.scene_id}/{job.job_id}/var_{n}.jpg"
    return job


def finalize_event(
    name: str,
    variant: int | str = 1,
    job_id: str = "job_1",
    bucket: str = IMAGES_BUCKET,
    event_type: str = "OBJECT_FINALIZE",
    **metadata: str,
) -> StorageObject:
    """The notification of an image object the generation service wrote."""
    meta = {"job_id": job_id, "variant": str(variant), "scene_id": "sc-001", **metadata}
    return StorageObject(
        event_type=event_type,
        bucket=bucket,
        name=name,
        generation="1700000000000001",
        content_type="image/png",
        size=1234,
        metadata=meta,
    )


# --------------------------------------------------------------------------- clock


class FakeClock:
    """Wall clock, monotonic clock and sleep that only move when told (or slept)."""

    def __init__(self, start: datetime = T0) -> None:
        self._now = start
        self._mono = 1000.0
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)
            self._mono += seconds

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
        self.advance(seconds)


class ManualHeartbeat:
    """A heartbeat that beats when told: ``beat()`` renews every lease held now."""

    def __init__(self) -> None:
        self.active: list[Callable[[], bool]] = []
        self.every: list[float] = []

    @contextmanager
    def keep(self, renew: Callable[[], bool], every_s: float) -> Iterator[None]:
        self.every.append(every_s)
        self.active.append(renew)
        try:
            yield
        finally:
            self.active.remove(renew)

    def beat(self) -> list[bool]:
        return [renew() for renew in list(self.active)]


def _copy(job: Job) -> Job:
    """An independent copy (as a read from a store gives), faster than deepcopy."""
    return Job.model_validate(job.model_dump())


def _check_fence(requests: FakeIdempotencyStore | None, fence: Fence) -> None:
    """What Firestore's commit with the record's precondition refuses."""
    record = requests.records.get(fence.key) if requests is not None else None
    if record is None or record.holder != fence.holder or record.answered:
        raise FencedOut(f"the request no longer holds its record {fence.key[:12]}")


# --------------------------------------------------------------------------- job store


class FakeJobStore:
    """JobStore in memory; ``update_job`` runs the change under a lock like a transaction.

    ``hook(operation, job_id)`` (if set) runs before ``get_job``/``update_job``
    touch the data, outside the lock, so tests can interleave deliveries.
    """

    def __init__(self, requests: FakeIdempotencyStore | None = None) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self.batches: dict[str, Batch] = {}
        # Where fenced writes check the request's record (as Firestore commits both).
        self.requests = requests
        self.created: list[tuple[Batch, list[Job]]] = []
        self.calls: list[tuple[str, str]] = []
        self.updates: list[tuple[str, bool]] = []  # (job_id, whether it was written)
        self.hook: Callable[[str, str], None] | None = None

    def add(self, *jobs: Job) -> None:
        with self._lock:
            for job in jobs:
                self._jobs[job.job_id] = _copy(job)

    def job(self, job_id: str) -> Job:
        """The stored job (a copy) for assertions; KeyError if missing."""
        with self._lock:
            return _copy(self._jobs[job_id])

    @property
    def job_ids(self) -> list[str]:
        with self._lock:
            return list(self._jobs)

    def _check(self, fence: Fence | None) -> None:
        if fence is not None:
            _check_fence(self.requests, fence)

    def create_batch(self, batch: Batch, jobs: Sequence[Job], fence: Fence | None = None) -> None:
        with self._lock:
            self.calls.append(("create_batch", batch.batch_id))
            if batch.batch_id not in self.batches:
                self._check(fence)
            self.created.append((batch.model_copy(deep=True), [_copy(j) for j in jobs]))
            for job in jobs:
                self._jobs.setdefault(job.job_id, _copy(job))
            self.batches.setdefault(batch.batch_id, batch.model_copy(deep=True))

    def get_batch(self, batch_id: str) -> Batch | None:
        with self._lock:
            self.calls.append(("get_batch", batch_id))
            batch = self.batches.get(batch_id)
            return batch.model_copy(deep=True) if batch else None

    def get_jobs(self, job_ids: Sequence[str]) -> list[Job]:
        with self._lock:
            self.calls.append(("get_jobs", ",".join(job_ids)))
            return [_copy(self._jobs[j]) for j in job_ids if j in self._jobs]

    def scene_jobs(self, spreadsheet_id: str, scene_id: str) -> list[Job]:
        with self._lock:
            self.calls.append(("scene_jobs", f"{spreadsheet_id}/{scene_id}"))
            return [
                _copy(job)
                for job in self._jobs.values()
                if job.spreadsheet_id == spreadsheet_id and job.scene_id == scene_id
            ]

    def open_jobs(self, batch_id: str) -> int:
        with self._lock:
            self.calls.append(("open_jobs", batch_id))
            return sum(
                1 for job in self._jobs.values() if job.batch_id == batch_id and not job.terminal
            )

    def jobs_of_scenes(self, spreadsheet_id: str, scene_ids: Sequence[str]) -> list[Job]:
        wanted = set(scene_ids)
        with self._lock:
            self.calls.append(("jobs_of_scenes", f"{spreadsheet_id}/{len(wanted)}"))
            return [
                _copy(job)
                for job in self._jobs.values()
                if job.spreadsheet_id == spreadsheet_id and job.scene_id in wanted
            ]

    def update_batch(self, batch_id: str, change: Callable[[Batch], tuple[Batch | None, R]]) -> R:
        with self._lock:
            self.calls.append(("update_batch", batch_id))
            current = self.batches.get(batch_id)
            if current is None:
                raise NotFound(f"batch {batch_id} does not exist")
            updated, result = change(current.model_copy(deep=True))
            if updated is not None:
                self.batches[batch_id] = Batch.model_validate(updated.to_doc())
            return result

    def active_jobs(self, spreadsheet_id: str, worksheet: str) -> list[Job]:
        with self._lock:
            self.calls.append(("active_jobs", f"{spreadsheet_id}/{worksheet}"))
            return [
                _copy(job)
                for job in self._jobs.values()
                if job.spreadsheet_id == spreadsheet_id
                and job.worksheet == worksheet
                and job.state in (JobState.QUEUED, JobState.GENERATING)
            ]

    @property
    def writes(self) -> list[tuple[str, str]]:
        """The calls that could have changed something."""
        with self._lock:
            return [c for c in self.calls if c[0] in ("create_batch", "update_job", "update_batch")]

    def get_job(self, job_id: str) -> Job | None:
        if self.hook is not None:
            self.hook("get_job", job_id)
        with self._lock:
            self.calls.append(("get_job", job_id))
            job = self._jobs.get(job_id)
            return _copy(job) if job else None

    def update_job(
        self,
        job_id: str,
        change: Callable[[Job], tuple[Job | None, R]],
        fence: Fence | None = None,
    ) -> R:
        if self.hook is not None:
            self.hook("update_job", job_id)
        with self._lock:
            self.calls.append(("update_job", job_id))
            current = self._jobs.get(job_id)
            if current is None:
                raise NotFound(f"job {job_id} does not exist")
            updated, result = change(_copy(current))
            if updated is not None:
                self._check(fence)
                self._jobs[job_id] = Job.from_doc(updated.to_doc())
            self.updates.append((job_id, updated is not None))
            return result

    def economy_jobs(self, limit: int) -> list[Job]:
        with self._lock:
            self.calls.append(("economy_jobs", str(limit)))
            jobs = [
                _copy(job)
                for job in self._jobs.values()
                if job.lane == "economy" and job.state in (JobState.QUEUED, JobState.GENERATING)
            ]
        return sorted(jobs, key=lambda j: (j.created_at, j.job_id))[:limit]

    def unstarted_jobs(self, created_before: datetime, limit: int) -> list[Job]:
        with self._lock:
            self.calls.append(("unstarted_jobs", str(limit)))
            jobs = [
                _copy(job)
                for job in self._jobs.values()
                if job.lane == "live"
                and job.state == JobState.QUEUED
                and job.created_at < created_before
            ]
        return sorted(jobs, key=lambda j: (j.created_at, j.job_id))[:limit]

    def overdue_jobs(self, created_before: datetime, limit: int) -> list[Job]:
        with self._lock:
            self.calls.append(("overdue_jobs", str(limit)))
            jobs = [
                _copy(job)
                for job in self._jobs.values()
                if job.lane == "live"
                and job.state == JobState.GENERATING
                and job.created_at < created_before
            ]
        return sorted(jobs, key=lambda j: (j.created_at, j.job_id))[:limit]

    def queued_exports(self, limit: int) -> list[Batch]:
        with self._lock:
            self.calls.append(("queued_exports", str(limit)))
            return [
                batch.model_copy(deep=True)
                for batch in self.batches.values()
                if batch.export is not None and batch.export.state == "queued"
            ][:limit]

    def unfollowed_jobs(self, changed_before: datetime, limit: int) -> list[Job]:
        with self._lock:
            self.calls.append(("unfollowed_jobs", str(limit)))
            jobs = [
                _copy(job)
                for job in self._jobs.values()
                if job.followups_since is not None and job.followups_since < changed_before
            ]
        return sorted(jobs, key=lambda j: (j.followups_since or j.created_at, j.job_id))[:limit]

    def unfollowed_in(self, spreadsheet_id: str, limit: int) -> list[Job]:
        with self._lock:
            self.calls.append(("unfollowed_in", spreadsheet_id))
            jobs = [
                _copy(job)
                for job in self._jobs.values()
                if job.followups_since is not None and job.spreadsheet_id == spreadsheet_id
            ]
        return sorted(jobs, key=lambda j: (j.followups_since or j.created_at, j.job_id))[:limit]

    def mutate(self, job_id: str, fn: Callable[[Job], None]) -> None:
        """Test-side edit of a stored job (bypasses the call log)."""
        with self._lock:
            job = _copy(self._jobs[job_id])
            fn(job)
            self._jobs[job_id] = job


# --------------------------------------------------------------------------- budget


class FakeBudgetLedger:
    """BudgetLedger in memory, on the same transitions as the Firestore adapter."""

    def __init__(self, requests: FakeIdempotencyStore | None = None) -> None:
        self._lock = threading.Lock()
        self.days: dict[tuple[str, str], DailyUsage] = {}
        self.calls: list[tuple[Any, ...]] = []
        # Where fenced writes check the request's record (as Firestore commits both).
        self.requests = requests

    @property
    def used(self) -> _UsedView:
        """``used[(caller, day)]``: the day's usage (settable, for tests)."""
        return _UsedView(self)

    @property
    def settled(self) -> set[tuple[str, str, str]]:
        with self._lock:
            return {(c, d, key) for (c, d), u in self.days.items() for key in u.settled}

    def _day(self, caller: str, day: str) -> DailyUsage:
        return self.days.get((caller, day)) or DailyUsage(caller=caller, day=day)

    def _change(
        self, caller: str, day: str, change: Callable[[DailyUsage], tuple[DailyUsage | None, R]]
    ) -> R:
        current = self._day(caller, day).model_copy(deep=True)
        updated, result = change(current)
        if updated is not None:
            self.days[(caller, day)] = updated
        return result

    def usage(self, caller: str, day: str) -> Usage:
        with self._lock:
            self.calls.append(("usage", caller, day))
            used = self._day(caller, day)
            return Usage(used.images, used.cost)

    def reserve(
        self,
        caller: str,
        day: str,
        key: str,
        images: int,
        cost: Decimal,
        image_cap: int,
        cost_cap: Decimal,
        fence: Fence | None = None,
    ) -> tuple[bool, Usage]:
        with self._lock:
            self.calls.append(("reserve", caller, day, images, cost, image_cap, cost_cap))
            if fence is not None and key not in self._day(caller, day).reservations:
                _check_fence(self.requests, fence)
            ok, before = self._change(
                caller,
                day,
                lambda u: daily_usage.reserve(u, key, images, cost, image_cap, cost_cap),
            )
            return ok, Usage(before.images, before.cost)

    def release(self, caller: str, day: str, key: str, fence: Fence | None = None) -> None:
        with self._lock:
            self.calls.append(("release", caller, day, key))
            if fence is not None:
                _check_fence(self.requests, fence)
            self._change(caller, day, lambda u: daily_usage.release(u, key))

    def settle(self, caller: str, day: str, key: str, images: int, cost: Decimal) -> None:
        with self._lock:
            self.calls.append(("settle", caller, day, key, images, cost))
            self._change(caller, day, lambda u: daily_usage.settle(u, key, images, cost))


class _UsedView:
    """Reads and writes of a FakeBudgetLedger's days as ``Usage`` pairs."""

    def __init__(self, ledger: FakeBudgetLedger) -> None:
        self._ledger = ledger

    def __getitem__(self, key: tuple[str, str]) -> Usage:
        with self._ledger._lock:
            if key not in self._ledger.days:
                raise KeyError(key)
            used = self._ledger.days[key]
            return Usage(used.images, used.cost)

    def __setitem__(self, key: tuple[str, str], value: Usage) -> None:
        with self._ledger._lock:
            used = self._ledger._day(*key).model_copy(deep=True)
            used.images, used.cost = value.images, value.cost
            self._ledger.days[key] = used

    def get(self, key: tuple[str, str], default: Usage | None = None) -> Usage | None:
        try:
            return self[key]
        except KeyError:
            return default

    def items(self) -> list[tuple[tuple[str, str], Usage]]:
        with self._ledger._lock:
            return [(k, Usage(u.images, u.cost)) for k, u in self._ledger.days.items()]

    def __eq__(self, other: object) -> bool:
        return dict(self.items()) == other

    def __repr__(self) -> str:
        return repr(dict(self.items()))


# --------------------------------------------------------------------------- idempotency


class FakeIdempotencyStore:
    """IdempotencyStore in memory, on the same transitions as the Firestore adapter."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.records: dict[str, RequestRecord] = {}
        self.calls: list[tuple[str, str]] = []

    def _change(
        self,
        key: str,
        change: Callable[[RequestRecord], tuple[RequestRecord | None, R]],
        absent: R,
    ) -> R:
        record = self.records.get(key)
        if record is None:
            return absent
        updated, result = change(record.model_copy(deep=True))
        if updated is not None:
            self.records[key] = updated
        return result

    def begin(
        self,
        key: str,
        names: str,
        holder: str,
        now: datetime,
        expires_at: datetime,
        lease: timedelta,
    ) -> tuple[RequestRecord, bool]:
        with self._lock:
            self.calls.append(("begin", key))
            current = self.records.get(key)
            updated, result = request_records.begin(
                current.model_copy(deep=True) if current else None,
                key,
                names,
                holder,
                now,
                expires_at,
                lease,
            )
            if updated is not None:
                self.records[key] = updated
            return result

    def note(
        self,
        key: str,
        holder: str,
        intent: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
    ) -> bool:
        with self._lock:
            self.calls.append(("note", key))
            return self._change(key, lambda r: request_records.note(r, holder, intent, body), False)

    def finish(self, key: str, holder: str, body: dict[str, Any]) -> bool:
        with self._lock:
            self.calls.append(("finish", key))
            return self._change(key, lambda r: request_records.finish(r, holder, body), False)

    def let_go(self, key: str, holder: str) -> None:
        with self._lock:
            self.calls.append(("let_go", key))
            self._change(key, lambda r: request_records.let_go(r, holder), None)

    def abandon(self, key: str, holder: str) -> None:
        with self._lock:
            self.calls.append(("abandon", key))
            record = self.records.get(key)
            if record is not None and record.holder == holder and not record.answered:
                del self.records[key]

    def stale(self, now: datetime, limit: int) -> list[RequestRecord]:
        with self._lock:
            self.calls.append(("stale", ""))
            found = [
                r.model_copy(deep=True)
                for r in self.records.values()
                if not r.answered
                and r.expires_at > now
                and (r.lease_expires is None or r.lease_expires <= now)
            ]
        return sorted(found, key=lambda r: r.created_at)[:limit]


# --------------------------------------------------------------------------- publisher


class FakeNoticeLog:
    """Records of batch events told, in memory, with the same rules as Firestore's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.records: dict[str, NoticeRecord] = {}
        self.calls: list[tuple[str, str]] = []

    def sent(self, key: str) -> bool:
        with self._lock:
            self.calls.append(("sent", key))
            record = self.records.get(key)
            return record is not None and (record.sent_at is not None or record.error is not None)

    def claim(self, key: str, holder: str, now: datetime, lease: timedelta) -> bool:
        with self._lock:
            self.calls.append(("claim", key))
            taken = take_notice(self.records.get(key), key, holder, now, lease)
            if taken is not None:
                self.records[key] = taken
            return taken is not None

    def done(self, key: str, holder: str, now: datetime, error: str | None = None) -> None:
        with self._lock:
            self.calls.append(("done", key))
            finished = finish_notice(self.records.get(key), holder, now, error)
            if finished is not None:
                self.records[key] = finished


class FakeTeamChannel:
    """A Chat space: keeps one message per request id, and every post it was sent."""

    def __init__(self, fail: Exception | None = None) -> None:
        self._lock = threading.Lock()
        self.posts: list[tuple[str, str, str]] = []
        self.messages: dict[str, str] = {}
        self.fail = fail

    def post(self, text: str, request_id: str, thread_key: str) -> None:
        with self._lock:
            self.posts.append((text, request_id, thread_key))
            if self.fail is not None:
                raise self.fail
            self.messages.setdefault(request_id, text)


class FakePublisher:
    """JobPublisher that records messages; job ids in ``fail`` are not published."""

    def __init__(self, fail: Mapping[str, str] | None = None) -> None:
        self.fail: dict[str, str] = dict(fail or {})
        self.calls: list[list[tuple[JobMessage, dict[str, str]]]] = []
        self.published: list[tuple[JobMessage, dict[str, str]]] = []

    def publish(self, messages: Sequence[tuple[JobMessage, Mapping[str, str]]]) -> dict[str, str]:
        batch = [(message, dict(attributes)) for message, attributes in messages]
        self.calls.append(batch)
        failed: dict[str, str] = {}
        for message, attributes in batch:
            if message.job_id in self.fail:
                failed[message.job_id] = self.fail[message.job_id]
            else:
                self.published.append((message, attributes))
        return failed


class FakeRowsQueue:
    """RowsQueue recording the spreadsheets queued; ``fail`` makes it raise."""

    def __init__(self) -> None:
        self.queued: list[str] = []
        self.fail: Exception | None = None

    def flush(self, spreadsheet_id: str) -> None:
        if self.fail is not None:
            raise self.fail
        self.queued.append(spreadsheet_id)


class FakeExportPublisher:
    """ExportPublisher recording messages; ``fail`` makes publishing raise."""

    def __init__(self) -> None:
        self.published: list[ExportMessage] = []
        self.fail: Exception | None = None

    def publish_export(self, message: ExportMessage) -> None:
        if self.fail is not None:
            raise self.fail
        self.published.append(message)


# --------------------------------------------------------------------------- objects


@dataclass(frozen=True)
class StoredObject:
    data: bytes
    content_type: str
    metadata: dict[str, str]


class FakeObjectStore:
    """ObjectStore with create-only semantics; ``on_create(bucket, name)`` runs after a create."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.objects: dict[tuple[str, str], StoredObject] = {}
        self.calls: list[tuple[str, str, str]] = []  # (method, bucket, name)
        self.on_create: Callable[[str, str], None] | None = None

    def put(
        self,
        bucket: str,
        name: str,
        data: bytes,
        content_type: str = "image/png",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Seed an object without recording a call."""
        with self._lock:
            self.objects[(bucket, name)] = StoredObject(data, content_type, dict(metadata or {}))

    def names(self, bucket: str) -> list[str]:
        with self._lock:
            return sorted(name for b, name in self.objects if b == bucket)

    def find(self, bucket: str, prefix: str) -> FoundObject | None:
        with self._lock:
            self.calls.append(("find", bucket, prefix))
            found = sorted(n for b, n in self.objects if b == bucket and n.startswith(prefix))
            if not found:
                return None
            return FoundObject(found[0], dict(self.objects[(bucket, found[0])].metadata))

    def create(
        self,
        bucket: str,
        name: str,
        data: bytes,
        content_type: str,
        metadata: Mapping[str, str],
    ) -> bool:
        with self._lock:
            self.calls.append(("create", bucket, name))
            if (bucket, name) in self.objects:
                return False
            self.objects[(bucket, name)] = StoredObject(data, content_type, dict(metadata))
        if self.on_create is not None:
            self.on_create(bucket, name)
        return True

    def read(self, bucket: str, name: str, max_bytes: int) -> bytes:
        with self._lock:
            self.calls.append(("read", bucket, name))
            obj = self.objects.get((bucket, name))
        if obj is None:
            raise NotFound(f"gs://{bucket}/{name} does not exist")
        if len(obj.data) > max_bytes:
            raise PermanentError(
                f"gs://{bucket}/{name} is {len(obj.data)} bytes; limit {max_bytes}"
            )
        return obj.data

    def read_into(self, bucket: str, name: str, out: BinaryIO) -> None:
        with self._lock:
            self.calls.append(("read_into", bucket, name))
            obj = self.objects.get((bucket, name))
        if obj is None:
            raise NotFound(f"gs://{bucket}/{name} does not exist")
        for start in range(0, len(obj.data), 4096):  # a piece at a time, as downloads come
            out.write(obj.data[start : start + 4096])

    def write_stream(
        self,
        bucket: str,
        name: str,
        content_type: str,
        metadata: Mapping[str, str],
        write: Callable[[BinaryIO], None],
    ) -> int | None:
        with self._lock:
            self.calls.append(("write_stream", bucket, name))
            if (bucket, name) in self.objects:
                return None
        sink = UnseekableSink()
        write(sink)  # type: ignore[arg-type]
        with self._lock:
            if (bucket, name) in self.objects:
                return None
            self.objects[(bucket, name)] = StoredObject(sink.data(), content_type, dict(metadata))
        return len(sink.data())

    def compose(
        self,
        bucket: str,
        sources: Sequence[str],
        name: str,
        content_type: str,
        metadata: Mapping[str, str],
    ) -> int | None:
        assert len(sources) <= 32, "Cloud Storage composes at most 32 objects"
        with self._lock:
            self.calls.append(("compose", bucket, name))
            if (bucket, name) in self.objects:
                return None
            missing = [source for source in sources if (bucket, source) not in self.objects]
            if missing:
                raise NotFound(f"gs://{bucket}/{missing[0]} does not exist")
            data = b"".join(self.objects[(bucket, source)].data for source in sources)
            self.objects[(bucket, name)] = StoredObject(data, content_type, dict(metadata))
        return len(data)

    def signed_url(self, bucket: str, name: str, ttl_s: int) -> str:
        with self._lock:
            self.calls.append(("signed_url", bucket, name))
        return f"https://storage.example.test/{bucket}/{name}?ttl={ttl_s}&signature=fake"


class UnseekableSink:
    """What a streaming upload looks like to a writer: write and tell, no seek."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self.largest_write = 0

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        self._size += len(data)
        self.largest_write = max(self.largest_write, len(data))
        return len(data)

    def tell(self) -> int:
        return self._size

    def flush(self) -> None:
        """Nothing to flush."""

    def data(self) -> bytes:
        return b"".join(self._parts)


# --------------------------------------------------------------------------- generator


@dataclass(frozen=True)
class GenerateCall:
    model: str
    prompt: str
    references: tuple[ReferenceImage, ...]
    seed: int
    options: dict[str, Any] = field(default_factory=dict)  # any further keyword arguments


Outcome = GeneratedImage | Exception


class FakeImageGenerator:
    """ImageGenerator scripted per (prompt, variant); unscripted calls return ``default``.

    The variant is the ``seed`` the generation service passes.
    """

    def __init__(self, default: GeneratedImage | None = None) -> None:
        self._lock = threading.Lock()
        self.default = default or GeneratedImage(
            data=png_bytes(), mime_type="image/png", usage={"total_tokens": 1290}
        )
        self.script: dict[tuple[str, int], list[Outcome]] = {}
        self.calls: list[GenerateCall] = []

    def on(self, prompt: str, variant: int, *outcomes: Outcome) -> FakeImageGenerator:
        """Queue outcomes for the next calls with this prompt and variant."""
        with self._lock:
            self.script.setdefault((prompt, variant), []).extend(outcomes)
        return self

    def count(self, prompt: str | None = None, variant: int | None = None) -> int:
        with self._lock:
            return sum(
                1
                for c in self.calls
                if (prompt is None or c.prompt == prompt) and (variant is None or c.seed == variant)
            )

    def generate(
        self,
        model: str,
        prompt: str,
        references: Sequence[ReferenceImage],
        seed: int,
        aspect_ratio: str | None = None,
        image_size: str | None = None,
        thinking_level: str | None = None,
    ) -> GeneratedImage:
        options = {
            "aspect_ratio": aspect_ratio,
            "image_size": image_size,
            "thinking_level": thinking_level,
        }
        with self._lock:
            self.calls.append(GenerateCall(model, prompt, tuple(references), seed, options))
            queue = self.script.get((prompt, seed))
            outcome: Outcome = queue.pop(0) if queue else self.default
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


# --------------------------------------------------------------------------- economy


class FakeEconomyBatches:
    """EconomyBatchStore in memory; ``update`` runs the change under a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.records: dict[str, EconomyBatch] = {}

    def create(self, batch: EconomyBatch) -> None:
        with self._lock:
            if batch.record_id in self.records:
                raise AssertionError(f"{batch.record_id} exists")
            self.records[batch.record_id] = batch.model_copy(deep=True)

    def get(self, record_id: str) -> EconomyBatch | None:
        with self._lock:
            record = self.records.get(record_id)
            return record.model_copy(deep=True) if record else None

    def open_batches(self, limit: int) -> list[EconomyBatch]:
        with self._lock:
            found = [r.model_copy(deep=True) for r in self.records.values() if r.open]
        return sorted(found, key=lambda r: (r.created_at, r.record_id))[:limit]

    def update(
        self, record_id: str, change: Callable[[EconomyBatch], tuple[EconomyBatch | None, R]]
    ) -> R:
        with self._lock:
            current = self.records.get(record_id)
            if current is None:
                raise NotFound(f"economy batch {record_id} does not exist")
            updated, result = change(current.model_copy(deep=True))
            if updated is not None:
                self.records[record_id] = updated.model_copy(deep=True)
            return result


@dataclass
class FakeGeminiBatch:
    name: str
    model: str
    display_name: str
    lines: list[EconomyLine]
    state: str = "pending"
    error: str | None = None
    # Per line: an image (the default), or an error in words.
    results: dict[str, LineResult] = field(default_factory=dict)


class FakeBatchRunner:
    """BatchRunner in memory: batches keep the state a test sets; results default
    to one image per line. ``fail_after`` makes ``results`` stop (a dead collector)
    after that many lines; ``line_delay_s`` makes each line slow to arrive."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.batches: dict[str, FakeGeminiBatch] = {}
        self.submits: list[str] = []
        self.submit_error: Exception | None = None
        self.fail_after: int | None = None
        self.line_delay_s = 0.0
        self.gets = 0
        self.result_reads = 0
        self.cancels: list[str] = []

    def submit(
        self, model: str, display_name: str, lines: Sequence[EconomyLine]
    ) -> tuple[str, bool]:
        with self._lock:
            if self.submit_error is not None:
                raise self.submit_error
            name = f"batches/{len(self.batches) + 1}"
            self.batches[name] = FakeGeminiBatch(name, model, display_name, list(lines))
            self.submits.append(name)
            return name, False

    def find(self, display_name: str) -> str | None:
        with self._lock:
            for batch in self.batches.values():
                if batch.display_name == display_name:
                    return batch.name
        return None

    def cancel(self, name: str) -> None:
        with self._lock:
            self.cancels.append(name)
            self.batches[name].state = "cancelled"

    def progress(self, name: str) -> BatchProgress:
        with self._lock:
            self.gets += 1
            batch = self.batches[name]
            return BatchProgress(batch.state, batch.error)  # type: ignore[arg-type]

    def results(self, name: str, each: Callable[[LineResult], None]) -> None:
        with self._lock:
            batch = self.batches[name]
            lines = list(batch.lines)
            results = dict(batch.results)
            stop = self.fail_after
            self.result_reads += 1
        for position, line in enumerate(lines):
            time.sleep(self.line_delay_s)
            if stop is not None and position >= stop:
                raise TransientError("the collector's connection dropped")
            each(
                results.get(
                    line.key,
                    LineResult(line.key, image=GeneratedImage(png_bytes(), "image/png", {})),
                )
            )

    def set_state(self, name: str, state: str, error: str | None = None) -> None:
        with self._lock:
            self.batches[name].state = state
            self.batches[name].error = error


# --------------------------------------------------------------------------- models


class FakeModelDirectory:
    """ModelDirectory answering from a set of retired models; records every lookup."""

    def __init__(self) -> None:
        self.retired: dict[str, str] = {}
        self.unreachable = False
        self.checks: list[str] = []

    def check(self, model: str) -> ModelCheck:
        self.checks.append(model)
        if self.unreachable:
            raise TransientError("model lookup: Gemini answered 503 UNAVAILABLE")
        if model in self.retired:
            return ModelCheck(available=False, reason=self.retired[model])
        return ModelCheck(available=True)


# --------------------------------------------------------------------------- quota


class FakeQuotaGate:
    """QuotaGate in memory on the production pure functions (``shared/domain/quota.py``)."""

    def __init__(self, images_per_minute: float = 0.0) -> None:
        self._lock = threading.Lock()
        self.interval = timedelta(seconds=60 / images_per_minute if images_per_minute else 0)
        self.states: dict[str, GateState] = {}
        self.reserved: list[tuple[str, datetime, float, Slot]] = []
        self.peeks: list[tuple[str, datetime]] = []
        self.closed: list[tuple[str, datetime, Limit]] = []

    def reserve(self, model: str, now: datetime, max_wait_s: float) -> Slot:
        with self._lock:
            state = self.states.get(model, GateState())
            updated, slot = quota.reserve(state, now, self.interval, timedelta(seconds=max_wait_s))
            if updated is not None:
                self.states[model] = updated
            self.reserved.append((model, now, max_wait_s, slot))
            return slot

    def peek(self, model: str, now: datetime) -> Slot:
        with self._lock:
            self.peeks.append((model, now))
            return quota.peek(self.states.get(model, GateState()), now, self.interval)

    def close(self, model: str, until: datetime, limit: Limit) -> None:
        with self._lock:
            updated, _ = quota.close(self.states.get(model, GateState()), until, limit)
            if updated is not None:
                self.states[model] = updated
            self.closed.append((model, until, limit))


# --------------------------------------------------------------------------- references


class FakeReferenceLoader:
    """ReferenceLoader answering from a mapping of URL to images or an error to raise."""

    def __init__(self, packs: Mapping[str, list[ReferenceImage] | Exception] | None = None) -> None:
        self.packs: dict[str, list[ReferenceImage] | Exception] = dict(packs or {})
        self.loads: list[str] = []

    def load(self, url: str) -> list[ReferenceImage]:
        self.loads.append(url)
        pack = self.packs.get(url)
        if pack is None:
            raise PermanentError(f"reference pack {url} not found")
        if isinstance(pack, Exception):
            raise pack
        return list(pack)


# --------------------------------------------------------------------------- sheet


@dataclass(frozen=True)
class RowWrite:
    spreadsheet_id: str
    worksheet: str
    scene_id: str
    cells: dict[str, Cell] = field(default_factory=dict)
    worksheet_id: int | None = None


class FakeSheetWriter:
    """SheetWriter recording ``write_row`` calls; queued ``errors`` are raised in turn.

    ``attempts`` has every call, ``writes`` only those that succeeded.
    ``on_write(write)`` (if set) runs at the start of each call; queued
    ``notes`` are returned by successful calls in turn.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.attempts: list[RowWrite] = []
        self.writes: list[RowWrite] = []
        self.errors: list[Exception] = []
        self.notes: list[str | None] = []
        self.on_write: Callable[[RowWrite], None] | None = None

    def write_row(
        self,
        spreadsheet_id: str,
        worksheet: str,
        scene_id: str,
        cells: Mapping[str, Cell],
        worksheet_id: int | None = None,
    ) -> str | None:
        write = RowWrite(spreadsheet_id, worksheet, scene_id, dict(cells), worksheet_id)
        if self.on_write is not None:
            self.on_write(write)
        with self._lock:
            self.attempts.append(write)
            error = self.errors.pop(0) if self.errors else None
            if error is None:
                self.writes.append(write)
                return self.notes.pop(0) if self.notes else None
        raise error

    def row(self, scene_id: str) -> dict[str, Cell]:
        """What the sheet row shows now: the cells of the last successful write."""
        with self._lock:
            for write in reversed(self.writes):
                if write.scene_id == scene_id:
                    return write.cells
        raise KeyError(scene_id)


SHEET_HEADER = [
    "scene_id",
    "prompt",
    "ref_pack_public_url",
    "variants",
    "status_img",
    *(f"nano_img_{n}" for n in range(1, 9)),
    "job_id",
]


class FakeSheetLayouts:
    """SheetLayouts over worksheets set up by the test, recording each read.

    ``sheets[(spreadsheet_id, worksheet)]`` is a layout, or an exception to raise.
    A worksheet not set up has ``SHEET_HEADER`` and a row for every scene asked for
    (``every_row``), so that tests about something else need no sheet of their own.
    """

    def __init__(self, every_row: bool = True) -> None:
        self.sheets: dict[tuple[str, str], SheetLayout | Exception] = {}
        self.reads: list[tuple[str, str]] = []
        self.every_row = every_row

    def put(
        self,
        spreadsheet_id: str,
        worksheet: str,
        scenes: list[str],
        header: list[str] | None = None,
        sheet_id: int | None = None,
    ) -> None:
        """A worksheet with ``header`` and one row per scene, in order."""
        self.sheets[(spreadsheet_id, worksheet)] = SheetLayout(
            list(header or SHEET_HEADER), ["scene_id", *scenes], sheet_id
        )

    def layout(self, spreadsheet_id: str, worksheet: str) -> SheetLayout:
        self.reads.append((spreadsheet_id, worksheet))
        found = self.sheets.get((spreadsheet_id, worksheet))
        if isinstance(found, Exception):
            raise found
        if found is not None:
            return found
        if not self.every_row:
            raise MissingWorksheet(f"no worksheet {worksheet!r} in the spreadsheet")
        return _EveryRow(list(SHEET_HEADER), ["scene_id"])


@dataclass(frozen=True)
class _EveryRow(SheetLayout):
    """A layout with one row (row 2) for whatever scene is asked for."""

    def rows_of(self, scene_id: str) -> list[int]:
        return [2]


class FakeDriveFolder:
    """A Drive folder in memory: files by their ``pipeline_key``, every call recorded."""

    def __init__(self, folders: Sequence[str] = ("folder_1",)) -> None:
        self.folders = set(folders)
        self.files: dict[str, tuple[str, str, bytes, str]] = {}  # key -> folder, name, ...
        self.calls: list[tuple[str, str]] = []
        self.fail_upload: Exception | None = None

    def check_folder(self, folder_id: str) -> None:
        self.calls.append(("check_folder", folder_id))
        if folder_id not in self.folders:
            raise PermanentError(f"folder {folder_id} is not shared with the service account")

    def find(self, folder_id: str, key: str) -> DriveFile | None:
        self.calls.append(("find", key))
        found = self.files.get(key)
        if found is None or found[0] != folder_id:
            return None
        return DriveFile(file_id=key, name=found[1], size=len(found[2]))

    def upload(
        self,
        folder_id: str,
        name: str,
        mime_type: str,
        key: str,
        write: Callable[[BinaryIO], None],
        description: str = "",
    ) -> DriveFile:
        self.calls.append(("upload", name))
        if self.fail_upload is not None:
            raise self.fail_upload
        out = io.BytesIO()
        write(out)
        self.files[key] = (folder_id, name, out.getvalue(), mime_type)
        return DriveFile(file_id=key, name=name, size=len(out.getvalue()))

    def names(self) -> list[str]:
        return sorted(name for _, name, _, _ in self.files.values())
