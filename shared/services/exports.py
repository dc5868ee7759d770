"""The hand-over of a batch: asked for over HTTP, written in the background, as one
zip or into the team's Google Drive folder.

A request fixes what is handed over: the images it selects then (every kept one,
the approved ones, or each scene's final pick; ``shared/domain/reviews.py``),
recorded with the export (``handover.pack``), and how files are named (a template
of the image's and its row's fields). A request once the batch has changed (a
re-roll finished, say) gets a new export; one while nothing changed gets the one
still being made.

A Drive delivery puts one file per image, byte for byte as Gemini made it (its
SynthID and any C2PA data intact), and a manifest (CSV and JSON), each tagged
with the image it is (``pipeline_key``): a file already in the folder is not
made again, so a second delivery of the same images adds nothing, and one that
ran out of time is finished by the next (one delivery at a time).

The exporter streams exactly those images, a few read ahead, from the images
bucket into one zip that is itself uploaded as a stream (a resumable upload, a
chunk at a time), so its memory stays bounded whatever the batch's size. A zip
that does not fit in one delivery's deadline is written in parts, one per
delivery, each queuing the next, and joined by Cloud Storage at the end
(``shared/services/zip_parts.py``). The zip holds
``{scene_id}/var_{n}[_v{k}].{ext}`` at full size and a ``manifest.csv``; its
counts are of those images, never of the jobs as they are by then.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import time
import zipfile
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO, BinaryIO

from shared.config.settings import Settings
from shared.contracts.answers import ExportView
from shared.contracts.links import LinkSigner
from shared.contracts.messages import ExportMessage
from shared.contracts.objects import ObjectNames
from shared.contracts.requests import ExportRequest
from shared.domain import handover
from shared.domain.batch import Batch, Export
from shared.domain.briefs import TemplateError
from shared.domain.errors import NotFound, PermanentError, TransientError
from shared.domain.ids import new_id, utcnow
from shared.domain.job import ImageSlot, Job, Version
from shared.services.ports import DriveFolder, ExportPublisher, JobStore, ObjectStore
from shared.services.stored_images import object_names
from shared.services.views import export_view
from shared.services.zip_parts import At, PartRecord, compose_rounds

log = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
MANIFEST_JSON = "manifest.json"
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
    "template",
    "references",
    "size",
    "lane",
    "decision",
    "decided_by",
    "final",
)
ZIP_CONTENT_TYPE = "application/zip"
# A part's record: its images' zip entries and manifest rows (a few hundred bytes each).
PART_RECORD_MAX = 64 * 1024 * 1024
# Reading the parts' records and joining them, at most (a compose call may take two
# minutes on very large parts).
JOIN_RESERVE_S = 180.0
# A Drive delivery holds its export this long past the function's timeout (the
# longest it can live): only a delivery that surely ended is taken over.
DRIVE_LEASE_MARGIN_S = 60.0


@dataclass(frozen=True)
class ExportRefusal:
    """An export that cannot be made as asked (400): the field and why."""

    field: str
    reason: str


@dataclass(frozen=True)
class Exports:
    """The HTTP function's side: ask for a zip, and find the one a link names."""

    store: JobStore
    publisher: ExportPublisher
    links: LinkSigner
    clock: Callable[[], datetime] = utcnow
    ids: Callable[[str], str] = new_id

    def request(
        self,
        batch_id: str,
        caller: str,
        admin: bool = False,
        asked: ExportRequest | None = None,
    ) -> ExportView | ExportRefusal | None:
        """Queue an export of the batch's images as ``asked`` selects them now (or
        answer the one still being made of the same images, named and delivered the
        same way); None if the batch is missing or someone else's. Raises
        TransientError if it cannot be queued."""
        batch = self.store.get_batch(batch_id)
        if batch is None or (batch.caller != caller and not admin):
            return None
        asked = asked or ExportRequest()
        jobs = self.store.get_jobs(batch.job_ids)
        members = handover.members_of(jobs, asked.only)
        if not members and asked.only != "all":
            what = "approved" if asked.only == "approved" else "picked as final"
            return ExportRefusal("only", f"no image of batch {batch_id} is {what} yet")
        if asked.name_template is not None:
            try:
                entries_of(members, jobs, asked.name_template)
            except TemplateError as exc:
                return ExportRefusal("name_template", str(exc))
        spec = handover.Spec(
            asked.only, asked.name_template, asked.destination, asked.drive_folder_id
        )
        export_id = self.ids("exp")
        export, created = self.store.update_batch(
            batch_id,
            lambda b: handover.request(b, export_id, caller, self.clock(), members, spec),
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
    """One image of the export, with its manifest row."""

    path: str  # inside the zip; the file's name in Drive (``/`` as ``_``)
    object_name: str
    row: dict[str, str]
    key: str  # which image it is: job, variant, version

    @property
    def drive_name(self) -> str:
        return self.path.replace("/", "_")


def entries_of(
    members: Sequence[handover.Member], jobs: Sequence[Job], name_template: str | None = None
) -> list[Entry]:
    """The export's images, those ``members`` name, in their order, named by
    ``name_template`` (TemplateError, naming the scene, for a column a row lacks).
    An image stays what it was once made (its object and row never change), so
    reading the jobs now finds what the request saw; one no longer in them is left
    out, with a warning."""
    by_id = {job.job_id: job for job in jobs}
    found: list[tuple[handover.Member, Job, ImageSlot]] = []
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
        found.append((member, job, slot))
    paths = []
    for member, job, slot in found:
        assert slot.object_name is not None
        if name_template is None:
            paths.append(
                ObjectNames.zip_member(job.scene_id, member.n, member.version, slot.object_name)
            )
            continue
        try:
            stem = handover.file_stem(name_template, job, member.n, member.version, slot)
        except TemplateError as exc:
            raise TemplateError(f"scene {job.scene_id}: {exc}") from None
        paths.append(f"{stem}.{slot.object_name.rsplit('.', 1)[-1]}")
    entries = []
    for (member, job, slot), path in zip(found, handover.unique(paths), strict=True):
        assert slot.object_name is not None
        made = slot.generated_at or slot.done_at or job.created_at
        version = slot if isinstance(slot, Version) else None
        final = job.final is not None and (job.final.variant, job.final.version) == (
            member.n,
            member.version,
        )
        entries.append(
            Entry(
                path,
                slot.object_name,
                {
                    "scene": job.scene_id,
                    "variant": str(member.n),
                    "version": str(member.version),
                    "prompt": job.prompt,
                    "instruction": (version.instruction or "") if version else "",
                    "model": slot.model or job.model,
                    "cost": slot.cost_usd or "",
                    "created": made.isoformat(),
                    "file": path,
                    "template": job.template.name if job.template else "",
                    "references": "; ".join(
                        [f"{r.role} {r.name}: {r.ref}" for r in job.references]
                        + [f"style: {ref}" for ref in job.style_refs]
                        + ([f"pack: {job.ref_pack_public_url}"] if job.ref_pack_public_url else [])
                        + (
                            [f"image: {version.source_object}"]
                            if version and version.source_object
                            else []
                        )
                    ),
                    "size": (version.image_size if version else None) or job.image_size or "",
                    "lane": "live" if version else job.lane,
                    "decision": slot.review.decision if slot.review else "",
                    "decided_by": slot.review.by if slot.review else "",
                    "final": "yes" if final else "",
                },
                f"{job.job_id}/{member.n}/{member.version}",
            )
        )
    return entries


def manifests(rows: Sequence[dict[str, str]]) -> tuple[bytes, bytes]:
    """The manifest as CSV (formula-safe, for a spreadsheet) and as JSON."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(_safe(row) for row in rows)
    as_json = json.dumps({"images": list(rows)}, indent=1, ensure_ascii=False)
    return text.getvalue().encode(), as_json.encode()


@dataclass(frozen=True)
class Written:
    """What one delivery wrote of a zip: its images' entries and rows, how many of
    the export's entries it went through, and whether it ended the zip."""

    infos: list[zipfile.ZipInfo]
    rows: list[dict[str, str]]
    went_through: int
    last: bool


def write_zip(
    out: BinaryIO,
    entries: Sequence[Entry],
    copy: Callable[[str, BinaryIO], None],
    time_left: Callable[[], bool] = lambda: True,
    start: int = 0,
    earlier: Callable[[], Sequence[PartRecord]] = list,
) -> Written:
    """The zip, member by member, into an unseekable stream, ``start`` bytes into the
    whole zip (after the ``earlier`` parts).

    ``copy(object_name, member)`` streams one image into its member. An image that
    is gone by now is left out (and out of the manifest), with a warning. When
    ``time_left()`` says no before an image (never before the first), the part ends
    there without a central directory: the next delivery goes on after it. The
    part that writes the last image ends the zip: the manifests and the central
    directory of every image of every part.
    """
    rows: list[dict[str, str]] = []
    at = At(out, start)
    with zipfile.ZipFile(at, "w", allowZip64=True) as archive:  # type: ignore[call-overload]
        for done, entry in enumerate(entries):
            if done and not time_left():
                at.cut = True  # no central directory in a part that is not the last
                return Written(list(archive.filelist), rows, done, last=False)
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
                at.cut = True
                raise
            member.close()
            rows.append(entry.row)
        written = list(archive.filelist)
        before = list(earlier())
        # The central directory lists every part's images, in the zip's order.
        archive.filelist[:0] = [info for part in before for info in part.infos]
        every = [row for part in before for row in part.rows] + rows
        as_csv, as_json = manifests(every)
        archive.writestr(MANIFEST, as_csv, compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr(MANIFEST_JSON, as_json, compress_type=zipfile.ZIP_DEFLATED)
    return Written(written, rows, len(entries), last=True)


class ReadAhead:
    """The zip's images read a few ahead, in parallel, while the one before is
    written (one read at a time waited on each object's latency). Memory: at most
    ``ahead`` images. ``copy`` must be called for the names in their order. With
    ``ahead`` 1, each image is streamed in the caller's thread as it is copied."""

    CHUNK = 32 * 1024  # written through to the upload as it comes

    def __init__(
        self,
        read: Callable[[str], bytes],
        names: Sequence[str],
        ahead: int,
        stream: Callable[[str, BinaryIO], None] | None = None,
    ) -> None:
        self._read = read
        self._stream = stream if ahead <= 1 else None
        self._names = list(names)
        self._ahead = max(1, ahead)
        # Streamed in the caller's thread at ``ahead`` 1: no pool.
        self._pool = (
            None
            if self._stream is not None
            else ThreadPoolExecutor(self._ahead, thread_name_prefix="zip-read")
        )
        self._pending: deque[tuple[str, Future[bytes]]] = deque()
        self._next = 0

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        for _, future in self._pending:
            future.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def copy(self, object_name: str, member: BinaryIO) -> None:
        """Write the image into its member; NotFound (before any byte) if it is gone."""
        if self._stream is not None:
            self._stream(object_name, member)
            return
        while self._next < len(self._names) and len(self._pending) < self._ahead:
            name = self._names[self._next]
            assert self._pool is not None  # only a stream has none
            self._pending.append((name, self._pool.submit(self._read, name)))
            self._next += 1
        if not self._pending or self._pending[0][0] != object_name:
            raise ValueError(f"{object_name} copied out of order")
        _, future = self._pending.popleft()
        data = future.result()
        for start in range(0, len(data), self.CHUNK):
            member.write(data[start : start + self.CHUNK])


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
    # The team's Drive (None where no Drive delivery is possible: a zip only).
    drive: DriveFolder | None = None
    # Queues the delivery that goes on with a zip too large for one (None: Pub/Sub's
    # redelivery of this one does).
    publisher: ExportPublisher | None = None

    def handle(self, message: ExportMessage) -> None:
        """Write the zip (or the Drive files) and record it; raises (TransientError)
        to be retried."""
        context: dict[str, object] = {"batch_id": message.batch_id, "export": message.export_id}
        batch = self.store.get_batch(message.batch_id)
        if batch is None:
            log.error("batch not found; export dropped", extra=context)
            return
        asked = batch.export
        if asked is not None and (asked.export_id, asked.destination) == (
            message.export_id,
            "drive",
        ):
            self._deliver(batch.batch_id, message.export_id, context)
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
        self._write(batch, started, members, context)

    def _write(
        self,
        batch: Batch,
        export: Export,
        members: Sequence[handover.Member],
        context: dict[str, object],
    ) -> None:
        """Write the next part of the zip: to its end (then join the parts and record
        the zip), or as far as the deadline allows (then record the part and queue
        the next delivery)."""
        cfg = self.settings
        bucket, export_id = cfg.images_bucket, export.export_id
        names = object_names(cfg)
        # This delivery's own object, recorded with what this delivery wrote into it:
        # one left by a delivery that died (or by a duplicate still writing) is not
        # ours to count, so it is never recorded.
        name = names.export(batch.batch_id, export_id, export.deliveries)
        job_ids = list(dict.fromkeys(member.job_id for member in members))
        entries = entries_of(members, self.store.get_jobs(job_ids))[export.written :]
        parts_before = list(export.parts)
        made: list[Written] = []
        metadata = {"batch_id": batch.batch_id, "export_id": export_id}

        # A delivery after parts may have to join them: that time comes out of its
        # deadline, so the longest path stays as budgeted (shared/config/budgets.py).
        reserve = JOIN_RESERVE_S if parts_before else 0.0
        deadline = time.monotonic() + max(0.0, cfg.export_deadline_s - reserve)
        ahead = ReadAhead(
            lambda object_name: self._read(bucket, object_name),
            [entry.object_name for entry in entries],
            cfg.export_read_ahead,
            lambda object_name, member: self.objects.read_into(bucket, object_name, member),
        )

        records: list[PartRecord] = []

        def earlier() -> list[PartRecord]:
            if len(records) < len(parts_before):
                records[:] = [self._part_record(bucket, part) for part in parts_before]
            return records

        def write(out: BinaryIO) -> None:
            made.append(
                write_zip(
                    out,
                    entries,
                    ahead.copy,
                    lambda: time.monotonic() < deadline,
                    start=export.offset,
                    earlier=earlier,
                )
            )

        try:
            with ahead:
                size = self.objects.write_stream(bucket, name, ZIP_CONTENT_TYPE, metadata, write)
        except PermanentError as exc:
            self._failed(batch.batch_id, export_id, f"the zip could not be written: {exc}", context)
            return
        if size is None or not made:
            # Our name was taken (it cannot be, each delivery has its own): a
            # redelivery writes another.
            raise TransientError(f"the zip {name} exists already")
        written = made[0]
        if not written.last:
            self._continue(batch.batch_id, export, name, size, written, context)
            return
        zip_name, zip_size = name, size
        if parts_before:
            zip_name = names.export_joined(batch.batch_id, export_id, export.deliveries)
            try:
                joined = self._join(bucket, [*parts_before, name], zip_name, metadata)
            except (PermanentError, NotFound) as exc:
                reason = f"the zip's parts could not be joined: {exc}"
                self._failed(batch.batch_id, export_id, reason, context)
                return
            if joined is None:  # our name was taken (it cannot be): a redelivery joins
                raise TransientError(f"the zip {zip_name} exists already")
            zip_size = joined
        images = len(written.rows) + sum(len(part.rows) for part in earlier())
        finished = self.store.update_batch(
            batch.batch_id,
            lambda b: handover.finish(
                b, export_id, zip_name, images, zip_size, self.clock(), len(parts_before)
            ),
        )
        if finished is None:
            log.info("export finished by another delivery; ours dropped", extra=context)
            return
        log.info(
            "export done",
            extra={
                **context,
                "event": "export_done",
                "object": zip_name,
                "images": images,
                "bytes": zip_size,
                "parts": len(parts_before) + 1,
            },
        )

    def _continue(
        self,
        batch_id: str,
        export: Export,
        name: str,
        size: int,
        written: Written,
        context: dict[str, object],
    ) -> None:
        """Record a part that ran out of time, then queue the delivery that goes on
        after it. A crash before the record leaves an object nobody counts (the
        redelivery writes the part again); one after it, a message not yet acked
        (its redelivery goes on from the record)."""
        bucket, export_id = self.settings.images_bucket, export.export_id
        went = export.written + written.went_through
        record = PartRecord(written.infos, written.rows, went, export.offset + size)
        self.objects.create(bucket, part_record_name(name), record.dumps(), "application/json", {})
        recorded = self.store.update_batch(
            batch_id,
            lambda b: handover.progress(
                b, export_id, len(export.parts), name, record.written, record.end
            ),
        )
        if recorded is None:
            log.info("part written by another delivery first; ours dropped", extra=context)
            return
        if self.publisher is None:
            raise TransientError("the zip goes on in the next delivery")
        self.publisher.publish_export(ExportMessage(batch_id=batch_id, export_id=export_id))
        log.info(
            "export part written; the next delivery goes on",
            extra={**context, "part": len(export.parts) + 1, "entries": went},
        )

    def _part_record(self, bucket: str, part: str) -> PartRecord:
        return PartRecord.loads(self.objects.read(bucket, part_record_name(part), PART_RECORD_MAX))

    def _join(
        self, bucket: str, parts: Sequence[str], name: str, metadata: Mapping[str, str]
    ) -> int | None:
        """The parts composed, in order, into the zip ``name``; its size (None when
        it exists already)."""
        size: int | None = None
        for sources, target in compose_rounds(parts, name[: -len(".zip")] + "-interim"):
            size = self.objects.compose(bucket, sources, target or name, ZIP_CONTENT_TYPE, metadata)
        return size

    def _read(self, bucket: str, object_name: str) -> bytes:
        out = io.BytesIO()
        self.objects.read_into(bucket, object_name, out)
        return out.getvalue()

    # ------------------------------------------------------------------ Drive
    def _deliver(self, batch_id: str, export_id: str, context: dict[str, object]) -> None:
        """Put every selected image and the manifest in the export's Drive folder, one
        delivery at a time; what is there already is not made again."""
        holder = new_id("dlv")
        timeout = self.settings.function_timeout_s or self.settings.export_deadline_s
        lease = timedelta(seconds=timeout + DRIVE_LEASE_MARGIN_S)
        taken = self.store.update_batch(
            batch_id, lambda b: handover.take(b, export_id, holder, self.clock(), lease)
        )
        if taken is None:
            log.info("export finished or superseded; message dropped", extra=context)
            return
        if taken is False:
            raise TransientError("another delivery of this export is running; retried later")
        export = taken
        assert isinstance(export, Export)
        folder = export.drive_folder_id or ""
        if self.drive is None:
            self._failed(batch_id, export_id, "Drive delivery is not set up here", context)
            return
        try:
            self.drive.check_folder(folder)
            members = handover.unpack(export.contents or "")
            job_ids = list(dict.fromkeys(member.job_id for member in members))
            entries = entries_of(members, self.store.get_jobs(job_ids), export.name_template)
            added, size = self._files(batch_id, folder, entries, context)
        except PermanentError as exc:
            self._failed(batch_id, export_id, f"Drive refused the delivery: {exc}", context)
            return
        except BaseException:
            # The next delivery goes on where this one stopped (found files are kept).
            self.store.update_batch(batch_id, lambda b: handover.let_go(b, export_id, holder))
            raise
        self.store.update_batch(
            batch_id,
            lambda b: handover.delivered(
                b, export_id, holder, len(entries), added, size, self.clock()
            ),
        )
        log.info(
            "export delivered to Drive",
            extra={**context, "event": "export_done", "images": len(entries), "added": added},
        )

    def _files(
        self, batch_id: str, folder: str, entries: Sequence[Entry], context: dict[str, object]
    ) -> tuple[int, int]:
        """Upload what the folder lacks; (files added, bytes uploaded)."""
        assert self.drive is not None
        drive, bucket = self.drive, self.settings.images_bucket
        deadline = time.monotonic() + self.settings.export_deadline_s
        added = size = 0
        for done, entry in enumerate(entries):
            if time.monotonic() >= deadline:
                raise TransientError(
                    f"{done} of {len(entries)} images delivered within EXPORT_DEADLINE_S; "
                    "the next delivery goes on"
                )
            key = _drive_key(f"{batch_id}/{entry.key}")
            if drive.find(folder, key) is not None:
                continue

            def write(out: BinaryIO, name: str = entry.object_name) -> None:
                self.objects.read_into(bucket, name, out)

            mime = _mime(entry.object_name)
            made = drive.upload(folder, entry.drive_name, mime, key, write, entry.row["prompt"])
            added += 1
            size += made.size or 0
        as_csv, as_json = manifests([entry.row for entry in entries])
        digest = hashlib.sha256(as_csv).hexdigest()[:12]
        for data, ext, mime in ((as_csv, "csv", "text/csv"), (as_json, "json", "application/json")):
            key = _drive_key(f"{batch_id}/manifest/{digest}.{ext}")
            if drive.find(folder, key) is None:
                drive.upload(
                    folder,
                    f"manifest_{batch_id}_{digest}.{ext}",
                    mime,
                    key,
                    lambda out, data=data: out.write(data),  # type: ignore[misc]
                )
        return added, size

    def _failed(
        self, batch_id: str, export_id: str, reason: str, context: dict[str, object]
    ) -> None:
        self.store.update_batch(
            batch_id, lambda b: handover.fail(b, export_id, reason, self.clock())
        )
        log.warning("export failed", extra={**context, "error": reason})


def part_record_name(part: str) -> str:
    """The record of a zip part, next to it."""
    return part + ".json"


def _drive_key(key: str) -> str:
    """A file's ``pipeline_key``: Drive keeps a property's name and value within 124
    bytes, so a long key (long ids) is kept as its digest."""
    if len(key.encode()) <= 96:
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:64]


def _mime(object_name: str) -> str:
    ext = object_name.rsplit(".", 1)[-1].lower()
    return {"jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}.get(ext, "image/png")
