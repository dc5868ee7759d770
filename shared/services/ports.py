"""The small interfaces through which services reach the cloud, the network and
Pillow (one production adapter each, in ``shared.adapters``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, BinaryIO, Literal, Protocol, TypeVar

from shared.contracts.messages import ExportMessage, JobMessage
from shared.contracts.sheet_row import Cell
from shared.domain.batch import Batch
from shared.domain.briefs import Label
from shared.domain.economy_batches import EconomyBatch, EconomyBatchState
from shared.domain.job import Job
from shared.domain.quota import Limit, Slot
from shared.domain.request_records import RequestRecord

R = TypeVar("R")


@dataclass(frozen=True)
class Fence:
    """A write that applies only while this request still holds its idempotency
    record (``key``, ``holder``): in one atomic commit with a check of the record, so
    a request that lost its record (a retry or the sweeper took it over) commits
    nothing, and whoever took it over may safely undo what it reserved."""

    key: str
    holder: str


class FencedOut(Exception):
    """The request no longer holds its record: nothing was written."""


class JobStore(Protocol):
    """Batches and jobs (Firestore in production)."""

    def create_batch(self, batch: Batch, jobs: Sequence[Job], fence: Fence | None = None) -> None:
        """Record the batch and its jobs; what exists already (an earlier run of the
        same request recorded it) is kept as it is. With ``fence``, the batch is
        recorded together with a check that the request still holds its record
        (``FencedOut`` otherwise: nothing written)."""
        ...

    def get_batch(self, batch_id: str) -> Batch | None: ...

    def get_job(self, job_id: str) -> Job | None: ...

    def get_jobs(self, job_ids: Sequence[str]) -> list[Job]:
        """The jobs that exist among ``job_ids``, in that order."""
        ...

    def active_jobs(self, spreadsheet_id: str, worksheet: str) -> list[Job]:
        """Queued or generating jobs that write to this worksheet."""
        ...

    def economy_jobs(self, limit: int) -> list[Job]:
        """Unfinished economy-lane jobs, oldest first (some may have pending variants)."""
        ...

    def unstarted_jobs(self, created_before: datetime, limit: int) -> list[Job]:
        """Live jobs still queued (no delivery started them) made before
        ``created_before``, oldest first."""
        ...

    def overdue_jobs(self, created_before: datetime, limit: int) -> list[Job]:
        """Live jobs still generating that were made before ``created_before``, oldest
        first."""
        ...

    def queued_exports(self, limit: int) -> list[Batch]:
        """Batches whose export is still queued (no delivery started it)."""
        ...

    def unfollowed_jobs(self, changed_before: datetime, limit: int) -> list[Job]:
        """Jobs with follow-ups (budget settlement, sheet row) possibly not run since
        before ``changed_before``, oldest first."""
        ...

    def scene_jobs(self, spreadsheet_id: str, scene_id: str) -> list[Job]:
        """Every job of this scene in this spreadsheet (any worksheet)."""
        ...

    def unfollowed_in(self, spreadsheet_id: str, limit: int) -> list[Job]:
        """The spreadsheet's jobs with follow-ups (a row to write, say) not run yet,
        oldest change first."""
        ...

    def jobs_of_scenes(self, spreadsheet_id: str, scene_ids: Sequence[str]) -> list[Job]:
        """Every job of these scenes in this spreadsheet (any worksheet), in a few
        queries however many scenes."""
        ...

    def open_jobs(self, batch_id: str) -> int:
        """How many of the batch's jobs are still queued or generating (one count)."""
        ...

    def update_batch(self, batch_id: str, change: Callable[[Batch], tuple[Batch | None, R]]) -> R:
        """Like ``update_job``, for a batch; raises ``NotFound`` if it does not exist."""
        ...

    def update_job(
        self,
        job_id: str,
        change: Callable[[Job], tuple[Job | None, R]],
        fence: Fence | None = None,
    ) -> R:
        """Run ``change`` on the current job and write the job it returns (None: no write).
        With ``fence``, only while the request holds its record (``FencedOut``).

        Atomic per job by compare-and-set: when another writer got in first,
        ``change`` runs again on the newer job, so it must be a pure function of
        the job it is given; the result of the run that was written is returned.
        Raises ``NotFound`` if the job does not exist.
        """
        ...


class EconomyBatchStore(Protocol):
    """Our records of Gemini batches (Firestore ``economy_batches`` in production)."""

    def create(self, batch: EconomyBatch) -> None: ...

    def get(self, record_id: str) -> EconomyBatch | None: ...

    def open_batches(self, limit: int) -> list[EconomyBatch]:
        """Records with something left to do (not yet collected), oldest first."""
        ...

    def update(
        self, record_id: str, change: Callable[[EconomyBatch], tuple[EconomyBatch | None, R]]
    ) -> R:
        """As ``JobStore.update_job``: compare-and-set, ``change`` may run more than once."""
        ...


@dataclass(frozen=True)
class Usage:
    """What a caller has committed on one UTC day."""

    images: int = 0
    cost: Decimal = Decimal(0)


class BudgetLedger(Protocol):
    """Per-caller daily usage (``shared/domain/daily_usage.py``): a reservation before
    anything is recorded, then each image's settlement; every change once per key."""

    def usage(self, caller: str, day: str) -> Usage: ...

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
        """Reserve ``key`` unless a cap would be passed (a key reserved already answers
        yes, adding nothing); returns (ok, usage before). With ``fence``, only while
        the request holds its record (``FencedOut``)."""
        ...

    def release(self, caller: str, day: str, key: str, fence: Fence | None = None) -> None:
        """Give reservation ``key`` back, if it was made and not given back yet; with
        ``fence``, only while the request holds its record (``FencedOut``)."""
        ...

    def settle(self, caller: str, day: str, key: str, images: int, cost: Decimal) -> None:
        """Correct the day's usage by ``images``/``cost`` (often negative) once per ``key``:
        an image's reserved estimate becomes what it actually cost, or is given back
        for an image never made (``key``: job/n, or job/n/vk for later versions)."""
        ...


class IdempotencyStore(Protocol):
    """Records of requests that create something, by idempotency key
    (``shared/domain/request_records.py``)."""

    def begin(
        self,
        key: str,
        names: str,
        holder: str,
        now: datetime,
        expires_at: datetime,
        lease: timedelta,
    ) -> tuple[RequestRecord, bool]:
        """The key's record (made, naming ``names``, if there is none) and whether
        ``holder`` holds it now."""
        ...

    def note(
        self,
        key: str,
        holder: str,
        intent: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
    ) -> bool:
        """Record the intent or the prepared answer while ``holder`` holds the record."""
        ...

    def finish(self, key: str, holder: str, body: dict[str, Any]) -> bool: ...

    def let_go(self, key: str, holder: str) -> None: ...

    def abandon(self, key: str, holder: str) -> None:
        """Forget the record of a request that did nothing to keep (a refusal)."""
        ...

    def stale(self, now: datetime, limit: int) -> list[RequestRecord]:
        """Unanswered records nobody holds any more (their lease ran out), oldest first."""
        ...


class JobPublisher(Protocol):
    """Hands jobs to the generate function (Pub/Sub in production)."""

    def publish(self, messages: Sequence[tuple[JobMessage, Mapping[str, str]]]) -> dict[str, str]:
        """Publish all; return ``{job_id: error}`` for those that did not go out."""
        ...


class ExportPublisher(Protocol):
    """Hands a batch's hand-over zip to the exporter (Pub/Sub in production)."""

    def publish_export(self, message: ExportMessage) -> None:
        """Publish or raise ``TransientError``."""
        ...


class RowsQueue(Protocol):
    """Hands a spreadsheet to the fleet's one sheet writer (Pub/Sub in production)."""

    def flush(self, spreadsheet_id: str) -> None:
        """Ask for the spreadsheet's stale rows to be written; or raise ``TransientError``."""
        ...


class QuotaGate(Protocol):
    """The fleet's shared pace and gate for calls of one model (Firestore in production)."""

    def reserve(self, model: str, now: datetime, max_wait_s: float) -> Slot:
        """A call slot within ``max_wait_s``, or when one could be had
        (``shared/domain/quota.py``)."""
        ...

    def peek(self, model: str, now: datetime) -> Slot:
        """When the model's next call slot is (``reopens``), without taking it."""
        ...

    def close(self, model: str, until: datetime, limit: Limit) -> None:
        """Nobody calls the model before ``until``: it refused a call for quota."""
        ...


@dataclass(frozen=True)
class FoundObject:
    name: str
    metadata: Mapping[str, str]


class ObjectStore(Protocol):
    """Image objects (Cloud Storage in production)."""

    def find(self, bucket: str, prefix: str) -> FoundObject | None:
        """One object under ``prefix``, with its metadata, if any."""
        ...

    def create(
        self,
        bucket: str,
        name: str,
        data: bytes,
        content_type: str,
        metadata: Mapping[str, str],
    ) -> bool:
        """Create-only upload; False when the object already existed."""
        ...

    def read(self, bucket: str, name: str, max_bytes: int) -> bytes: ...

    def read_into(self, bucket: str, name: str, out: BinaryIO) -> None:
        """Copy the object into ``out`` a piece at a time (memory stays bounded
        whatever its size); ``NotFound`` if it does not exist."""
        ...

    def write_stream(
        self,
        bucket: str,
        name: str,
        content_type: str,
        metadata: Mapping[str, str],
        write: Callable[[BinaryIO], None],
    ) -> int | None:
        """Create-only streaming upload of what ``write`` writes (a resumable upload,
        a chunk at a time); the bytes written, or None when the object existed."""
        ...

    def compose(
        self,
        bucket: str,
        sources: Sequence[str],
        name: str,
        content_type: str,
        metadata: Mapping[str, str],
    ) -> int | None:
        """Create-only: the objects ``sources`` (at most 32) joined, in order, into
        ``name``; its size, or None when it existed. ``NotFound`` if a source is
        gone."""
        ...

    def signed_url(self, bucket: str, name: str, ttl_s: int) -> str: ...


ThumbFormat = Literal["jpeg", "webp"]
THUMBNAIL_CONTENT_TYPES: dict[ThumbFormat, str] = {"jpeg": "image/jpeg", "webp": "image/webp"}


@dataclass(frozen=True)
class ThumbnailSpec:
    """What to make: the longest side, the output format and the decode limit."""

    longest_side: int = 256
    format: ThumbFormat = "jpeg"
    quality: int = 85
    max_pixels: int = 50_000_000

    @property
    def content_type(self) -> str:
        return THUMBNAIL_CONTENT_TYPES[self.format]


class Thumbnailer(Protocol):
    """Makes a small image from untrusted image bytes (Pillow in production).

    Raises ``PermanentError`` for bytes that are no usable image.
    """

    def __call__(self, data: bytes, spec: ThumbnailSpec) -> bytes: ...


class ImageProbe(Protocol):
    """Checks untrusted bytes are an image we accept (Pillow in production)."""

    def __call__(self, data: bytes, max_pixels: int) -> str:
        """The image's MIME type; raises ``NotAnImage`` saying why it is none."""
        ...


@dataclass(frozen=True)
class ReferenceImage:
    data: bytes
    mime_type: str
    # What the image is to the model (a named character, product or the style);
    # None: a plain reference (a pack's image).
    label: Label | None = None


@dataclass(frozen=True)
class GeneratedImage:
    data: bytes
    mime_type: str
    usage: Mapping[str, int] = field(default_factory=dict)


class ImageGenerator(Protocol):
    """The image model (Gemini through google-genai in production).

    Raises ``TransientError`` for what a later delivery may fix and
    ``PermanentError`` (with the reason in words) for what it cannot.
    """

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
        """One image; ``aspect_ratio``/``image_size``/``thinking_level`` None leaves
        them to the model."""
        ...


@dataclass(frozen=True)
class ModelCheck:
    """Whether the backend serves a model, and if not, what it answered."""

    available: bool
    reason: str = ""


class ModelDirectory(Protocol):
    """The backend's list of models (google-genai's ``models.get`` in production)."""

    def check(self, model: str) -> ModelCheck:
        """Raises ``TransientError`` when the backend cannot tell right now."""
        ...


@dataclass(frozen=True)
class EconomyLine:
    """One request of a Gemini batch: one variant of one job."""

    key: str
    prompt: str
    references: Sequence[ReferenceImage]
    seed: int
    aspect_ratio: str | None = None
    image_size: str | None = None
    thinking_level: str | None = None


@dataclass(frozen=True)
class BatchProgress:
    """Where a Gemini batch is."""

    state: EconomyBatchState
    error: str | None = None


@dataclass(frozen=True)
class LineResult:
    """One line's outcome: its image, or why there is none (in words)."""

    key: str
    image: GeneratedImage | None = None
    error: str | None = None


class BatchRunner(Protocol):
    """Gemini's Batch API (google-genai's ``batches`` and ``files`` in production).

    Raises ``TransientError`` for what a later tick may fix and ``PermanentError``
    for a batch Gemini refuses.
    """

    def submit(
        self, model: str, display_name: str, lines: Sequence[EconomyLine]
    ) -> tuple[str, bool]:
        """Create the batch; (its name, whether its requests were sent inline). Never
        retried inside: an answer lost on the way may mean a batch that exists (look
        for it with ``find`` before creating another)."""
        ...

    def find(self, display_name: str) -> str | None:
        """The name of a batch created under ``display_name`` (after a crash), if any."""
        ...

    def progress(self, name: str) -> BatchProgress: ...

    def cancel(self, name: str) -> None:
        """Cancel a batch nobody will collect (created by a holder that lost its record)."""
        ...

    def results(self, name: str, each: Callable[[LineResult], None]) -> None:
        """Hand each line of a succeeded batch to ``each`` as it is read (one image
        in memory at a time)."""
        ...


class ReferenceLoader(Protocol):
    """Turns a scene's ``ref_pack_public_url`` into reference images."""

    def load(self, url: str) -> list[ReferenceImage]: ...


class SheetWriter(Protocol):
    """Writes a scene's row (Google Sheets through gspread in production)."""

    def write_row(
        self,
        spreadsheet_id: str,
        worksheet: str,
        scene_id: str,
        cells: Mapping[str, Cell],
        worksheet_id: int | None = None,
    ) -> str | None:
        """Write ``cells`` (by header name) into the row whose ``scene_id`` matches,
        on the tab ``worksheet_id`` names (whatever its name now; ``worksheet``
        when None).

        Returns a note when the row was written without some cells (say, the
        sheet has no ``nano_img_4`` column). Raises ``PermanentError`` for a
        missing row, sheet or access, and ``TransientError`` for quota and
        server errors.
        """
        ...


@dataclass(frozen=True)
class SheetLayout:
    """A worksheet as its rows are found: the header row and the ``scene_id``
    column, row 1 (the header) first."""

    header: list[str]
    keys: list[str]
    sheet_id: int | None = None  # the tab's id (it stays when the tab is renamed)

    def rows_of(self, scene_id: str) -> list[int]:
        """The row numbers (from 1) whose ``scene_id`` is ``scene_id``."""
        return [i for i, key in enumerate(self.keys, start=1) if i > 1 and key.strip() == scene_id]


class SheetLayouts(Protocol):
    """Reads a worksheet's layout (Google Sheets through gspread in production)."""

    def layout(self, spreadsheet_id: str, worksheet: str) -> SheetLayout:
        """The worksheet's header and ``scene_id`` column as they are now. Raises
        ``PermanentError`` for a missing worksheet or spreadsheet (or one not shared
        with us), ``TransientError`` for quota and server errors."""
        ...


@dataclass(frozen=True)
class RowUpdate:
    """One scene row's cells, as one of several written together."""

    worksheet: str
    scene_id: str
    cells: Mapping[str, Cell]
    worksheet_id: int | None = None  # the tab, by id (None: by name)


@dataclass(frozen=True)
class RowResult:
    """What became of one ``RowUpdate``: written (perhaps with a note) or an error."""

    note: str | None = None
    error: Exception | None = None


class RowsWriter(Protocol):
    """Writes many rows of one spreadsheet in one ``values:batchUpdate``."""

    def write_rows(self, spreadsheet_id: str, updates: Sequence[RowUpdate]) -> list[RowResult]:
        """One result per update, in order; a row that cannot be placed gets its
        ``PermanentError`` without keeping the others out. Raises
        ``TransientError`` when the whole call should be tried again."""
        ...


class NoticeLog(Protocol):
    """Which batch events were told, so each is sent once (``notices/{key}``)."""

    def sent(self, key: str) -> bool:
        """Whether the event was sent (or given up on for good)."""
        ...

    def claim(self, key: str, holder: str, now: datetime, lease: timedelta) -> bool:
        """Take the event to send it: True when it was not sent and no other holder's
        claim is live (a claim that ran out is taken over)."""
        ...

    def done(self, key: str, holder: str, now: datetime, error: str | None = None) -> None:
        """Record the event as sent (or, with ``error``, refused for good)."""
        ...


class TeamChannel(Protocol):
    """Where a batch's news goes: a Google Chat space's incoming webhook."""

    def post(self, text: str, request_id: str, thread_key: str) -> None:
        """Post ``text`` to the space, in the thread ``thread_key`` (one per batch).

        The same ``request_id`` posted again makes no second message (Chat keeps
        the first). Raises TransientError (timeouts, 429, 5xx: worth another try)
        or PermanentError (a refused webhook: recorded, never retried)."""
        ...


@dataclass(frozen=True)
class DriveFile:
    """A file in the team's Drive folder."""

    file_id: str
    name: str
    size: int | None = None


class DriveFolder(Protocol):
    """A Google Drive folder the team shared with the service account (Drive API v3)."""

    def check_folder(self, folder_id: str) -> None:
        """Raise PermanentError naming the folder when it does not exist, is not a
        folder, or is not shared with us for writing; TransientError to retry."""
        ...

    def find(self, folder_id: str, key: str) -> DriveFile | None:
        """The file of ``folder_id`` whose app property ``pipeline_key`` is ``key``
        (not trashed), if any: how a delivery knows it already put a file there."""
        ...

    def upload(
        self,
        folder_id: str,
        name: str,
        mime_type: str,
        key: str,
        write: Callable[[BinaryIO], None],
        description: str = "",
    ) -> DriveFile:
        """Upload one file with a resumable upload, its bytes as ``write`` streams them
        (chunk by chunk, memory bounded), tagged with ``key`` (app property
        ``pipeline_key``). TransientError / PermanentError as for every port."""
        ...
