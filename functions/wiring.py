"""Composition root: adapters and services, created lazily once per instance.

Heavy client libraries are imported inside the factory that needs them, so a
function only pays at cold start for what it uses.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any, BinaryIO

from shared.config.environment import get_settings
from shared.config.settings import Settings
from shared.contracts.links import LinkSigner

if TYPE_CHECKING:
    from shared.adapters.drive import GoogleDriveFolder
    from shared.adapters.firestore_store import (
        FirestoreBudgetLedger,
        FirestoreIdempotencyStore,
        FirestoreJobStore,
    )
    from shared.adapters.gcs_store import GcsObjectStore
    from shared.adapters.gemini import Backend
    from shared.adapters.identity import Authenticator
    from shared.adapters.pubsub_publisher import (
        PubSubExportPublisher,
        PubSubJobPublisher,
        PubSubRowsQueue,
    )
    from shared.adapters.references import PackReferenceLoader
    from shared.adapters.sheets import GspreadSheetWriter
    from shared.services.cancels import Cancels
    from shared.services.dead_letters import DeadLetters
    from shared.services.economy import Economy
    from shared.services.exports import Exporter, Exports
    from shared.services.generation import Generation
    from shared.services.intake import Intake
    from shared.services.ledger import JobLedger, Rows
    from shared.services.notices import Notices
    from shared.services.ports import DriveFile, SheetLayout
    from shared.services.preflight import Preflight
    from shared.services.rerolls import Rerolls
    from shared.services.reviews import Reviews
    from shared.services.sheet_rows import QueuedRows, SheetRows
    from shared.services.sheet_sync import SheetSync
    from shared.services.sweeper import Sweeper
    from shared.services.thumbnails import Thumbnails

SHEETS_SCOPES = ("https://www.googleapis.com/auth/spreadsheets",)


class _LazySheets:
    """SheetLayouts that builds the Sheets client when first asked."""

    def layout(self, spreadsheet_id: str, worksheet: str) -> SheetLayout:
        return sheets().layout(spreadsheet_id, worksheet)


MODEL_LOOKUP_TIMEOUT_S = 10.0


def settings() -> Settings:
    return get_settings()


@lru_cache(maxsize=1)
def job_store() -> FirestoreJobStore:
    from shared.adapters.firestore_store import FirestoreJobStore

    return FirestoreJobStore(firestore_client())


@lru_cache(maxsize=1)
def object_store() -> GcsObjectStore:
    from google.cloud import storage  # type: ignore[attr-defined]

    from shared.adapters.gcs_store import GcsObjectStore

    cfg = settings()
    return GcsObjectStore(
        storage.Client(project=cfg.google_cloud_project),
        cfg.signing_credentials_file,
        signed_url_reuse_s=cfg.signed_url_reuse_s,
    )


@lru_cache(maxsize=1)
def link_signer() -> LinkSigner:
    cfg = settings().require("public_base_url", "link_signing_key")
    return LinkSigner(cfg.link_signing_key, cfg.public_base_url)


@lru_cache(maxsize=1)
def sheets() -> GspreadSheetWriter:
    """The Sheets API client of this instance (reads layouts, writes rows)."""
    import gspread
    from google.auth import default
    from google.auth.credentials import AnonymousCredentials, Credentials

    from shared.adapters.sheets import GspreadSheetWriter
    from shared.adapters.sheets_session import GOOGLE_SHEETS_URL, SheetsSession

    cfg = settings()
    credentials: Credentials
    if cfg.sheets_api_url:
        # Like the *_EMULATOR_HOST settings of Google's clients: another endpoint
        # (the local protocol stub) gets no Google credentials.
        credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
    else:
        credentials, _ = default(scopes=list(SHEETS_SCOPES))
    session = SheetsSession(credentials, cfg.sheets_api_url or GOOGLE_SHEETS_URL)
    client = gspread.Client(auth=None, session=session)  # type: ignore[arg-type]
    client.set_timeout(30)
    return GspreadSheetWriter(client)


@lru_cache(maxsize=1)
def sheet_sync() -> SheetSync:
    from shared.adapters.sheet_coalescer import SheetCoalescer
    from shared.adapters.throttle import FleetPace, Limiter, WriteLimiter
    from shared.services.sheet_sync import SheetSync

    cfg = settings()
    # Concurrent requests of this instance share one coalescer and one write budget;
    # with a fleet pace, every instance's writes also share the quota's pace.
    limiter: Limiter = WriteLimiter(cfg.sheets_writes_per_minute)
    if cfg.sheets_fleet_writes_per_minute > 0:
        from shared.adapters.firestore_store import FirestoreQuotaGate

        gate = FirestoreQuotaGate(firestore_client(), cfg.sheets_fleet_writes_per_minute)
        limiter = FleetPace(gate, limiter)
    writer = SheetCoalescer(
        sheets(),
        limiter,
        window_s=cfg.sheets_coalesce_ms / 1000,
        timeout_s=cfg.sheets_write_timeout_s,
    )
    # The claim outlives the longest write: window, deadline, one last HTTP call.
    lease_s = cfg.sheets_coalesce_ms / 1000 + cfg.sheets_write_timeout_s + 90
    return SheetSync(job_store(), writer, link_signer(), lease_s=lease_s)


@lru_cache(maxsize=1)
def ledger() -> JobLedger:
    """Every change to a job, with the scene's row kept in step and the daily budget
    settled image by image."""
    from shared.services.ledger import JobLedger

    # Finished images settle the daily budget from their estimate to their cost;
    # images never made (failed, cancelled) give theirs back. With a sheet rows
    # topic, rows go to the fleet's one writer instead of being written here.
    rows: Rows = queued_rows() if settings().sheet_rows_topic else sheet_sync()
    return JobLedger(job_store(), rows, budget_ledger(), notices=notices())


@lru_cache(maxsize=1)
def rows_queue() -> PubSubRowsQueue:
    from shared.adapters.pubsub_publisher import PubSubRowsQueue

    client = publisher_client()
    topic = client.topic_path(settings().google_cloud_project, settings().sheet_rows_topic)
    return PubSubRowsQueue(client, topic)


@lru_cache(maxsize=1)
def queued_rows() -> QueuedRows:
    from shared.services.sheet_rows import QueuedRows

    return QueuedRows(job_store(), link_signer(), rows_queue())


@lru_cache(maxsize=1)
def sheet_rows() -> SheetRows:
    """The fleet's sheet writer: its ledger writes rows, never queues them again."""
    from shared.services.ledger import JobLedger
    from shared.services.sheet_rows import SheetRows

    writer = JobLedger(job_store(), sheet_sync(), budget_ledger(), notices=notices())
    return SheetRows(job_store(), writer, rows_queue())


@lru_cache(maxsize=1)
def notices() -> Notices | None:
    """Batch news to the team's Chat space; None when no webhook is configured."""
    cfg = settings()
    if not cfg.chat_webhook_url:
        return None
    from shared.adapters.chat import ChatWebhook
    from shared.adapters.firestore_store import FirestoreNoticeLog
    from shared.config.budgets import CHAT_POST_TIMEOUT_S
    from shared.services.notices import Notices

    return Notices(
        job_store(),
        FirestoreNoticeLog(firestore_client()),
        ChatWebhook(cfg.chat_webhook_url, timeout_s=CHAT_POST_TIMEOUT_S),
        cfg.notify_failure_share,
    )


@lru_cache(maxsize=1)
def budget_ledger() -> FirestoreBudgetLedger:
    from shared.adapters.firestore_store import FirestoreBudgetLedger

    return FirestoreBudgetLedger(firestore_client())


@lru_cache(maxsize=1)
def intake_ledger() -> JobLedger:
    """The HTTP function's ledger: it writes no sheet rows (the generate function does)."""
    from shared.services.ledger import JobLedger

    # A cancel can end a batch: its news goes out from here too.
    return JobLedger(job_store(), budget=budget_ledger(), notices=notices())


@lru_cache(maxsize=1)
def publisher_client() -> Any:
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    return pubsub_v1.PublisherClient()


@lru_cache(maxsize=1)
def job_publisher() -> PubSubJobPublisher:
    from shared.adapters.pubsub_publisher import PubSubJobPublisher

    client = publisher_client()
    return PubSubJobPublisher(
        client, client.topic_path(settings().google_cloud_project, settings().jobs_topic)
    )


@lru_cache(maxsize=1)
def firestore_client() -> Any:
    from google.cloud import firestore

    cfg = settings()
    return firestore.Client(project=cfg.google_cloud_project, database=cfg.firestore_database)


@lru_cache(maxsize=1)
def authenticator() -> Authenticator:
    from shared.adapters.identity import Authenticator, IdTokenVerifier

    cfg = settings()
    verifier = (
        IdTokenVerifier(
            cfg.id_token_audiences,
            cfg.id_token_certs_url,
            min_refetch_s=cfg.id_token_certs_min_refetch_s,
        )
        if cfg.id_token_audiences
        else None
    )
    return Authenticator(
        cfg.api_key_hashes, verifier, cfg.allowed_emails, cfg.allowed_domains, cfg.admin_callers
    )


def gemini_backend() -> Backend:
    """Where the model is, from the settings (an API key is needed only for the Gemini API)."""
    from shared.adapters.gemini import Backend

    cfg = settings()
    if cfg.gemini_backend == "vertex":
        return Backend(
            kind="vertex",
            project=cfg.google_cloud_project,
            location=cfg.vertex_location,
            base_url=cfg.vertex_base_url,
        )
    return Backend(kind="gemini_api", api_key=cfg.require("gemini_api_key").gemini_api_key)


@lru_cache(maxsize=1)
def preflight() -> Preflight:
    from shared.adapters.gemini import GeminiModelDirectory
    from shared.services.preflight import Preflight

    cfg = settings()
    # A lookup answers in well under a second; a slow one must not hold the request.
    directory = GeminiModelDirectory(gemini_backend(), timeout_s=MODEL_LOOKUP_TIMEOUT_S)
    return Preflight(directory, cfg.model_check_ttl_s)


@lru_cache(maxsize=1)
def idempotency_store() -> FirestoreIdempotencyStore:
    from shared.adapters.firestore_store import FirestoreIdempotencyStore

    return FirestoreIdempotencyStore(firestore_client())


@lru_cache(maxsize=1)
def intake() -> Intake:
    from shared.services.intake import Intake
    from shared.services.sheet_check import SheetCheck

    return Intake(
        settings(),
        job_store(),
        # The HTTP function writes no sheet rows: the script marks what it could not queue.
        intake_ledger(),
        job_publisher(),
        link_signer(),
        budget_ledger(),
        idempotency_store(),
        preflight(),
        # Reads the target worksheet once per batch: nothing is paid for that it
        # cannot show (gspread is imported on the first batch, not at cold start).
        SheetCheck(_LazySheets()),
    )


@lru_cache(maxsize=1)
def cancels() -> Cancels:
    from shared.services.cancels import Cancels

    return Cancels(job_store(), intake_ledger(), job_publisher())


@lru_cache(maxsize=1)
def rerolls() -> Rerolls:
    from shared.services.rerolls import Rerolls

    return Rerolls(
        settings(),
        job_store(),
        intake_ledger(),
        job_publisher(),
        budget_ledger(),
        idempotency_store(),
    )


@lru_cache(maxsize=1)
def exports() -> Exports:
    from shared.services.exports import Exports

    return Exports(job_store(), export_publisher(), link_signer())


@lru_cache(maxsize=1)
def export_publisher() -> PubSubExportPublisher:
    from shared.adapters.pubsub_publisher import PubSubExportPublisher

    client = publisher_client()
    topic = client.topic_path(settings().google_cloud_project, settings().exports_topic)
    return PubSubExportPublisher(client, topic)


@lru_cache(maxsize=1)
def exporter() -> Exporter:
    from shared.services.exports import Exporter

    return Exporter(
        settings(), job_store(), object_store(), drive=_LazyDrive(), publisher=export_publisher()
    )


class _LazyDrive:
    """The Drive folder port, its client made on the first Drive delivery only (a
    zip needs no Drive credentials)."""

    def check_folder(self, folder_id: str) -> None:
        drive_folder().check_folder(folder_id)

    def find(self, folder_id: str, key: str) -> DriveFile | None:
        return drive_folder().find(folder_id, key)

    def upload(
        self,
        folder_id: str,
        name: str,
        mime_type: str,
        key: str,
        write: Callable[[BinaryIO], None],
        description: str = "",
    ) -> DriveFile:
        return drive_folder().upload(folder_id, name, mime_type, key, write, description)


@lru_cache(maxsize=1)
def drive_folder() -> GoogleDriveFolder:
    """The team's Drive (Google's Drive API, or the dev stack's stub)."""
    from shared.adapters.drive import GoogleDriveFolder, drive_session

    base = settings().drive_api_url or "https://www.googleapis.com"
    return GoogleDriveFolder(drive_session(base), base)


@lru_cache(maxsize=1)
def reviews() -> Reviews:
    from shared.services.reviews import Reviews

    return Reviews(job_store(), intake_ledger())


@lru_cache(maxsize=1)
def generation() -> Generation:
    from shared.adapters.firestore_store import FirestoreQuotaGate
    from shared.adapters.gemini import GeminiImageGenerator
    from shared.adapters.image_check import image_mime
    from shared.services.generation import Generation

    cfg = settings()
    return Generation(
        settings=cfg,
        ledger=ledger(),
        objects=object_store(),
        generator=GeminiImageGenerator(
            gemini_backend(),
            cfg.gemini_timeout_s,
            cfg.gemini_retry_attempts,
            cfg.gemini_retry_max_delay_s,
            cfg.image_max_pixels,
        ),
        references=reference_loader(),
        quota=FirestoreQuotaGate(firestore_client(), cfg.gemini_images_per_minute),
        probe=image_mime,
    )


@lru_cache(maxsize=1)
def reference_loader() -> PackReferenceLoader:
    from shared.adapters.netguard import SafeFetcher
    from shared.adapters.references import PackLimits, PackReferenceLoader

    cfg = settings()
    limits = PackLimits(
        max_bytes=cfg.reference_max_bytes,
        # One pack may fill the call of the catalog's model that takes the most
        # (within this deployment's own cap); generation cuts the references to
        # the job's model's limit.
        max_images=min(
            cfg.reference_max_images,
            max(entry.max_reference_images for entry in cfg.catalog.models.values()),
        ),
        max_pixels=cfg.image_max_pixels,
        timeout_s=cfg.reference_timeout_s,
        cache_bytes=cfg.reference_cache_bytes,
        fresh_s=cfg.reference_cache_fresh_s,
        max_members=cfg.reference_max_zip_members,
        max_unpacked_bytes=cfg.reference_max_unpacked_bytes,
        gcs_prefix=cfg.references_prefix,
    )
    return PackReferenceLoader(
        object_store(),
        cfg.images_bucket,
        SafeFetcher(max_redirects=cfg.reference_max_redirects),
        limits,
    )


@lru_cache(maxsize=1)
def economy() -> Economy:
    """The economy lane's tick: Gemini's Batch API through google-genai."""
    from shared.adapters.firestore_store import FirestoreEconomyBatches
    from shared.adapters.gemini_batches import GeminiBatchRunner
    from shared.adapters.image_check import image_mime
    from shared.services.economy import Economy

    cfg = settings()
    return Economy(
        settings=cfg,
        ledger=ledger(),
        store=job_store(),
        batches=FirestoreEconomyBatches(firestore_client()),
        runner=GeminiBatchRunner(
            gemini_backend(),
            cfg.gemini_timeout_s,
            cfg.economy_inline_max_bytes,
            cfg.image_max_pixels,
        ),
        references=reference_loader(),
        objects=object_store(),
        # What an expired batch did not make goes on in the live lane.
        publisher=job_publisher(),
        probe=image_mime,
    )


@lru_cache(maxsize=1)
def thumbnails() -> Thumbnails:
    from shared.adapters.imaging import DecodeSlots, make_thumbnail
    from shared.services.thumbnails import Thumbnails

    cfg = settings()
    thumbnailer = DecodeSlots(make_thumbnail, cfg.thumbnail_decode_slots)
    return Thumbnails(cfg, ledger(), object_store(), thumbnailer)


@lru_cache(maxsize=1)
def dead_letters() -> DeadLetters:
    from shared.services.dead_letters import DeadLetters

    # The images bucket too: an image stored but not recorded is kept, not failed.
    return DeadLetters(ledger(), settings(), object_store())


@lru_cache(maxsize=1)
def sweeper() -> Sweeper:
    """Finishes (or undoes) requests nobody retried, and publishes lost jobs again."""
    from shared.services.sweeper import Sweeper

    return Sweeper(
        settings(),
        job_store(),
        ledger(),
        idempotency_store(),
        budget_ledger(),
        job_publisher(),
        export_publisher(),
    )
