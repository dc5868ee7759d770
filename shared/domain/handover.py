"""Pure transitions of a batch's hand-over zip (``Batch.export``), applied under
the store's compare-and-set like the job transitions of ``shared/domain/lifecycle.py``,
and the zip's contents: the images it holds, fixed when it is asked for."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from shared.domain import briefs, reviews
from shared.domain.batch import Batch, Export, ExportDestination, ExportSelection
from shared.domain.job import ImageSlot, Job, Version

Step = tuple[Batch | None, Export | None]


class Member(NamedTuple):
    """One image of a zip: version ``version`` of variant ``n`` of a job."""

    job_id: str
    n: int
    version: int = 1


@dataclass(frozen=True)
class Spec:
    """What an export hands over, named how, and where to."""

    only: ExportSelection = "all"
    name_template: str | None = None
    destination: ExportDestination = "zip"
    drive_folder_id: str | None = None

    def of(self, export: Export) -> bool:
        return (self.only, self.name_template, self.destination, self.drive_folder_id) == (
            export.only,
            export.name_template,
            export.destination,
            export.drive_folder_id,
        )


def members_of(jobs: Iterable[Job], only: ExportSelection = "all") -> list[Member]:
    """The images ``only`` selects that exist now (every version, for ``all``), in
    scene, job, variant and version order (the zip's order). Rejected and
    unreviewed images are never among ``approved`` or ``final``."""
    return [
        Member(job.job_id, n, number)
        for job in sorted(jobs, key=lambda j: (j.scene_id, j.job_id))
        for n, number in reviews.selected(job, only)
    ]


_UNSAFE = re.compile(r'[\\/:*?"<>|\x00-\x1f]+')
NAME_MAX = 150


def file_stem(template: str, job: Job, n: int, version: int, slot: ImageSlot) -> str:
    """A file's name (without extension) from ``template``: the image's fields and
    its row's columns; characters no file system takes become ``_``. Raises
    ``briefs.TemplateError`` for a column the row lacks."""
    size = slot.image_size if isinstance(slot, Version) and slot.image_size else None
    fields = {
        "prompt": job.prompt,
        **job.fields,
        "scene_id": job.scene_id,
        "variant": str(n),
        "version": str(version),
        "job_id": job.job_id,
        "model": slot.model or job.model,
        "image_size": size or job.image_size or "",
    }
    name = _UNSAFE.sub("_", briefs.compose(template, fields)).strip(" .")[:NAME_MAX]
    return name or f"{job.scene_id}_{n}_{version}"


def unique(names: Sequence[str]) -> list[str]:
    """The names, a repeated one suffixed ``_2``, ``_3`` ... in order."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        stem, dot, ext = name.rpartition(".") if "." in name else (name, "", "")
        count = seen.get(name.lower(), 0) + 1
        seen[name.lower()] = count
        out.append(name if count == 1 else f"{stem}_{count}{dot}{ext}")
    return out


# ``pack`` writes members as ``job_a=1,1.2,2;job_b=1``: the job id once per job,
# then its variants (``n``, or ``n.v`` for version v). Compact because it lives in
# the batch document (1 MiB at most): 2,000 images take 55 KB when each job has
# one, 16 KB when jobs have four (intake's ids, ``job_{16 hex}_{index}``).
_JOBS, _ID, _IMAGES, _VERSION = ";", "=", ",", "."


def pack(members: Iterable[Member]) -> str:
    """The members as one string, in their order."""
    groups: list[tuple[str, list[str]]] = []
    for job_id, n, version in members:
        if any(mark in job_id for mark in (_JOBS, _ID, _IMAGES)):
            raise ValueError(f"job id {job_id!r} cannot be packed")
        if not groups or groups[-1][0] != job_id:
            groups.append((job_id, []))
        groups[-1][1].append(str(n) if version == 1 else f"{n}{_VERSION}{version}")
    return _JOBS.join(f"{job_id}{_ID}{_IMAGES.join(images)}" for job_id, images in groups)


def unpack(packed: str) -> list[Member]:
    """The members ``pack`` wrote, in their order."""
    members = []
    for group in filter(None, packed.split(_JOBS)):
        job_id, _, images = group.rpartition(_ID)
        for image in images.split(_IMAGES):
            n, _, version = image.partition(_VERSION)
            members.append(Member(job_id, int(n), int(version or 1)))
    return members


def request(
    batch: Batch,
    export_id: str,
    by: str,
    now: datetime,
    members: Sequence[Member] = (),
    spec: Spec | None = None,
) -> tuple[Batch | None, tuple[Export, bool]]:
    """A new export of ``members`` (the images selected now), unless one of the very
    same images, named and delivered the same way, is still queued or running (then
    that one); the flag says whether this request made it. One still being made of
    other images (the batch changed since: a re-roll finished, say) is superseded:
    its delivery records nothing."""
    spec = spec or Spec()
    contents = pack(members)
    current = batch.export
    if (
        current is not None
        and current.state in ("queued", "running")
        and current.contents == contents
        and spec.of(current)
    ):
        return None, (current, False)
    batch.export = Export(
        export_id=export_id,
        requested_by=by,
        requested_at=now,
        contents=contents,
        images=len(members),
        only=spec.only,
        name_template=spec.name_template,
        destination=spec.destination,
        drive_folder_id=spec.drive_folder_id,
    )
    return batch, (batch.export, True)


def _ours(batch: Batch, export_id: str) -> Export | None:
    export = batch.export
    if export is None or export.export_id != export_id or export.state in ("done", "failed"):
        return None
    return export


def start(batch: Batch, export_id: str, now: datetime) -> Step:
    """A delivery starts writing the zip (again, after a delivery that died)."""
    export = _ours(batch, export_id)
    if export is None:
        return None, None
    export.state = "running"
    export.started_at = export.started_at or now
    export.deliveries += 1
    return batch, export


def take(
    batch: Batch, export_id: str, holder: str, now: datetime, lease: timedelta
) -> tuple[Batch | None, Export | bool | None]:
    """A Drive delivery takes the export to deliver it alone (the files it finds in
    the folder are not made again, so only two at once could duplicate one): the
    export, False while another delivery's lease runs (until it surely ended), None
    when it is finished or superseded."""
    export = _ours(batch, export_id)
    if export is None:
        return None, None
    live = export.lease_until is not None and export.lease_until > now
    if live and export.holder != holder:
        return None, False
    export.holder, export.lease_until = holder, now + lease
    export.state = "running"
    export.started_at = export.started_at or now
    export.deliveries += 1
    return batch, export


def delivered(
    batch: Batch, export_id: str, holder: str, images: int, added: int, size: int, now: datetime
) -> Step:
    """A Drive delivery put every file in the folder (``added`` new, the rest found)."""
    export = _ours(batch, export_id)
    if export is None or export.holder != holder:
        return None, None
    export.state = "done"
    export.images, export.added, export.present = images, added, images - added
    export.bytes = size
    export.object_name = f"drive:{export.drive_folder_id}"
    export.holder, export.lease_until = None, None
    export.finished_at = now
    return batch, export


def let_go(batch: Batch, export_id: str, holder: str) -> Step:
    """A Drive delivery that ran out of time hands the export to the next one."""
    export = _ours(batch, export_id)
    if export is None or export.holder != holder:
        return None, None
    export.holder, export.lease_until = None, None
    return batch, export


def progress(
    batch: Batch, export_id: str, parts_before: int, part: str, written: int, end: int
) -> Step:
    """A delivery wrote the next part of a zip too large for one: ``part`` goes on
    from where the export's ``parts_before`` parts ended, unless another delivery
    recorded that part first."""
    export = _ours(batch, export_id)
    if export is None or len(export.parts) != parts_before:
        return None, None
    export.parts.append(part)
    export.written, export.offset = written, end
    return batch, export


def finish(
    batch: Batch,
    export_id: str,
    object_name: str,
    images: int,
    size: int | None,
    now: datetime,
    parts_before: int = 0,
) -> Step:
    """The zip is written: the last part, after ``parts_before`` parts (unless
    another delivery recorded a part, or the zip, first)."""
    export = _ours(batch, export_id)
    if export is None or len(export.parts) != parts_before:
        return None, None
    export.state = "done"
    export.object_name, export.images, export.bytes = object_name, images, size
    export.finished_at = now
    return batch, export


def fail(batch: Batch, export_id: str, reason: str, now: datetime) -> Step:
    export = _ours(batch, export_id)
    if export is None:
        return None, None
    export.state = "failed"
    export.error = reason
    export.finished_at = now
    return batch, export


def republished(batch: Batch, export_id: str, now: datetime) -> Step:
    """The export's message went out again (it was still queued)."""
    export = _ours(batch, export_id)
    if export is None or export.state != "queued":
        return None, None
    export.republished_at = now
    return batch, export
