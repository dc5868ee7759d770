"""A deterministic, seeded simulation of the whole pipeline that searches the schedules
for us.

The real services (intake, generation with style anchors, thumbnails, dead letters,
cancels, re-rolls, exports, the economy tick, the sweeper, the job ledger and sheet
sync) run on the in-memory fakes of ``tests/fakes.py``. Every call a service makes to
a port goes through a proxy that asks the run's ``Chooser`` what happens there,
before the call and after it: nothing; the actor dies (a crash: nothing after it
reaches any port, not even its ``finally`` clean-ups); the call takes minutes (its
heartbeat beats meanwhile); its holder stalls past its lease (no heartbeat); or
other actors run first (an interleaving). Pub/Sub is at least once: messages are
delivered in an order the chooser picks, sometimes twice, again after a crash or a
raise, and dead-lettered after ``MAX_ATTEMPTS``; clients retry their requests with
the same key; Gemini refuses calls for quota or fails now and then.

After the run, faults stop and everything is delivered until nothing is left, and
the invariants are checked (``violations``): every image ends, within the age
limit; every image paid for is stored, but for one per call whose holder was killed
or stalled; every stored image is recorded and charged once, at what it cost, and
none is "failed" or "cancelled" for free; the day's usage equals what the made
images cost (every reservation of what was never made given back); each job ends
once; each scene's row shows its job's final state; each idempotency key names one
batch, and every request ends; every export ends, a finished one with a zip that
holds what its record says.

``run(chooser)`` draws every choice from the chooser: ``SeededChooser(seed)`` in
``bench/simulate.py``; Hypothesis in ``tests/unit/test_simulation.py``, which also
shrinks a failing schedule to the smallest one.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import random
import re
import secrets
import uuid
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from shared.contracts.links import LinkSigner
from shared.contracts.messages import (
    ExportMessage,
    JobMessage,
    PushMessage,
    RowsMessage,
    StorageObject,
)
from shared.contracts.requests import BatchRequest, FinalRequest, Limits
from shared.contracts.sheet_row import row_cells
from shared.domain.batch_news import batch_events
from shared.domain.errors import PermanentError, QuotaExceeded, TransientError
from shared.domain.job import TERMINAL_VARIANT_STATES, Job, VariantState
from shared.services.cancels import Cancels
from shared.services.dead_letters import DELIVERY_COUNT, DeadLetters
from shared.services.economy import Economy
from shared.services.exports import MANIFEST, MANIFEST_JSON, Exporter, Exports
from shared.services.generation import Generation
from shared.services.intake import Accepted, Intake
from shared.services.ledger import JobLedger
from shared.services.notices import Notices
from shared.services.notices import request_id as notice_request_id
from shared.services.once import InProgress
from shared.services.ports import GeneratedImage, ThumbnailSpec
from shared.services.preflight import Preflight
from shared.services.rerolls import Promotion, Queued, Rerolls
from shared.services.reviews import Reviews
from shared.services.sheet_check import SheetCheck
from shared.services.sheet_rows import QueuedRows, SheetRows
from shared.services.sheet_sync import SheetSync
from shared.services.sweeper import Sweeper, SweepReport
from shared.services.thumbnails import Thumbnails
from tests.fakes import (
    IMAGES_BUCKET,
    LINK_SIGNING_KEY,
    PUBLIC_BASE_URL,
    T0,
    FakeBatchRunner,
    FakeBudgetLedger,
    FakeClock,
    FakeEconomyBatches,
    FakeIdempotencyStore,
    FakeJobStore,
    FakeModelDirectory,
    FakeNoticeLog,
    FakeObjectStore,
    FakeQuotaGate,
    FakeReferenceLoader,
    FakeSheetLayouts,
    FakeSheetWriter,
    FakeTeamChannel,
    make_settings,
    png_bytes,
)

MAX_ATTEMPTS = 8  # deliveries of one message before it is dead-lettered
MAX_REROLLS = 6
MAX_NESTED = 4  # actors in the middle of their work at once
ACK_DEADLINE_S = 300.0  # a push not answered by then is delivered again
FUNCTION_TIMEOUT_S = 600.0  # the functions' timeout (infra/terraform/settings.tf)
TICK_EVERY_S = 60.0  # Cloud Scheduler's call of the economy function
_JOB_ID = re.compile(r"job_[0-9a-f]+_[0-9]+")
LEASE_S = 30.0
CALLER = "alice"
MODEL = "gemini-nano-banana-2.1"
FAILURE_SHARE = 0.2  # NOTIFY_FAILURE_SHARE of the simulated deployment


class Chooser(Protocol):
    """Where the run's choices come from: 0 is always the plain, fault-free choice."""

    def below(self, n: int) -> int: ...


class SeededChooser:
    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def below(self, n: int) -> int:
        return self._rng.randrange(n) if n > 1 else 0


class Crash(BaseException):
    """The actor's instance died: raised through every frame, caught by no service."""


@dataclass
class Actor:
    """One unit of work: a push delivery, an HTTP request, a scheduled tick."""

    name: str
    work: Callable[[Actor], None]
    dead: bool = False
    stalled: bool = False
    attempt: int = 1
    unstored: int = 0  # images Gemini made (and billed) for it that it has not stored yet
    # A push delivery: its message, delivered again (Pub/Sub redelivers a push that
    # is not answered within the ack deadline, or answered with an error).
    again: Callable[[Actor], None] | None = None
    began: float = 0.0  # when it started (the clock's monotonic seconds)


@dataclass
class Stats:
    points: int = 0
    crashes: int = 0
    slow_calls: int = 0
    stalls: int = 0
    interleavings: int = 0
    crash_points: set[str] = field(default_factory=set)
    deliveries: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    lost: int = 0  # paid images that died with their holder before it stored them
    timeouts: int = 0  # actors the platform ended at their function's timeout
    holders_stalled: int = 0  # stalls of an actor holding a lease (its heartbeat stopped)


class EveryDeliveryItsOwnInstance:
    """The generate function's turn lock, for a run where one actor may run inside
    another's port call on the same thread: each delivery counts as its own instance
    (the turn only spaces out an instance's own deliveries; it decides nothing)."""

    def acquire(self) -> bool:
        return True

    def release(self) -> None:
        return None


class InlineExecutor(Executor):
    """Runs a row write at once (no thread: the run stays deterministic); a crash is
    the actor's and goes through."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:
            future.set_exception(exc)
        return future


class World:
    """The fakes, the services on them, the message queue and the fault injection."""

    def __init__(self, chooser: Chooser, faults: bool = True) -> None:
        self.chooser = chooser
        self.faults = faults
        self.stats = Stats()
        self.clock = SimClock(self)
        self.running: list[Actor] = []
        self.queue: list[Actor] = []
        self._next_tick = T0 + timedelta(seconds=TICK_EVERY_S)
        # The economy function runs one request at a time (max one instance of
        # concurrency one): the tick in progress, if any.
        self._ticking: Actor | None = None
        self.settings = make_settings(
            gemini_model=MODEL,
            claim_lease_s=LEASE_S,
            claim_wait_s=0,
            quota_wait_s=0,
            generate_concurrency=1,
            gemini_failure_budget=3,
            max_event_age_s=4 * 3600,
            economy_lease_s=60,
            # Every port call on the scheduler's thread: the zip reads one image at a time.
            export_read_ahead=1,
        )
        self.idempotency = FakeIdempotencyStore()
        self.store = FakeJobStore(self.idempotency)
        self.budget = FakeBudgetLedger(self.idempotency)
        self.objects = FakeObjectStore()
        self.objects.on_create = self._object_created
        self.trace: list[str] = []  # what ran, and every fault, in order
        self.sheets = FakeSheetWriter()
        self.sheets.on_write = lambda w: self.note(
            f"  row {w.scene_id} <- {w.cells.get('status_img')}"
            f" (by {self.running[-1].name if self.running else '?'})"
        )
        self.quota = FakeQuotaGate()
        self.economy_batches = FakeEconomyBatches()
        self.runner = FakeBatchRunner()
        self.generator = SimGenerator(self)
        self.links = LinkSigner(LINK_SIGNING_KEY, PUBLIC_BASE_URL)
        self.heartbeat = SimHeartbeat(self)
        self.finished_logs: dict[str, int] = {}
        self.batches_by_key: dict[str, set[str]] = {}
        self.keys: set[str] = set()
        self.exports_asked: set[str] = set()
        self.late_calls: list[str] = []
        p = self.port
        store, budget = p("store", self.store), p("budget", self.budget)
        sync = SheetSync(
            store,
            p("sheets", self.sheets),
            self.links,
            clock=self.clock,
            sleep=self.clock.sleep,
            monotonic=self.clock.monotonic,
        )
        self.notice_log = FakeNoticeLog()
        self.chat = FakeTeamChannel()
        notices = Notices(
            store,
            p("notices", self.notice_log),
            p("chat", self.chat),
            failure_share=FAILURE_SHARE,
            clock=self.clock,
        )
        # As deployed: deliveries queue their rows for the fleet's one sheet writer,
        # whose own ledger writes them.
        rows_queue = p("rows_queue", SimRowsQueue(self))
        self.ledger = JobLedger(
            store,
            QueuedRows(store, self.links, rows_queue),
            budget,
            self.clock,
            InlineExecutor,
            notices=notices,
        )
        writer = JobLedger(store, sync, budget, self.clock, InlineExecutor, notices=notices)
        self.sheet_rows = SheetRows(store, writer, rows_queue, workers=1)
        self.intake_ledger = JobLedger(store, budget=budget, clock=self.clock, notices=notices)
        publisher = p("publisher", SimPublisher(self))
        objects = p("objects", self.objects)
        idempotency = p("idempotency", self.idempotency)
        self.intake = Intake(
            self.settings,
            store,
            self.intake_ledger,
            publisher,
            self.links,
            budget,
            idempotency,
            Preflight(FakeModelDirectory(), ttl_s=300, monotonic=self.clock.monotonic),
            SheetCheck(FakeSheetLayouts(), monotonic=self.clock.monotonic),
            clock=self.clock,
        )
        self.generation = Generation(
            settings=self.settings,
            ledger=self.ledger,
            objects=objects,
            generator=p("gemini", self.generator),
            references=FakeReferenceLoader(),
            quota=p("quota", self.quota),
            probe=lambda data, max_pixels: "image/png",
            clock=self.clock,
            sleep=self.clock.sleep,
            monotonic=self.clock.monotonic,
            heartbeat=self.heartbeat,
            turns=EveryDeliveryItsOwnInstance(),
        )
        self.thumbnails = Thumbnails(self.settings, self.ledger, objects, _thumbnail, self.clock)
        self.dead_letters = DeadLetters(self.ledger, self.settings, objects, self.clock)
        self.cancels = Cancels(store, self.intake_ledger, publisher, self.clock)
        self.reviews = Reviews(store, self.intake_ledger, self.clock)
        self.rerolls = Rerolls(
            self.settings, store, self.intake_ledger, publisher, budget, idempotency, self.clock
        )
        self.economy = Economy(
            settings=self.settings,
            ledger=self.ledger,
            store=store,
            batches=p("economy_batches", self.economy_batches),
            runner=p("batch_runner", self.runner),
            references=FakeReferenceLoader(),
            objects=objects,
            publisher=publisher,
            probe=lambda data, max_pixels: "image/png",
            clock=self.clock,
            monotonic=self.clock.monotonic,
            heartbeat=self.heartbeat,
        )
        export_publisher = p("export_publisher", SimExportPublisher(self))
        self.sweeper = SimSweeper(
            self.settings,
            store,
            self.ledger,
            idempotency,
            budget,
            publisher,
            export_publisher,
            self.clock,
        )
        self.exports = Exports(store, export_publisher, self.links, self.clock)
        self.exporter = Exporter(
            self.settings, store, objects, self.clock, publisher=export_publisher
        )

    def note(self, text: str) -> None:
        """A line of the trace, with the simulated seconds since the start."""
        self.trace.append(f"{int((self.clock() - T0).total_seconds()):>6}s {text}")

    # ------------------------------------------------------------------ faults
    def port(self, name: str, inner: Any) -> Any:
        return Port(self, name, inner)

    def point(self, where: str, after: bool) -> None:
        """A port call of the running actor is about to happen, or just happened."""
        actor = self.running[-1] if self.running else None
        if actor is None:
            return
        if actor.dead:
            raise Crash(where)
        self._timeout(actor, where)
        self.stats.points += 1
        if self.faults:
            self._fault(actor, where, after)
            # Time passed (a slow call, others' work): no call is made, and no
            # answer taken, after the function's timeout.
            self._timeout(actor, where)

    def _timeout(self, actor: Actor, where: str) -> None:
        if self.clock.monotonic() - actor.began > FUNCTION_TIMEOUT_S:
            # The platform ends an instance at its function's timeout.
            self.stats.timeouts += 1
            self.note(f"  {actor.name}: ended at its timeout, {where}")
            actor.dead = True
            self.stats.lost += actor.unstored
            raise Crash(where)

    def _fault(self, actor: Actor, where: str, after: bool) -> None:
        roll = self.chooser.below(100)
        if roll < 88:
            return
        phase = "after" if after else "before"
        if roll < 92 and self.stats.crashes < 8:
            self.stats.crashes += 1
            self.stats.crash_points.add(f"{where} ({phase})")
            self.note(f"  {actor.name}: dies {phase} {where}")
            actor.dead = True
            self.stats.lost += actor.unstored
            raise Crash(where)
        if roll < 94:
            # The call takes up to ten minutes; the world goes on meanwhile.
            self.stats.slow_calls += 1
            self.note(f"  {actor.name}: {where} is slow")
            seconds = 30.0 * (1 + self.chooser.below(20))
            self.advance(seconds)
            if seconds > ACK_DEADLINE_S:
                self._past_ack_deadline(actor)
            self._others(actor, self.chooser.below(3))
            return
        if roll < 95 and self.stats.stalls < 3:
            # The holder stops (a pause, no heartbeat) past its lease; others go on.
            self.stats.stalls += 1
            self.stats.holders_stalled += int(self.heartbeat.beats_for(actor))
            actor.stalled = True
            self.note(f"  {actor.name}: stalls {phase} {where}")
            self.advance(LEASE_S * (1 + self.chooser.below(3)) + 1)
            job_id = _job_of(actor.name)
            if job_id is not None and self.chooser.below(3) == 1:
                self.cancel(job_id)  # it looks stuck: someone cancels it
            if self.chooser.below(2) == 1:
                self._past_ack_deadline(actor)
            self._others(actor, 1 + self.chooser.below(2))
            actor.stalled = False
            return
        self._others(actor, 1)

    def _past_ack_deadline(self, actor: Actor) -> None:
        """Pub/Sub delivers a push again while the first is still at work."""
        if actor.again is not None:
            self.stats.duplicates += 1
            self.note(f"  {actor.name}: delivered again (ack deadline)")
            self.add(actor.name, actor.again, actor.attempt + 1)

    def _others(self, actor: Actor, count: int) -> None:
        """Other actors run now, while ``actor`` is in the middle of its work; half the
        time one that works on the same job, if any is waiting."""
        job_id = _job_of(actor.name)
        for _ in range(count):
            if len(self.running) >= MAX_NESTED or not self.queue:
                return
            self.stats.interleavings += 1
            same = [i for i, a in enumerate(self.queue) if job_id and job_id in a.name]
            if same and self.chooser.below(2) == 1:
                self.step(same[self.chooser.below(len(same))])
            else:
                self.step()

    def advance(self, seconds: float) -> None:
        """Time passes; live holders' heartbeats beat meanwhile, and Cloud Scheduler
        runs the economy tick and the sweeper when its minute comes (once, however
        many minutes passed: one run at a time, and a run past the function's
        timeout has been ended by the platform)."""
        left = seconds
        while left > 0:
            step = min(left, LEASE_S / 3) if self.heartbeat.active else left
            self.clock.move(step)
            left -= step
            self.heartbeat.beat()
        ticking = self._ticking
        if ticking is not None and self.clock.monotonic() - ticking.began > FUNCTION_TIMEOUT_S:
            self._ticking = None  # ended: it makes no call after its timeout (``point``)
        if self.clock() >= self._next_tick and self._ticking is None:
            self._next_tick = self.clock() + timedelta(seconds=TICK_EVERY_S)
            self._execute(Actor("scheduled tick", self._tick_work))

    # ------------------------------------------------------------------ actors
    def add(self, name: str, work: Callable[[Actor], None], attempt: int = 1) -> None:
        self.queue.append(Actor(name, work, attempt=attempt))

    def step(self, index: int | None = None) -> bool:
        """Run one queued actor (``index``, or one the chooser picks); False when none
        is left."""
        if not self.queue:
            return False
        if index is None:
            index = self.chooser.below(len(self.queue)) if self.faults else 0
        self._execute(self.queue.pop(index))
        return True

    def _execute(self, actor: Actor) -> None:
        actor.began = self.clock.monotonic()
        self.running.append(actor)
        self.note(f"{'  ' * (len(self.running) - 1)}{actor.name} (try {actor.attempt})")
        try:
            actor.work(actor)
        except Crash:
            pass
        finally:
            self.running.pop()
            self.heartbeat.forget(actor)

    def publish(self, message: JobMessage, attributes: dict[str, str]) -> None:
        published = self.clock()
        self.add(
            f"deliver {message.job_id}",
            lambda actor: self._deliver(actor, message, attributes, published),
        )
        if self.faults and self.chooser.below(8) == 1:
            self.stats.duplicates += 1
            self.add(
                f"deliver twice {message.job_id}",
                lambda actor: self._deliver(actor, message, attributes, published),
            )

    def _deliver(
        self, actor: Actor, message: JobMessage, attributes: dict[str, str], at: datetime
    ) -> None:
        self.stats.deliveries += 1
        data = message.model_dump_json().encode()
        push = PushMessage(data, dict(attributes), "m", at.isoformat())
        actor.again = lambda a: self._deliver(a, message, attributes, at)
        try:
            self.generation.handle(message, at)
        except (Crash, TransientError, PermanentError):
            self._redeliver(actor, push, actor.again)

    def _redeliver(self, actor: Actor, push: PushMessage, again: Callable[[Actor], None]) -> None:
        if actor.attempt >= MAX_ATTEMPTS:
            self.stats.dead_letters += 1
            attributes = {**push.attributes, DELIVERY_COUNT: str(actor.attempt)}
            dead = PushMessage(push.data, attributes, push.message_id, push.publish_time)
            self.add("dead letter", lambda a: self._dead_letter(a, dead))
            return
        self.add(actor.name, again, actor.attempt + 1)

    def _dead_letter(self, actor: Actor, message: PushMessage) -> None:
        try:
            self.dead_letters.handle(message)
        except (Crash, TransientError):
            self.add(actor.name, lambda a: self._dead_letter(a, message), actor.attempt + 1)

    def _object_created(self, bucket: str, name: str) -> None:
        if not name.startswith(self.settings.images_prefix):
            return
        stored = self.objects.objects[(bucket, name)]
        event = StorageObject(
            "OBJECT_FINALIZE", bucket, name, "1", stored.content_type, 8, dict(stored.metadata)
        )
        self.add(f"finalize {name}", lambda a: self._thumbnail(a, event))

    def _thumbnail(self, actor: Actor, event: StorageObject) -> None:
        self.stats.deliveries += 1
        actor.again = lambda a: self._thumbnail(a, event)
        try:
            self.thumbnails.handle(event)
        except (Crash, TransientError):
            payload = {
                "name": event.name,
                "bucket": event.bucket,
                "contentType": event.content_type,
                "size": str(event.size),
                "generation": event.generation,
                "metadata": event.metadata,
            }
            attributes = {
                "eventType": event.event_type,
                "bucketId": event.bucket,
                "objectId": event.name,
                "objectGeneration": event.generation,
            }
            push = PushMessage(
                json.dumps(payload).encode(), attributes, "m", self.clock().isoformat()
            )
            self._redeliver(actor, push, lambda a: self._thumbnail(a, event))

    def _export(self, actor: Actor, message: ExportMessage) -> None:
        self.stats.deliveries += 1
        actor.again = lambda a: self._export(a, message)
        try:
            self.exporter.handle(message)
        except (Crash, TransientError, PermanentError):
            attributes = {"batch_id": message.batch_id, "export_id": message.export_id}
            push = PushMessage(
                message.model_dump_json().encode(), attributes, "m", self.clock().isoformat()
            )
            self._redeliver(actor, push, lambda a: self._export(a, message))

    def _rows(self, actor: Actor, message: RowsMessage) -> None:
        self.stats.deliveries += 1
        actor.again = lambda a: self._rows(a, message)
        try:
            self.sheet_rows.flush(message.spreadsheet_id)
        except (Crash, TransientError, PermanentError):
            # No dead letters on this subscription: retried until the message's
            # retention ends (here, a few attempts); the sweeper follows up after.
            if actor.attempt < MAX_ATTEMPTS:
                self.add(actor.name, lambda a: self._rows(a, message), actor.attempt + 1)

    def check_call_age(self, actor: Actor, seed: int) -> None:
        """A Gemini call is paid only for an image that has not waited past the age
        limit (checked when its delivery began; the call may come up to a function's
        timeout later)."""
        job_id = _job_of(actor.name)
        job = self.store.get_job(job_id) if job_id else None
        if job is None:
            return
        versions = [v for variant in job.variants.values() for v in variant.versions]
        asked = next((v.requested_at for v in versions if v.seed == seed), None)
        if asked is None and job.lane != "live":
            return  # an economy image handed to the live lane: its wait starts then
        asked = asked or job.created_at
        waited = (self.clock() - asked).total_seconds()
        if waited > self.settings.max_event_age_s + FUNCTION_TIMEOUT_S:
            self.late_calls.append(
                f"{job_id}: a Gemini call for an image asked {int(waited)} s ago"
            )

    # ------------------------------------------------------------------ requests
    def submit(self, request: BatchRequest, key: str, tries: int = 6) -> None:
        self.keys.add(key)
        first = self.clock()
        # The sheet sends the same key again only within 23 hours (apps_script/
        # README.md): the server keeps a request's answer for IDEMPOTENCY_TTL_S.
        window_s = self.settings.idempotency_ttl_s - 3600

        def work(actor: Actor) -> None:
            if actor.attempt > 1 and (self.clock() - first).total_seconds() > window_s:
                return  # the user was told it is not known whether the batch arrived
            try:
                outcome = self.intake.submit(request, CALLER, key)
            except (Crash, TransientError):
                outcome = None
            if isinstance(outcome, Accepted):
                self.batches_by_key.setdefault(key, set()).add(outcome.answer.batch_id)
                return
            if (outcome is None or isinstance(outcome, InProgress)) and actor.attempt < tries:
                self.add(actor.name, work, actor.attempt + 1)  # the client tries again

        self.add(f"submit {key}", work)

    def cancel(self, job_id: str) -> None:
        def work(actor: Actor) -> None:
            try:
                self.cancels.cancel_job(job_id, CALLER)
            except (Crash, TransientError):
                if actor.attempt < 3:
                    self.add(actor.name, work, actor.attempt + 1)

        self.add(f"cancel {job_id}", work)

    def reroll(
        self,
        job_id: str,
        n: int,
        key: str,
        instruction: str | None,
        promotion: Promotion | None = None,
    ) -> None:
        def work(actor: Actor) -> None:
            try:
                outcome = self.rerolls.request(
                    job_id, n, instruction, CALLER, False, key, promotion=promotion
                )
            except (Crash, TransientError):
                outcome = None
            if isinstance(outcome, Queued):
                return
            if (outcome is None or isinstance(outcome, InProgress)) and actor.attempt < 4:
                self.add(actor.name, work, actor.attempt + 1)

        self.add(f"reroll {job_id}#{n}", work)

    def pick(self, job_id: str) -> None:
        """The team picks variant 1 (the version shown) as the scene's final image."""

        def work(actor: Actor) -> None:
            with contextlib.suppress(Crash, TransientError):
                self.reviews.pick(job_id, FinalRequest(variant=1), CALLER)

        self.add(f"pick {job_id}#1", work)

    def export(self, batch_id: str) -> None:
        def work(actor: Actor) -> None:
            try:
                view = self.exports.request(batch_id, CALLER)
            except (Crash, TransientError):
                if actor.attempt < 3:
                    self.add(actor.name, work, actor.attempt + 1)
                return
            if view is not None:
                self.exports_asked.add(batch_id)

        self.add(f"export {batch_id}", work)

    def tick(self) -> None:
        """A tick out of schedule (a retry of the scheduler's call, say)."""
        self.add("tick", self._tick_work)

    def _tick_work(self, actor: Actor) -> None:
        self._ticking = actor
        try:
            for batch in list(self.runner.batches.values()):
                if batch.state in ("pending", "running"):
                    outcome = self.chooser.below(6) if self.faults else 0
                    self.runner.set_state(batch.name, "expired" if outcome == 1 else "succeeded")
            self.sweeper.sweep()  # as functions/economy.py: the sweep first
            self.economy.tick()
        finally:
            if self._ticking is actor:
                self._ticking = None


@dataclass(frozen=True)
class EndingPass:
    """A sweep that got through its passes that end jobs past their age limit."""

    began: datetime
    ended: datetime
    skipped: frozenset[str]  # jobs it reported an error for: the next sweep ends them


@dataclass(frozen=True)
class SimSweeper(Sweeper):
    """The sweeper, recording each sweep that got through its ending passes (how soon
    a job past its limit ends depends on sweeps running, not on a fixed time)."""

    passes: list[EndingPass] = field(default_factory=list)
    began: dict[int, datetime] = field(default_factory=dict)

    def _fail_old_unstarted(self, report: SweepReport) -> list[Job]:
        self.began[id(report)] = self.clock()
        return super()._fail_old_unstarted(report)

    def _overdue_jobs(self, report: SweepReport) -> None:
        super()._overdue_jobs(report)
        skipped = frozenset(
            found.group(0) for error in report.errors if (found := _JOB_ID.search(error))
        )
        self.passes.append(EndingPass(self.began.pop(id(report)), self.clock(), skipped))


class SimClock(FakeClock):
    def __init__(self, world: World) -> None:
        super().__init__(T0)
        self._world = world

    def move(self, seconds: float) -> None:
        super().advance(seconds)

    def advance(self, seconds: float) -> None:
        # A service's own wait (a poll, a backoff): time passes for everyone.
        self._world.advance(seconds)


class Port:
    """A fake behind a proxy: every method call is a fault point before and after."""

    def __init__(self, world: World, name: str, inner: Any) -> None:
        self._world, self._name, self._inner = world, name, inner

    def __getattr__(self, attribute: str) -> Any:
        real = getattr(self._inner, attribute)
        if not callable(real):
            return real
        world, where = self._world, f"{self._name}.{attribute}"

        def call(*args: Any, **kwargs: Any) -> Any:
            world.point(where, after=False)
            result = real(*args, **kwargs)
            if where == "objects.create" and world.running:
                # Stored, or refused because the image is there already: either
                # way this holder's paid image is accounted for.
                actor = world.running[-1]
                actor.unstored = max(0, actor.unstored - 1)
            world.point(where, after=True)
            return result

        return call

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__getattr__("__call__")(*args, **kwargs)


class SimHeartbeat:
    """Heartbeats that beat whenever simulated time passes, for holders that are alive
    and not stalled."""

    def __init__(self, world: World) -> None:
        self._world = world
        self._beating: list[tuple[Actor, Callable[[], bool]]] = []

    @contextmanager
    def keep(self, renew: Callable[[], bool], every_s: float) -> Iterator[None]:
        actor = self._world.running[-1] if self._world.running else None
        entry = (actor, renew) if actor is not None else None
        if entry is not None:
            self._beating.append(entry)  # type: ignore[arg-type]
        try:
            yield
        finally:
            if entry is not None and entry in self._beating:
                self._beating.remove(entry)  # type: ignore[arg-type]

    def beat(self) -> None:
        world = self._world
        for actor, renew in list(self._beating):
            if actor.dead or actor.stalled:
                continue
            faults, world.faults = world.faults, False  # a heartbeat's own write is plain
            world.running.append(actor)
            try:
                if not renew():
                    self._beating.remove((actor, renew))
            except Crash:
                pass
            finally:
                world.running.pop()
                world.faults = faults

    @property
    def active(self) -> bool:
        return bool(self._beating)

    def beats_for(self, actor: Actor) -> bool:
        return any(a is actor for a, _ in self._beating)

    def forget(self, actor: Actor) -> None:
        self._beating = [(a, r) for a, r in self._beating if a is not actor]


class SimPublisher:
    """Pub/Sub: publishing may fail for a message; what goes out is queued."""

    def __init__(self, world: World) -> None:
        self._world = world

    def publish(self, messages: list[tuple[JobMessage, dict[str, str]]]) -> dict[str, str]:
        failed: dict[str, str] = {}
        for message, attributes in messages:
            if self._world.faults and self._world.chooser.below(16) == 1:
                failed[message.job_id] = "DeadlineExceeded: 60s"
                continue
            self._world.publish(message, dict(attributes))
        return failed


class SimExportPublisher:
    """The exports topic: publishing may fail (the request says so); what goes out is
    delivered, sometimes twice."""

    def __init__(self, world: World) -> None:
        self._world = world

    def publish_export(self, message: ExportMessage) -> None:
        world = self._world
        if world.faults and world.chooser.below(16) == 1:
            raise TransientError("the export could not be queued: DeadlineExceeded")
        for _ in range(2 if world.faults and world.chooser.below(8) == 1 else 1):
            world.add(f"export {message.export_id}", lambda a: world._export(a, message))


class SimRowsQueue:
    """The sheet rows topic: publishing may fail; what goes out is delivered to the
    one sheet writer, sometimes twice."""

    def __init__(self, world: World) -> None:
        self._world = world

    def flush(self, spreadsheet_id: str) -> None:
        world = self._world
        if world.faults and world.chooser.below(16) == 1:
            raise TransientError("the sheet's rows could not be queued: DeadlineExceeded")
        name = f"rows {spreadsheet_id}"
        if any(actor.name == name for actor in world.queue):
            # A message still waiting runs after this change, and covers it: one of
            # them stands for the many Pub/Sub carries, to keep schedules short.
            return
        message = RowsMessage(spreadsheet_id=spreadsheet_id)
        for _ in range(2 if world.faults and world.chooser.below(8) == 1 else 1):
            world.add(name, lambda a: world._rows(a, message))


class SimGenerator:
    """Gemini: an image, or now and then a quota refusal or a failure; every call that
    returns an image is paid for."""

    def __init__(self, world: World) -> None:
        self._world = world
        self.paid = 0

    def generate(self, model: str, prompt: str, references: Any, seed: int, **_: Any) -> Any:
        world = self._world
        roll = world.chooser.below(20) if world.faults else 0
        if roll == 1:
            raise QuotaExceeded("429 RESOURCE_EXHAUSTED", 5.0, per_day=False)
        if roll == 2:
            raise TransientError("Gemini answered 503")
        if roll == 3:
            raise PermanentError("Gemini returned no image: blocked (finish reason SAFETY)")
        self.paid += 1
        if world.running:
            world.running[-1].unstored += 1
            world.note(f"  {world.running[-1].name}: Gemini made an image (seed {seed})")
            world.check_call_age(world.running[-1], seed)
        tokens = 1120 + world.chooser.below(3) if world.faults else 1120
        usage = {"prompt_tokens": 10, "output_tokens": tokens, "output_image_tokens": tokens}
        return GeneratedImage(png_bytes(color=(seed % 255, 0, 0)), "image/png", usage)


def _job_of(name: str) -> str | None:
    """The job an actor works on, from its name (a delivery, a finalize, a cancel)."""
    found = _JOB_ID.search(name)
    return found.group(0) if found else None


def _thumbnail(data: bytes, spec: ThumbnailSpec) -> bytes:
    return b"thumbnail"


# --------------------------------------------------------------------------- a run


@dataclass
class Run:
    world: World
    violations: list[str]
    schedule: list[str]


def batch_request(
    prefix: str, variants: list[int], lanes: list[str], style_refs: list[str] | None = None
) -> BatchRequest:
    return BatchRequest.model_validate(
        {
            "style_refs": style_refs or [],
            "items": [
                {"scene_id": f"{prefix}-{i}", "prompt": f"{prefix} {i}", "variants": v}
                | ({"lane": lane} if lane != "live" else {})
                for i, (v, lane) in enumerate(zip(variants, lanes, strict=True), start=1)
            ],
            "runMode": "live",
            "spreadsheet_id": "sheet123",
            "worksheet": "Scenes",
        },
        context={"limits": Limits(images_bucket=IMAGES_BUCKET, max_variants=4)},
    )


@contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    """Ids, seeds and jitter from one seeded source, so a run replays exactly."""
    rng = random.Random(seed)
    saved = (secrets.token_hex, secrets.randbelow, uuid.uuid4, random.uniform)
    secrets.token_hex = lambda n=16: f"{rng.getrandbits(8 * n):0{2 * n}x}"  # type: ignore[assignment]
    secrets.randbelow = lambda n: rng.randrange(n)  # type: ignore[assignment]
    uuid.uuid4 = lambda: uuid.UUID(int=rng.getrandbits(128), version=4)  # type: ignore[assignment]
    random.uniform = rng.uniform  # type: ignore[assignment]
    try:
        yield
    finally:
        secrets.token_hex, secrets.randbelow, uuid.uuid4, random.uniform = saved  # type: ignore[assignment]


def run(chooser: Chooser, steps: int = 300, seed: int = 0) -> Run:
    """One simulated run: a few batches, cancels, re-rolls and exports under faults,
    then a fault-free drain, then the invariants."""
    with _deterministic(seed):
        return _run(chooser, steps)


def _run(chooser: Chooser, steps: int) -> Run:
    world = World(chooser)
    schedule: list[str] = []
    ours = logging.getLogger("shared")
    ledger_log = logging.getLogger("shared.services.ledger")
    handler = _FinishCounter(world.finished_logs)
    ledger_log.addHandler(handler)
    level, propagate = ledger_log.level, ours.propagate
    ledger_log.setLevel(logging.INFO)
    quiet = logging.NullHandler()
    ours.addHandler(quiet)
    ours.propagate = False  # thousands of warnings a run: the violations say what matters
    try:
        batches = 1 + chooser.below(2)
        for b in range(batches):
            items = 1 + chooser.below(3)
            variants = [1 + chooser.below(2) for _ in range(items)]
            lanes = ["economy" if chooser.below(5) == 1 else "live" for _ in range(items)]
            key = f"key-{b}"
            world.submit(batch_request(f"b{b}", variants, lanes), key)
            schedule.append(f"submit {key}: variants {variants}, lanes {lanes}")
        rerolls = 0
        anchored = False
        for step in range(steps):
            action = chooser.below(24)
            job_ids = sorted(world.store.job_ids)
            if action == 2 and rerolls >= MAX_REROLLS:
                action = 0
            if action == 1 and job_ids:
                job_id = job_ids[chooser.below(len(job_ids))]
                world.cancel(job_id)
                schedule.append(f"step {step}: cancel {job_id}")
            elif action == 2 and job_ids:
                job_id = job_ids[chooser.below(len(job_ids))]
                key = f"reroll-{step}"
                kind = chooser.below(3)
                instruction = "warmer" if kind == 1 else None
                promotion = Promotion("2K") if kind == 2 else None
                world.reroll(job_id, 1, key, instruction, promotion)
                rerolls += 1
                what = "promote" if promotion else "reroll"
                schedule.append(f"step {step}: {what} {job_id}#1 ({key})")
            elif action == 3:
                world.tick()
            elif action == 4:
                world.advance(5.0 * (1 + chooser.below(24)))
            elif action == 5 and world.store.batches:
                batch_ids = sorted(world.store.batches)
                batch_id = batch_ids[chooser.below(len(batch_ids))]
                world.export(batch_id)
                schedule.append(f"step {step}: export {batch_id}")
            elif action == 7 and job_ids:
                job_id = job_ids[chooser.below(len(job_ids))]
                world.pick(job_id)
                schedule.append(f"step {step}: pick {job_id}#1 as final")
            elif action == 6 and job_ids and not anchored:
                # A batch whose image takes an earlier scene's image as its style anchor.
                anchored = True
                scene = world.store.job(job_ids[chooser.below(len(job_ids))]).scene_id
                lanes = ["economy" if chooser.below(3) == 1 else "live"]
                request = batch_request("a", [1], lanes, [f"scene:{scene}#1"])
                world.submit(request, "key-anchored")
                schedule.append(f"step {step}: submit key-anchored, anchored on {scene}, {lanes}")
            if not world.step():
                world.advance(60)  # nothing to do this minute (the scheduler ticks)
        drain(world)
        return Run(world, violations(world), schedule)
    finally:
        ledger_log.removeHandler(handler)
        ledger_log.setLevel(level)
        ours.removeHandler(quiet)
        ours.propagate = propagate


def drain(world: World, rounds: int = 60) -> None:
    """Faults off: deliver everything, tick, and let every lease run out, until quiet."""
    world.faults = False
    for _ in range(rounds):
        while world.step():
            pass
        world.advance(max(LEASE_S, world.settings.economy_lease_s) + 1)
        world.tick()
        while world.step():
            pass
        if not world.queue and _all_ended(world) and not _open_work(world):
            return
        world.advance(600)


def _all_ended(world: World) -> bool:
    return all(
        slot.state in TERMINAL_VARIANT_STATES
        for job in map(world.store.job, world.store.job_ids)
        for variant in job.variants.values()
        for _, slot in variant.slots()
    )


def _open_work(world: World) -> bool:
    """Requests not answered, follow-ups not run, exports not ended: what the sweeper
    (every minute in production) still has to do."""
    store = world.store
    return (
        any(not r.answered for r in world.idempotency.records.values())
        or any(store.job(j).followups_since is not None for j in store.job_ids)
        or any(
            b.export is not None and b.export.state in ("queued", "running")
            for b in store.batches.values()
        )
    )


class _FinishCounter(logging.Handler):
    def __init__(self, counts: dict[str, int]) -> None:
        super().__init__(logging.INFO)
        self._counts = counts

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "event", None) == "job_finished":
            job_id = str(getattr(record, "job_id", ""))
            self._counts[job_id] = self._counts.get(job_id, 0) + 1


# --------------------------------------------------------------------------- invariants


def violations(world: World) -> list[str]:
    found: list[str] = []
    jobs: list[Job] = [world.store.job(j) for j in world.store.job_ids]
    stored = {
        name: world.objects.objects[(IMAGES_BUCKET, name)]
        for name in world.objects.names(IMAGES_BUCKET)
        if name.startswith(world.settings.images_prefix)
    }
    limit = float(world.settings.max_event_age_s)
    recorded: dict[str, str] = {}
    made_images, made_cost = 0, Decimal(0)
    for job in jobs:
        if not job.terminal:
            found.append(f"{job.job_id} never ended: {job.state.value}")
        if job.terminal and job.finished_at is None:
            found.append(f"{job.job_id} ended without finished_at")
        if job.lane == "live":
            found.extend(_late_images(job, limit, world.sweeper.passes))
        if job.followups_since is not None:
            found.append(f"{job.job_id} has follow-ups (settlement, row) that never ran")
        if world.finished_logs.get(job.job_id, 0) > 1:
            found.append(f"{job.job_id} logged job_finished {world.finished_logs[job.job_id]}x")
        for variant in job.variants.values():
            for number, slot in variant.slots():
                image = f"{job.job_id}/{variant.n}/v{number}"
                if slot.state not in TERMINAL_VARIANT_STATES:
                    found.append(f"{image} never ended: {slot.state.value}")
                if slot.object_name is not None:
                    recorded[slot.object_name] = image
                    obj = stored.get(slot.object_name)
                    if obj is None:
                        found.append(f"{image} names {slot.object_name}, which does not exist")
                    elif slot.cost_usd != obj.metadata.get("cost_usd"):
                        found.append(
                            f"{image} charged {slot.cost_usd}, its image cost "
                            f"{obj.metadata.get('cost_usd')}"
                        )
                    if slot.state == VariantState.CANCELLED or (
                        slot.state == VariantState.FAILED and slot.cost_usd is None
                    ):
                        found.append(f"{image} has an image but ended {slot.state.value}, free")
                if slot.cost_usd is not None:
                    made_images += 1
                    made_cost += Decimal(slot.cost_usd)
    for name in stored:
        if name not in recorded:
            found.append(f"{name} was stored (and paid) but no image records it")
    # Paid and never stored: only what died with its holder, and one call per holder
    # that stalled past its lease (its image was made again by another).
    paid = world.generator.paid + _batch_lines_made(world)
    allowed = world.stats.lost + world.stats.holders_stalled
    if paid - len(stored) > allowed:
        found.append(
            f"{paid} images paid for, {len(stored)} stored: more wasted than the "
            f"{world.stats.lost} lost with a killed holder and "
            f"{world.stats.holders_stalled} holders stalled past their lease"
        )
    # Every day's usage (a request after midnight UTC counts on its own day).
    days = [u for (caller, _), u in world.budget.used.items() if caller == CALLER]
    images = sum(u.images for u in days)
    cost = sum((u.cost for u in days), Decimal(0))
    if (images, cost) != (made_images, made_cost):
        found.append(
            f"the day's usage is {images} images / ${cost}; what was made costs "
            f"{made_images} images / ${made_cost}"
        )
    for job in jobs:
        try:
            shown = world.sheets.row(job.scene_id)
        except KeyError:
            found.append(f"the row of {job.scene_id} was never written")
            continue
        if shown != row_cells(job, world.links):
            status = shown.get("status_img")
            found.append(
                f"the row of {job.scene_id} shows {status}, not its final state ({job.state.value})"
            )
    for key, batch_ids in world.batches_by_key.items():
        if len(batch_ids) > 1:
            found.append(f"{key} was answered with {len(batch_ids)} batches")
    if len(world.store.batches) > len(world.keys):
        found.append(f"{len(world.store.batches)} batches for {len(world.keys)} keys")
    for record in world.idempotency.records.values():
        if not record.answered:
            found.append(f"the request {record.names} never ended")
    found.extend(world.late_calls)
    found.extend(_export_violations(world))
    found.extend(_news_violations(world, jobs))
    found.extend(_pick_violations(jobs))
    return found


def _pick_violations(jobs: list[Job]) -> list[str]:
    """A final pick names a finished, approved image; a finished promotion of the
    pick took it over."""
    found: list[str] = []
    for job in jobs:
        final = job.final
        if final is None:
            continue
        try:
            slot = job.slot(final.variant, final.version)
        except KeyError:
            found.append(f"{job.job_id} picks version {final.version}, which does not exist")
            continue
        if slot.state != VariantState.DONE or slot.review is None:
            found.append(f"{job.job_id} picks an image that is {slot.state.value}, unreviewed")
        for number, later in job.variant(final.variant).slots():
            promotes = getattr(later, "promotes", None)
            if promotes == final.version and later.state == VariantState.DONE:
                found.append(f"{job.job_id}: promotion v{number} of the pick is done, not picked")
    return found


def _news_violations(world: World, jobs: list[Job]) -> list[str]:
    """Each batch that ended was told so in one Chat message (one request id, so Chat
    keeps one however often it was posted) that says it ended. (How: as it was when
    it first ended; a late image or a re-roll may change a job after that.)"""
    found: list[str] = []
    for batch_id in world.store.batches:
        own = [job for job in jobs if job.batch_id == batch_id]
        if not own or not all(job.terminal for job in own):
            continue
        (event,) = [e for e in batch_events(own, FAILURE_SHARE) if e.kind == "ended"]
        told = world.chat.messages.get(notice_request_id(event.key))
        if told is None:
            found.append(f"batch {batch_id} ended and the team was never told")
        elif not told.startswith((f"Batch {batch_id} is done", f"Batch {batch_id} ended")):
            found.append(f"batch {batch_id} was told {told.splitlines()[0]!r}, not its end")
    return found


def _late_images(job: Job, limit: float, passes: list[EndingPass]) -> list[str]:
    """A job that made nothing ends by the end of the first sweep past its age limit
    that got through its ending passes without an error for it. (Calls for images
    past the limit are caught as they are made: ``late_calls``.) The sweep counts
    once a delivery that began before the limit has met its timeout and lost its
    lease: an image it holds is not the sweeper's to fail. An image made in time may
    take longer to get its thumbnail: that stage retries until Pub/Sub gives up."""
    found: list[str] = []
    made_any = any(v.generated_at is not None for v in job.variants.values())
    if made_any or not job.terminal:
        return found
    counts_from = job.created_at + timedelta(seconds=limit + FUNCTION_TIMEOUT_S + LEASE_S)
    due = next((p for p in passes if p.began >= counts_from and job.job_id not in p.skipped), None)
    if due is not None and (job.finished_at is None or job.finished_at > due.ended):
        began, ended = ((t - T0).total_seconds() for t in (due.began, due.ended))
        found.append(
            f"{job.job_id} outlived the sweep of {int(began)}-{int(ended)} s past its age limit"
        )
    return found


def _export_violations(world: World) -> list[str]:
    found = []
    for batch_id in sorted(world.exports_asked):
        export = world.store.batches[batch_id].export
        if export is None:
            found.append(f"the export of {batch_id} was answered but never recorded")
            continue
        if export.state not in ("done", "failed"):
            found.append(f"the export of {batch_id} never ended: {export.state}")
        if export.state != "done":
            continue
        obj = world.objects.objects.get((IMAGES_BUCKET, export.object_name or ""))
        if obj is None:
            found.append(f"the export of {batch_id} names {export.object_name}, which is missing")
            continue
        with zipfile.ZipFile(io.BytesIO(obj.data)) as archive:
            members = [n for n in archive.namelist() if n not in (MANIFEST, MANIFEST_JSON)]
        if len(members) != export.images:
            found.append(
                f"the export of {batch_id} says {export.images} images; its zip holds "
                f"{len(members)}"
            )
    return found


def _batch_lines_made(world: World) -> int:
    """Economy images: Gemini's batches that succeeded made (and billed) every line."""
    return sum(len(b.lines) for b in world.runner.batches.values() if b.state == "succeeded")
