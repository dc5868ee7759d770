"""Pure transitions of a batch's hand-over zip (``Batch.export``), applied under
the store's compare-and-set like the job transitions of ``shared/domain/lifecycle.py``."""

from __future__ import annotations

from datetime import datetime

from shared.domain.batch import Batch, Export

Step = tuple[Batch | None, Export | None]


def request(
    batch: Batch, export_id: str, by: str, now: datetime
) -> tuple[Batch | None, tuple[Export, bool]]:
    """A new zip, unless one is still queued or running (then that one); the flag
    says whether this request made it."""
    current = batch.export
    if current is not None and current.state in ("queued", "running"):
        return None, (current, False)
    batch.export = Export(export_id=export_id, requested_by=by, requested_at=now)
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
