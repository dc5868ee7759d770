"""Firestore adapters: jobs and batches, daily budgets, idempotency records."""

from __future__ import annotations

import contextlib
import hashlib
import random
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from pydantic import BaseModel

from shared.domain import batch_news, daily_usage, quota, request_records
from shared.domain.batch import Batch
from shared.domain.daily_usage import Correction, DailyUsage, Reservation
from shared.domain.economy_batches import OPEN_ECONOMY_STATES, EconomyBatch
from shared.domain.errors import NotFound, PermanentError, TransientError
from shared.domain.job import Job, JobState
from shared.domain.quota import GateState, Limit, Slot
from shared.domain.request_records import RequestRecord
from shared.services.ports import Fence, FencedOut, Usage

R = TypeVar("R")

# A commit request may carry at most 10 MiB; a batch's first commit keeps well under.
_COMMIT_BYTES = 6 * 1024 * 1024
IDEMPOTENCY = "idempotency"
_CAS_ATTEMPTS = 30
_GET_ALL_CHUNK = 300
USAGE_KEPT = timedelta(days=90)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def compare_and_set(
    ref: Any,
    change: Callable[[dict[str, Any] | None], tuple[dict[str, Any] | None, R]],
    fence: Fence | None = None,
) -> R:
    """Read, change, write only if nobody wrote in between (update-time precondition).

    Optimistic instead of a transaction: transactions on one document take read
    locks that deadlock under concurrent writers (the emulator then waits for a
    lock timeout of seconds); a failed precondition costs one more read. With
    ``fence``, the write and a check of the request's idempotency record commit
    together (``FencedOut`` when the request no longer holds it).
    """
    client = ref._client
    for attempt in range(_CAS_ATTEMPTS):
        snap = ref.get()
        current = snap.to_dict() if snap.exists else None
        updated, result = change(current)
        if updated is None:
            return result
        try:
            commit = client.batch()
            if snap.exists:
                commit.update(
                    ref, updated, option=client.write_option(last_update_time=snap.update_time)
                )
            else:
                commit.create(ref, updated)
            if fence is not None:
                _fenced(client, commit, fence)
            _commit(commit, ref.path)
        except (gexc.FailedPrecondition, gexc.Conflict):
            time.sleep(random.uniform(0, 0.02 * (attempt + 1)))
            continue
        return result
    raise TransientError(f"{ref.path} kept changing; gave up after {_CAS_ATTEMPTS} tries")


# Refusals of a write that no retry changes: too large, too many index entries.
_REFUSED = (gexc.InvalidArgument,)
# Refusals that pass: the service busy, a deadline, a transaction aborted.
_PASSING = (
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.Aborted,
    gexc.ResourceExhausted,
    gexc.InternalServerError,
)


def _commit(commit: Any, path: str) -> None:
    """Commit; a precondition that failed (another writer got in first) is raised as
    it is, for the caller to read again. Firestore's other refusals are ours, on
    purpose: a document too large or with too many index entries is permanent (no
    retry fixes it), a busy service transient."""
    try:
        commit.commit()
    except _REFUSED as exc:
        raise PermanentError(f"Firestore refused the write of {path}: {exc.message}") from exc
    except _PASSING as exc:
        raise TransientError(f"Firestore did not take the write of {path} now: {exc}") from exc


def _put(client: Any, commit: Any, ref: Any, snap: Any, doc: dict[str, Any]) -> None:
    """Add to ``commit`` the write of ``doc`` at ``ref``: a create where ``snap`` found
    no document, else an update that holds only if nobody wrote it since ``snap``."""
    if snap is not None and snap.exists:
        commit.update(ref, doc, option=client.write_option(last_update_time=snap.update_time))
    else:
        commit.create(ref, doc)


def _fenced(client: Any, commit: Any, fence: Fence) -> None:
    """Add to ``commit`` a write of the request's record that holds only while its
    holder is still ``fence.holder`` (the precondition fails the whole commit)."""
    ref = client.collection(IDEMPOTENCY).document(fence.key)
    snap = ref.get()
    record = snap.to_dict() if snap.exists else None
    if record is None or record.get("holder") != fence.holder or record.get("status"):
        raise FencedOut(f"the request no longer holds its record {fence.key[:12]}")
    commit.update(
        ref,
        {"holder": fence.holder},
        option=client.write_option(last_update_time=snap.update_time),
    )


M = TypeVar("M", bound=BaseModel)


def update_record(
    ref: Any,
    model: type[M],
    what: str,
    change: Callable[[M], tuple[M | None, R]],
    fence: Fence | None = None,
) -> R:
    """``change`` applied to the stored record under compare-and-set; ``NotFound``
    (naming ``what``) when there is none."""

    def apply(doc: dict[str, Any] | None) -> tuple[dict[str, Any] | None, R]:
        if doc is None:
            raise NotFound(f"{what} does not exist")
        updated, result = change(model.model_validate(doc))
        return (updated.model_dump(mode="python") if updated is not None else None), result

    return compare_and_set(ref, apply, fence)


# Firestore's most values in one "in" filter.
IN_FILTER_MAX = 30


class FirestoreJobStore:
    def __init__(self, client: firestore.Client) -> None:
        self._db = client
        self._jobs = client.collection("jobs")
        self._batches = client.collection("batches")

    def create_batch(self, batch: Batch, jobs: Sequence[Job], fence: Fence | None = None) -> None:
        batch_ref = self._batches.document(batch.batch_id)
        if batch_ref.get().exists:
            # An earlier run committed the batch; it creates any job it did not get to.
            for job in jobs:
                with contextlib.suppress(gexc.Conflict):
                    self._jobs.document(job.job_id).create(job.to_doc())
            return
        # One commit (all or nothing) of the batch, as many jobs as fit in a commit
        # request, and the fence; a batch larger than that finishes in further commits
        # (a resumed request creates what they did not).
        docs = [job.to_doc() for job in jobs]
        first = self._db.batch()
        first.create(batch_ref, batch.to_doc())
        size, cut = 0, len(docs)
        for index, (job, doc) in enumerate(zip(jobs, docs, strict=True)):
            size += len(repr(doc))
            if size > _COMMIT_BYTES:
                cut = index
                break
            first.create(self._jobs.document(job.job_id), doc)
        if fence is not None:
            _fenced(self._db, first, fence)
        try:
            first.commit()
        except gexc.Conflict:
            # Another run of the request committed it meanwhile: keep what exists.
            pass
        except gexc.FailedPrecondition as exc:
            raise FencedOut("the request no longer holds its record") from exc
        for job, doc in zip(jobs[cut:], docs[cut:], strict=True):
            with contextlib.suppress(gexc.Conflict):
                self._jobs.document(job.job_id).create(doc)

    def get_batch(self, batch_id: str) -> Batch | None:
        snap = self._batches.document(batch_id).get()
        return Batch.model_validate(snap.to_dict()) if snap.exists else None

    def get_job(self, job_id: str) -> Job | None:
        snap = self._jobs.document(job_id).get()
        return Job.from_doc(snap.to_dict() or {}) if snap.exists else None

    def get_jobs(self, job_ids: Sequence[str]) -> list[Job]:
        found: dict[str, Job] = {}
        for start in range(0, len(job_ids), _GET_ALL_CHUNK):
            refs = [self._jobs.document(j) for j in job_ids[start : start + _GET_ALL_CHUNK]]
            for snap in self._db.get_all(refs):
                if snap.exists:
                    found[snap.id] = Job.from_doc(snap.to_dict() or {})
        return [found[j] for j in job_ids if j in found]

    def active_jobs(self, spreadsheet_id: str, worksheet: str) -> list[Job]:
        query = (
            self._jobs.where(filter=FieldFilter("spreadsheet_id", "==", spreadsheet_id))
            .where(filter=FieldFilter("worksheet", "==", worksheet))
            .where(
                filter=FieldFilter(
                    "state", "in", [JobState.QUEUED.value, JobState.GENERATING.value]
                )
            )
        )
        return [Job.from_doc(snap.to_dict() or {}) for snap in query.stream()]

    def economy_jobs(self, limit: int) -> list[Job]:
        # Ordered before the limit (a composite index, firestore.tf): with more open
        # economy jobs than one tick looks at, the oldest go first, never starved.
        query = (
            self._jobs.where(filter=FieldFilter("lane", "==", "economy"))
            .where(
                filter=FieldFilter(
                    "state", "in", [JobState.QUEUED.value, JobState.GENERATING.value]
                )
            )
            .order_by("created_at")
            .limit(limit)
        )
        return [Job.from_doc(snap.to_dict() or {}) for snap in query.stream()]

    def unstarted_jobs(self, created_before: datetime, limit: int) -> list[Job]:
        query = (
            self._jobs.where(filter=FieldFilter("lane", "==", "live"))
            .where(filter=FieldFilter("state", "==", JobState.QUEUED.value))
            .where(filter=FieldFilter("created_at", "<", created_before))
            .order_by("created_at")
            .limit(limit)
        )
        return [Job.from_doc(snap.to_dict() or {}) for snap in query.stream()]

    def overdue_jobs(self, created_before: datetime, limit: int) -> list[Job]:
        # The same composite index as unstarted_jobs (jobs_by_age: lane, state, created_at).
        query = (
            self._jobs.where(filter=FieldFilter("lane", "==", "live"))
            .where(filter=FieldFilter("state", "==", JobState.GENERATING.value))
            .where(filter=FieldFilter("created_at", "<", created_before))
            .order_by("created_at")
            .limit(limit)
        )
        return [Job.from_doc(snap.to_dict() or {}) for snap in query.stream()]

    def queued_exports(self, limit: int) -> list[Batch]:
        # Equality on one field (its automatic index); queued exports are few and short-lived.
        query = self._batches.where(filter=FieldFilter("export.state", "==", "queued")).limit(limit)
        return [Batch.model_validate(snap.to_dict()) for snap in query.stream()]

    def unfollowed_jobs(self, changed_before: datetime, limit: int) -> list[Job]:
        # One field, one range: Firestore's automatic single-field index serves it
        # (jobs without the field, or with null, are not in the range).
        query = (
            self._jobs.where(filter=FieldFilter("followups_since", "<", changed_before))
            .order_by("followups_since")
            .limit(limit)
        )
        return [Job.from_doc(snap.to_dict() or {}) for snap in query.stream()]

    def unfollowed_in(self, spreadsheet_id: str, limit: int) -> list[Job]:
        # An equality and a range: the composite index jobs_unfollowed_by_sheet
        # (infra/terraform/firestore.tf).
        query = (
            self._jobs.where(filter=FieldFilter("spreadsheet_id", "==", spreadsheet_id))
            .where(filter=FieldFilter("followups_since", ">", _EPOCH))
            .order_by("followups_since")
            .limit(limit)
        )
        return [Job.from_doc(snap.to_dict() or {}) for snap in query.stream()]

    def scene_jobs(self, spreadsheet_id: str, scene_id: str) -> list[Job]:
        query = self._jobs.where(filter=FieldFilter("spreadsheet_id", "==", spreadsheet_id)).where(
            filter=FieldFilter("scene_id", "==", scene_id)
        )
        return [Job.from_doc(snap.to_dict() or {}) for snap in query.stream()]

    def jobs_of_scenes(self, spreadsheet_id: str, scene_ids: Sequence[str]) -> list[Job]:
        wanted = sorted(set(scene_ids))
        found: list[Job] = []
        # An "in" filter takes at most 30 values.
        for start in range(0, len(wanted), IN_FILTER_MAX):
            query = self._jobs.where(
                filter=FieldFilter("spreadsheet_id", "==", spreadsheet_id)
            ).where(filter=FieldFilter("scene_id", "in", wanted[start : start + IN_FILTER_MAX]))
            found.extend(Job.from_doc(snap.to_dict() or {}) for snap in query.stream())
        return found

    def open_jobs(self, batch_id: str) -> int:
        query = self._jobs.where(filter=FieldFilter("batch_id", "==", batch_id)).where(
            filter=FieldFilter("state", "in", [JobState.QUEUED.value, JobState.GENERATING.value])
        )
        # The library's annotations are off (count() is typed as a class): one
        # result list holding one count.
        counted: Any = query.count(alias="open")
        return int(counted.get()[0][0].value)

    def update_batch(self, batch_id: str, change: Callable[[Batch], tuple[Batch | None, R]]) -> R:
        return update_record(self._batches.document(batch_id), Batch, f"batch {batch_id}", change)

    def update_job(
        self,
        job_id: str,
        change: Callable[[Job], tuple[Job | None, R]],
        fence: Fence | None = None,
    ) -> R:
        return update_record(self._jobs.document(job_id), Job, f"job {job_id}", change, fence)


class FirestoreEconomyBatches:
    """``economy_batches/{record_id}``: our records of Gemini batches."""

    def __init__(self, client: firestore.Client) -> None:
        self._records = client.collection("economy_batches")

    def create(self, batch: EconomyBatch) -> None:
        self._records.document(batch.record_id).create(batch.model_dump(mode="python"))

    def get(self, record_id: str) -> EconomyBatch | None:
        snap = self._records.document(record_id).get()
        return EconomyBatch.model_validate(snap.to_dict()) if snap.exists else None

    def open_batches(self, limit: int) -> list[EconomyBatch]:
        query = self._records.where(
            filter=FieldFilter("state", "in", list(OPEN_ECONOMY_STATES))
        ).limit(limit)
        records = [EconomyBatch.model_validate(snap.to_dict()) for snap in query.stream()]
        return sorted(records, key=lambda record: (record.created_at, record.record_id))

    def update(
        self, record_id: str, change: Callable[[EconomyBatch], tuple[EconomyBatch | None, R]]
    ) -> R:
        where = f"economy batch {record_id}"
        return update_record(self._records.document(record_id), EconomyBatch, where, change)


class FirestoreBudgetLedger:
    """``usage/{caller-hash}_{day}``: a caller's usage of one UTC day
    (``shared/domain/daily_usage.py``). The day's document holds what was reserved
    (reservations less releases); each image's settlement adds its correction to
    one of ``USAGE_SHARDS`` documents below it (``usage_shards/{n}``, by the image's
    key), so no document takes a write per image: a busy caller's settlements are
    spread over the shards. Each reservation and each settlement also has a
    document of its own (``usage_reservations/{key}``, ``usage_settled/{key}``), so
    no document grows with images. A change writes its totals and its one key's
    record in one commit, under compare-and-set on both.

    The day's usage is the day's document plus its shards. A reservation reads the
    shards without holding them: a settlement committed meanwhile counts from the
    next read. Settlements lower the usage (an image never made is given back)
    except a given-back image found made after all, so a cap can be passed by at
    most those images settled in the same instant.

    Records of days before this layout keep their keys in the day's document
    (``reservations``, ``settled`` maps): read, never written again."""

    def __init__(self, client: firestore.Client) -> None:
        self._client = client
        self._usage = client.collection("usage")

    def _ref(self, caller: str, day: str) -> Any:
        digest = hashlib.sha256(caller.encode()).hexdigest()[:24]
        return self._usage.document(f"{digest}_{day}")

    def usage(self, caller: str, day: str) -> Usage:
        day_ref = self._ref(caller, day)
        snap = day_ref.get()
        used = _read_usage(snap.to_dict() if snap.exists else None, caller, day)
        images, cost = self._settled(day_ref)
        return Usage(max(used.images + images, 0), max(used.cost + cost, Decimal(0)))

    def _settled(self, day_ref: Any) -> tuple[int, Decimal]:
        """The corrections of the day's settlements, over its shards."""
        refs = [day_ref.collection(SHARDS).document(str(n)) for n in range(USAGE_SHARDS)]
        images, cost = 0, Decimal(0)
        for snap in self._client.get_all(refs):
            if snap.exists:
                doc = snap.to_dict() or {}
                images += int(doc.get("images", 0))
                cost += Decimal(str(doc.get("cost_usd", "0")))
        return images, cost

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
        ok, before = self._change(
            caller,
            day,
            RESERVATIONS,
            key,
            lambda u: daily_usage.reserve(u, key, images, cost, image_cap, cost_cap),
            fence,
        )
        return ok, Usage(before.images, before.cost)

    def release(self, caller: str, day: str, key: str, fence: Fence | None = None) -> None:
        self._change(caller, day, RESERVATIONS, key, lambda u: daily_usage.release(u, key), fence)

    def settle(self, caller: str, day: str, key: str, images: int, cost: Decimal) -> None:
        """Add the image's correction to its shard, once per key."""
        day_ref = self._ref(caller, day)
        digest = hashlib.sha256(key.encode()).hexdigest()
        key_ref = day_ref.collection(SETTLED).document(digest)
        shard_ref = day_ref.collection(SHARDS).document(str(int(digest[:8], 16) % USAGE_SHARDS))
        expires = _expiry(day)
        for attempt in range(_CAS_ATTEMPTS):
            day_snap, key_snap, shard_snap = day_ref.get(), key_ref.get(), shard_ref.get()
            used = _read_usage(
                day_snap.to_dict() if day_snap.exists else None, caller, day, keep=(SETTLED, key)
            )
            if key_snap.exists:
                _put_record(used, SETTLED, key, key_snap.to_dict() or {})
            delta = daily_usage.correction(used.settled.get(key), images, cost)
            if delta is None:
                return
            shard = shard_snap.to_dict() if shard_snap.exists else {}
            totals = {
                "images": int(shard.get("images", 0)) + delta.images,
                "cost_usd": str(Decimal(str(shard.get("cost_usd", "0"))) + delta.cost),
                "expires_at": expires,
            }
            record = {"images": images, "cost_usd": str(cost), "expires_at": expires}
            commit = self._client.batch()
            _put(self._client, commit, shard_ref, shard_snap, totals)
            _put(self._client, commit, key_ref, key_snap, record)
            try:
                _commit(commit, shard_ref.path)
            except (gexc.FailedPrecondition, gexc.Conflict):
                time.sleep(random.uniform(0, 0.02 * (attempt + 1)))
                continue
            return
        raise TransientError(f"{shard_ref.path} kept changing; gave up after {_CAS_ATTEMPTS} tries")

    def _change(
        self,
        caller: str,
        day: str,
        kind: str,
        key: str,
        change: Callable[[DailyUsage], tuple[DailyUsage | None, R]],
        fence: Fence | None = None,
    ) -> R:
        """``change`` on the day's usage (its document and its shards) and the record
        of ``key`` alone (the day's other keys are neither read nor written)."""
        day_ref = self._ref(caller, day)
        key_ref = day_ref.collection(kind).document(hashlib.sha256(key.encode()).hexdigest())
        for attempt in range(_CAS_ATTEMPTS):
            day_snap, key_snap = day_ref.get(), key_ref.get()
            doc = day_snap.to_dict() if day_snap.exists else None
            used = _read_usage(doc, caller, day, keep=(kind, key))
            own_images, own_cost = used.images, used.cost
            settled_images, settled_cost = self._settled(day_ref)
            used.images = max(own_images + settled_images, 0)
            used.cost = max(own_cost + settled_cost, Decimal(0))
            seen_images, seen_cost = used.images, used.cost
            if key_snap.exists:
                _put_record(used, kind, key, key_snap.to_dict() or {})
            updated, result = change(used)
            if updated is None:
                return result
            # The day's document keeps its own part: what the change added to the whole.
            updated.images = own_images + updated.images - seen_images
            updated.cost = own_cost + updated.cost - seen_cost
            commit = self._client.batch()
            totals = _totals_doc(updated)
            _put(self._client, commit, day_ref, day_snap, totals)
            record = {**_record_doc(updated, kind, key), "expires_at": totals["expires_at"]}
            _put(self._client, commit, key_ref, key_snap, record)
            if fence is not None:
                _fenced(self._client, commit, fence)
            try:
                _commit(commit, day_ref.path)
            except (gexc.FailedPrecondition, gexc.Conflict):
                time.sleep(random.uniform(0, 0.02 * (attempt + 1)))
                continue
            return result
        raise TransientError(f"{day_ref.path} kept changing; gave up after {_CAS_ATTEMPTS} tries")


RESERVATIONS = "usage_reservations"
SETTLED = "usage_settled"
SHARDS = "usage_shards"
# A busy caller's settlements spread over this many documents: at about 40 writes
# a minute each, some 600 images a minute per caller.
USAGE_SHARDS = 16


def _read_usage(
    doc: Mapping[str, Any] | None,
    caller: str,
    day: str,
    keep: tuple[str, str] | None = None,
) -> DailyUsage:
    """The day's totals; with ``keep``, the one (kind, key) record a day's document
    of the earlier layout holds in its maps (else none)."""
    if not doc:
        return DailyUsage(caller=caller, day=day)
    used = DailyUsage(
        caller=caller,
        day=day,
        images=int(doc.get("images", 0)),
        cost=Decimal(str(doc.get("cost_usd", "0"))),
    )
    if keep is not None:
        kind, key = keep
        legacy = doc.get("reservations" if kind == RESERVATIONS else "settled") or {}
        if key in legacy:
            _put_record(used, kind, key, legacy[key])
    return used


def _put_record(used: DailyUsage, kind: str, key: str, record: Any) -> None:
    if kind == RESERVATIONS:
        used.reservations[key] = Reservation(
            images=int(record["images"]),
            cost=Decimal(str(record["cost_usd"])),
            released=bool(record.get("released")),
        )
    elif isinstance(record, Mapping) and "images" in record:
        used.settled[key] = Correction(
            images=int(record["images"]), cost=Decimal(str(record["cost_usd"]))
        )
    else:
        used.settled[key] = True  # settled before amounts were kept


def _expiry(day: str) -> datetime:
    # Kept a while for the record, then removed by the collection's TTL policy.
    return datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC) + USAGE_KEPT


def _totals_doc(usage: DailyUsage) -> dict[str, Any]:
    expires = _expiry(usage.day)
    return {
        "caller": usage.caller,
        "day": usage.day,
        "images": usage.images,
        "cost_usd": str(usage.cost),
        "expires_at": expires,
    }


def _record_doc(usage: DailyUsage, kind: str, key: str) -> dict[str, Any]:
    if kind == RESERVATIONS:
        held = usage.reservations[key]
        return {
            "key": key,
            "images": held.images,
            "cost_usd": str(held.cost),
            "released": held.released,
        }
    done = usage.settled[key]
    if isinstance(done, Correction):
        return {"key": key, "images": done.images, "cost_usd": str(done.cost)}
    return {"key": key, "settled": True}


class FirestoreIdempotencyStore:
    """``idempotency/{key}`` (``shared/domain/request_records.py``); ``expires_at`` is
    the collection's TTL field (deletion is lazy: an expired record counts as absent)."""

    def __init__(self, client: firestore.Client) -> None:
        self._records = client.collection(IDEMPOTENCY)

    def _change(
        self, key: str, change: Callable[[RequestRecord], tuple[RequestRecord | None, R]], absent: R
    ) -> R:
        def apply(doc: dict[str, Any] | None) -> tuple[dict[str, Any] | None, R]:
            if doc is None:
                return None, absent
            updated, result = change(RequestRecord.model_validate(doc))
            return (updated.model_dump(mode="python") if updated is not None else None), result

        return compare_and_set(self._records.document(key), apply)

    def begin(
        self,
        key: str,
        names: str,
        holder: str,
        now: datetime,
        expires_at: datetime,
        lease: timedelta,
    ) -> tuple[RequestRecord, bool]:
        def apply(
            doc: dict[str, Any] | None,
        ) -> tuple[dict[str, Any] | None, tuple[RequestRecord, bool]]:
            current = RequestRecord.model_validate(doc) if doc is not None else None
            updated, result = request_records.begin(
                current, key, names, holder, now, expires_at, lease
            )
            return (updated.model_dump(mode="python") if updated is not None else None), result

        return compare_and_set(self._records.document(key), apply)

    def note(
        self,
        key: str,
        holder: str,
        intent: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
    ) -> bool:
        return self._change(key, lambda r: request_records.note(r, holder, intent, body), False)

    def finish(self, key: str, holder: str, body: dict[str, Any]) -> bool:
        return self._change(key, lambda r: request_records.finish(r, holder, body), False)

    def let_go(self, key: str, holder: str) -> None:
        self._change(key, lambda r: request_records.let_go(r, holder), None)

    def abandon(self, key: str, holder: str) -> None:
        ref = self._records.document(key)
        snap = ref.get()
        if not snap.exists:
            return
        record = RequestRecord.model_validate(snap.to_dict())
        if record.holder == holder and not record.answered:
            with contextlib.suppress(gexc.FailedPrecondition, gexc.NotFound):
                ref.delete(option=ref._client.write_option(last_update_time=snap.update_time))

    def stale(self, now: datetime, limit: int) -> list[RequestRecord]:
        # Equality only (a single-field index); unanswered records are few and short-lived.
        query = self._records.where(filter=FieldFilter("status", "==", 0)).limit(limit)
        found = [RequestRecord.model_validate(snap.to_dict()) for snap in query.stream()]
        return sorted(
            (
                r
                for r in found
                if r.expires_at > now and (r.lease_expires is None or r.lease_expires <= now)
            ),
            key=lambda r: r.created_at,
        )


class FirestoreQuotaGate:
    """``quota/{model}`` (and ``{model}~1`` ...): the shared pace and gate of Gemini
    calls (``shared/domain/quota.py``).

    Every call of the fleet reads the model's gate documents and, when calls are
    paced, takes a slot from the one free soonest: one write per call. The pace is
    spread over ``quota.shards_for(images_per_minute)`` documents, each pacing at its
    share, so none takes more writes than Firestore sustains on one document
    (about one a second); a refusal closes them all.
    """

    def __init__(self, client: firestore.Client, images_per_minute: float) -> None:
        self._client = client
        self._gates = client.collection("quota")
        self._shards = quota.shards_for(images_per_minute)
        self._interval = timedelta(
            seconds=60 * self._shards / images_per_minute if images_per_minute else 0
        )

    def _refs(self, model: str) -> list[Any]:
        return [
            self._gates.document(model if shard == 0 else f"{model}~{shard}")
            for shard in range(self._shards)
        ]

    def _snaps(self, model: str) -> list[tuple[Any, Any]]:
        refs = self._refs(model)
        if len(refs) == 1:
            return [(refs[0], refs[0].get())]
        found = {snap.id: snap for snap in self._client.get_all(refs)}
        return [(ref, found.get(ref.id)) for ref in refs]

    def _states(self, model: str) -> list[tuple[Any, GateState]]:
        return [(ref, _gate_of(snap)) for ref, snap in self._snaps(model)]

    def reserve(self, model: str, now: datetime, max_wait_s: float) -> Slot:
        max_wait = timedelta(seconds=max(max_wait_s, 0.0))
        for attempt in range(_CAS_ATTEMPTS):
            # The gate free soonest; when another caller takes it first, all are read
            # again and the soonest then is tried (not the same one, later).
            ref, snap = min(
                self._snaps(model),
                key=lambda pair: quota.peek(_gate_of(pair[1]), now, self._interval).reopens or now,
            )
            updated, slot = quota.reserve(_gate_of(snap), now, self._interval, max_wait)
            if updated is None:
                return slot
            commit = self._client.batch()
            _put(self._client, commit, ref, snap, _gate_doc(updated))
            try:
                _commit(commit, ref.path)
            except (gexc.FailedPrecondition, gexc.Conflict):
                time.sleep(random.uniform(0, 0.02 * (attempt + 1)))
                continue
            return slot
        raise TransientError(f"the quota gate of {model} kept changing")

    def peek(self, model: str, now: datetime) -> Slot:
        slots = [quota.peek(state, now, self._interval) for _, state in self._states(model)]
        return min(slots, key=lambda slot: slot.reopens or now)

    def close(self, model: str, until: datetime, limit: Limit) -> None:
        def apply(doc: dict[str, Any] | None) -> tuple[dict[str, Any] | None, None]:
            updated, _ = quota.close(_gate(doc), until, limit)
            return (_gate_doc(updated) if updated is not None else None), None

        for ref in self._refs(model):
            compare_and_set(ref, apply)


def _gate_of(snap: Any) -> GateState:
    return _gate(snap.to_dict() if snap is not None and snap.exists else None)


def _gate(doc: Mapping[str, Any] | None) -> GateState:
    if not doc:
        return GateState()
    limit = doc.get("closed_for")
    return GateState(
        next_slot=doc.get("next_slot"),
        closed_until=doc.get("closed_until"),
        closed_for=Limit(limit) if limit else None,
    )


def _gate_doc(state: GateState) -> dict[str, Any]:
    return {
        "next_slot": state.next_slot,
        "closed_until": state.closed_until,
        "closed_for": state.closed_for.value if state.closed_for else None,
    }


class FirestoreNoticeLog:
    """``notices/{key}``: the batch events told (``shared/domain/batch_news.py``);
    removed by the collection's TTL policy on ``expires_at``."""

    def __init__(self, client: firestore.Client) -> None:
        self._notices = client.collection("notices")

    def _ref(self, key: str) -> Any:
        # Document ids may not hold "/"; a digest keeps any key to one valid id.
        return self._notices.document(hashlib.sha256(key.encode()).hexdigest())

    def sent(self, key: str) -> bool:
        snap = self._ref(key).get()
        if not snap.exists:
            return False
        record = batch_news.NoticeRecord.model_validate(snap.to_dict())
        return record.sent_at is not None or record.error is not None

    def claim(self, key: str, holder: str, now: datetime, lease: timedelta) -> bool:
        def take(doc: dict[str, Any] | None) -> tuple[dict[str, Any] | None, bool]:
            record = batch_news.NoticeRecord.model_validate(doc) if doc else None
            taken = batch_news.take_notice(record, key, holder, now, lease)
            return (taken.model_dump(mode="python") if taken else None), taken is not None

        return compare_and_set(self._ref(key), take)

    def done(self, key: str, holder: str, now: datetime, error: str | None = None) -> None:
        def finish(doc: dict[str, Any] | None) -> tuple[dict[str, Any] | None, None]:
            record = batch_news.NoticeRecord.model_validate(doc) if doc else None
            finished = batch_news.finish_notice(record, holder, now, error)
            return (finished.model_dump(mode="python") if finished else None), None

        compare_and_set(self._ref(key), finish)
