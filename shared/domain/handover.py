"""Pure transitions of a batch's hand-over zip (``Batch.export``), applied under
the store's compare-and-set like the job transitions of ``shared/domain/lifecycle.py``,
and the zip's contents: the images it holds, fixed when it is asked for."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import NamedTuple

from shared.domain.batch import Batch, Export
from shared.domain.job import Job

Step = tuple[Batch | None, Export | None]


class Member(NamedTuple):
    """One image of a zip: version ``version`` of variant ``n`` of a job."""

    job_id: str
    n: int
    version: int = 1


def members_of(jobs: Iterable[Job]) -> list[Member]:
    """Every image that exists now, every version, in scene, job, variant and
    version order (the zip's order)."""
    return [
        Member(job.job_id, int(key), number)
        for job in sorted(jobs, key=lambda j: (j.scene_id, j.job_id))
        for key in sorted(job.variants, key=int)
        for number, slot in job.variants[key].slots()
        if slot.kept
    ]


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
    batch: Batch, export_id: str, by: str, now: datetime, members: Sequence[Member] = ()
) -> tuple[Batch | None, tuple[Export, bool]]:
    """A new zip of ``members`` (the images that exist now), unless one of the very
    same images is still queued or running (then that one); the flag says whether
    this request made it. A zip still being made of other images (the batch changed
    since it was asked for: a re-roll finished, say) is superseded: its delivery
    records nothing."""
    contents = pack(members)
    current = batch.export
    if (
        current is not None
        and current.state in ("queued", "running")
        and current.contents == contents
    ):
        return None, (current, False)
    batch.export = Export(
        export_id=export_id,
        requested_by=by,
        requested_at=now,
        contents=contents,
        images=len(members),
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


def finish(
    batch: Batch, export_id: str, object_name: str, images: int, size: int | None, now: datetime
) -> Step:
    export = _ours(batch, export_id)
    if export is None:
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
