"""The hand-over zip of a batch: asked for over HTTP, written in the background.

A request fixes the zip's contents: the images that exist then, every version,
recorded with the export (``handover.pack``). A request once the batch has
changed (a re-roll finished, say) gets a new zip; one while nothing changed gets
the zip still being made.

The exporter streams exactly those images, one at a time, from the images bucket
into one zip that is itself uploaded as a stream (a resumable upload, a chunk at
a time), so its memory stays bounded whatever the batch's size. The zip holds
``{scene_id}/var_{n}[_v{k}].{ext}`` at full size and a ``manifest.csv``; its
counts are of those images, never of the jobs as they are by then.
"""

from __future__ import annotations

import csv
import io
import logging
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import IO, BinaryIO

from shared.config.settings import Settings
from shared.contracts.answers import ExportView
from shared.contracts.links import LinkSigner
from shared.contracts.messages import ExportMessage
from shared.contracts.objects import ObjectNames
from shared.domain import handover
from shared.domain.batch import Batch
from shared.domain.errors import NotFound, PermanentError, TransientError
from shared.domain.ids import new_id, utcnow
from shared.domain.job import Job, Version
from shared.services.ports import ExportPublisher, JobStore, ObjectStore
from shared.services.stored_images import object_names
from shared.services.views import export_view

log = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = (
    "scene",
    "variant",
    "version",
    "prompt",
    "instruction",
    "model",
    "cost",
    "created",
    "file",
)
ZIP_CONTENT_TYPE = "application/zip"


@dataclass(frozen=True)
class Exports:
    """The HTTP function's side: ask for a zip, and find the one a link names."""

    store: JobStore
    publisher: ExportPublisher
    links: LinkSigner
    clock: Callable[[], datetime] = utcnow
    ids: Callable[[str], str] = new_id

    def request(self, batch_id: str, caller: str, admin: bool = False) -> ExportView | None:
        """Queue a zip of the batch's images as they are now (or answer the one still
        being made of the same images); None if the batch is missing or someone
        else's. Raises TransientError if it cannot be queued."""
        batch = self.store.get_batch(batch_id)
        if batch is None or (batch.caller != caller and not admin):
            return None
        members = handover.members_of(self.store.get_jobs(batch.job_ids))
        export_id = self.ids("exp")
        export, created = self.store.update_batch(
            batch_id, lambda b: handover.request(b, export_id, caller, self.clock(), members)
        )
        message = ExportMessage(batch_id=batch_id, export_id=export.export_id)
        if created:
            try:
                self.publisher.publish_export(message)
            except Exception as exc:
                reason = f"could not be queued: {exc}"
                self.store.update_batch(
                    batch_id, lambda b: handover.fail(b, export_id, reason, self.clock())
                )
                raise
            log.info(
                "export requested",
                extra={
                    "batch_id": batch_id,
                    "event": "export_requested",
                    "export": export_id,
                    "images": len(members),
                },
            )
        elif export.state == "queued":
            # Asked again while no delivery has started it: its message may never have
            # gone out (the first request died right after recording it). A duplicate
            # is harmless: the exporter records one zip per export.
            try:
                self.publisher.publish_export(message)
            except TransientError:
                log.warning("export not queued again", extra={"batch_id": batch_id}, exc_info=True)
        return export_view(batch_id, export, self.links)

    def finished_zip(self, batch_id: str, export_id: str) -> str | None:
        """The object of a finished zip, if this is the batch's latest."""
        batch = self.store.get_batch(batch_id)
        export = batch.export if batch is not None else None
        if export is None or export.export_id != export_id or export.state != "done":
            return None
        return export.object_name


@dataclass(frozen=True)
class Entry:
    """One image of the zip, with its manifest row."""

    path: str  # inside the zip
    object_name: str
    row: dict[str, str]


def entries_of(members: Sequence[handover.Member], jobs: Sequence[Job]) -> list[Entry]:
    """The zip's images, those ``members`` name, in their order. An image stays what
    it was once made (its object and row never change), so reading the jobs now
    finds what the request saw; one no longer in them is left out, with a warning."""
    by_id = {job.job_id: job for job in jobs}
    entries = []
    for member in members:
        job = by_id.get(member.job_id)
        try:
            slot = job.slot(member.n, member.version) if job is not None else None
        except KeyError:
            slot = None
        if job is None or slot is None or not slot.kept or slot.object_name is None:
            log.warning(
                "image of the export no longer recorded; left out",
                extra={"job_id": member.job_id, "variant": member.n, "version": member.version},
            )
            continue
        path = ObjectNames.zip_member(job.scene_id, member.n, member.version, slot.object_name)
        made = slot.generated_at or slot.done_at or job.created_at
        entries.append(
            Entry(
                path,
                slot.object_name,
                {
                    "scene": job.scene_id,
                    "variant": str(member.n),
                    "version": str(member.version),
                    "prompt": job.prompt,
                    "instruction": (slot.instruction or "") if isinstance(slot, Version) else "",
                    "model": slot.model or job.model,
                    "cost": slot.cost_usd or "",
                    "created": made.isoformat(),
                    "file": path,
                },
            )
        )
    return entries


def write_zip(
    out: BinaryIO,
    entries: Sequence[Entry],
    copy: Callable[[str, BinaryIO], None],
    time_left: Callable[[], bool] = lambda: True,
) -> int:
    """The zip, member by member, into an unseekable stream; how many images it holds.

    ``copy(object_name, member)`` streams one image into its member. An image that
    is gone by now is left out (and out of the manifest), with a warning. When
    ``time_left()`` says no before an image, the zip is abandoned (PermanentError).
    """
    rows = []
    with zipfile.ZipFile(out, "w", allowZip64=True) as archive:
        for done, entry in enumerate(entries):
            if not time_left():
                raise PermanentError(
                    f"the batch is too large to zip within EXPORT_DEADLINE_S: "
                    f"{done} of {len(entries)} images were written"
                )
            info = zipfile.ZipInfo(entry.path, date_time=_zip_time(entry.row["created"]))
            # Images are compressed already: stored as they are, no CPU spent.
            info.compress_type = zipfile.ZIP_STORED
            member = _Member(archive, info)
            try:
                copy(entry.object_name, member)  # type: ignore[arg-type]
            except NotFound:
                # Raised before any byte arrives, so no member was started.
                log.warning("image gone; left out of the zip", extra={"object": entry.object_name})
                continue
            except BaseException:
                # Close the member first: otherwise closing the zip on the way out
                # raises a ValueError of its own that hides this error.
                member.close()
                raise
            member.close()
            rows.append(entry.row)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(_safe(row) for row in rows)
        archive.writestr(MANIFEST, text.getvalue(), compress_type=zipfile.ZIP_DEFLATED)
    return len(rows)


class _Member:
    """A zip member opened on its first byte, so an image that turns out to be gone
    leaves no empty member behind."""

    def __init__(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
        self._archive = archive
        self._info = info
        self._out: IO[bytes] | None = None

    def write(self, data: bytes) -> int:
        if self._out is None:
            self._out = self._archive.open(self._info, "w")
        return self._out.write(data)

    def flush(self) -> None:
        """Members are written through as the data comes."""

    def close(self) -> None:
        if self._out is None:  # an empty image
            self._out = self._archive.open(self._info, "w")
        self._out.close()


def _safe(row: dict[str, str]) -> dict[str, str]:
    """Cells a spreadsheet would run as formulas get a leading apostrophe."""
    return {k: ("'" + v if v[:1] in ("=", "+", "-", "@") else v) for k, v in row.items()}


def _zip_time(iso: str) -> tuple[int, int, int, int, int, int]:
    moment = datetime.fromisoformat(iso)
    return (
        max(moment.year, 1980),
        moment.month,
        moment.day,
        moment.hour,
        moment.minute,
        moment.second,
    )


@dataclass(frozen=True)
class Exporter:
    """The export function's work: one message, one zip, exactly one record of it."""

    settings: Settings
    store: JobStore
    objects: ObjectStore
    clock: Callable[[], datetime] = utcnow

    def handle(self, message: ExportMessage) -> None:
        """Write the zip and record it; raises (TransientError) to be retried."""
        context: dict[str, object] = {"batch_id": message.batch_id, "export": message.export_id}
        batch = self.store.get_batch(message.batch_id)
        if batch is None:
            log.error("batch not found; export dropped", extra=context)
            return
        started = self.store.update_batch(
            batch.batch_id, lambda b: handover.start(b, message.export_id, self.clock())
        )
        if started is None:
            log.info("export finished or superseded; message dropped", extra=context)
            return
        if started.contents is None:
            reason = "it was asked for before zips recorded their images: ask for it again"
            self.store.update_batch(
                batch.batch_id,
                lambda b: handover.fail(b, message.export_id, reason, self.clock()),
            )
            log.warning("export failed", extra={**context, "error": reason})
            return
        members = handover.unpack(started.contents)
        self._write(batch, message.export_id, started.deliveries, members, context)

    def _write(
        self,
        batch: Batch,
        export_id: str,
        delivery: int,
        members: Sequence[handover.Member],
        context: dict[str, object],
    ) -> None:
        cfg = self.settings
        bucket = cfg.images_bucket
        # This delivery's own zip, recorded with what this delivery wrote into it: one
        # left by a delivery that died (or by a duplicate still writing) is not ours to
        # count, so it is never recorded.
        name = object_names(cfg).export(batch.batch_id, export_id, delivery)
        job_ids = list(dict.fromkeys(member.job_id for member in members))
        entries = entries_of(members, self.store.get_jobs(job_ids))
        counted: list[int] = []
        metadata = {"batch_id": batch.batch_id, "export_id": export_id}

        def copy(object_name: str, member: BinaryIO) -> None:
            self.objects.read_into(bucket, object_name, member)

        deadline = time.monotonic() + cfg.export_deadline_s

        def write(out: BinaryIO) -> None:
            counted.append(write_zip(out, entries, copy, lambda: time.monotonic() < deadline))

        try:
            size = self.objects.write_stream(bucket, name, ZIP_CONTENT_TYPE, metadata, write)
        except PermanentError as exc:
            reason = f"the zip could not be written: {exc}"
            self.store.update_batch(
                batch.batch_id, lambda b: handover.fail(b, export_id, reason, self.clock())
            )
            log.warning("export failed", extra={**context, "error": reason})
            return
        if size is None or not counted:
            # Our name was taken (it cannot be, each delivery has its own): a
            # redelivery writes another.
            raise TransientError(f"the zip {name} exists already")
        images = counted[0]
        self.store.update_batch(
            batch.batch_id,
            lambda b: handover.finish(b, export_id, name, images, size, self.clock()),
        )
        log.info(
            "export done",
            extra={
                **context,
                "event": "export_done",
                "object": name,
                "images": images,
                "bytes": size,
            },
        )
