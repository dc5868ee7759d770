"""The words of the sheet's ``status_img`` cell (and ``/status``'s ``status_text``).

A contract with the Apps Script, which reads the first word to tell a final
state from a running one (apps_script/Sheet.gs mirrors ``RUNNING_WORDS`` and
``FINAL_WORDS``; tests/unit/test_sheet_contract.py ties the two).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from shared.domain.job import Job, JobState, VariantState, Waiting

# Every status starts with one of these words, so the first word tells where a job
# is: not started yet, running (being made, waiting for the quota or its Gemini
# batch, finishing after a cancel), or final (nothing moves a row back from it).
QUEUED_WORD = "queued"
RUNNING_WORDS = ("generating", "waiting", "paused", "economy", "cancelling")
FINAL_WORDS = ("completed", "partial", "failed", "cancelled")


def version_notes(job: Job) -> list[str]:
    """What the sheet says about later versions: one being made, or the newest failed
    (the image before it stays shown)."""
    notes = []
    for key in sorted(job.variants, key=int):
        variant = job.variants[key]
        if not variant.versions:
            continue
        latest = variant.versions[-1]
        word = "edit" if latest.kind == "edit" else "re-roll"
        if latest.state in (VariantState.PENDING, VariantState.GENERATING, VariantState.UPLOADED):
            notes.append(f"variant {variant.n}: {word} (v{latest.version}) being made")
        elif latest.state == VariantState.FAILED:
            notes.append(f"variant {variant.n}: {word} (v{latest.version}) failed: {latest.error}")
    return notes


@dataclass(frozen=True)
class Progress:
    """Where a job stands: counts for machines, words for the sheet."""

    state: JobState
    done: int
    failed: int
    total: int
    status: str


def progress(job: Job) -> Progress:
    """The counts and the sheet's ``status_img`` text for the job's current state.

    The text always starts with a word that says where the job is (queued,
    generating, waiting, paused, economy, cancelling, completed, partial, failed,
    cancelled), so a reader of the sheet can tell a final state from its first
    word; notes on later versions (re-rolls, edits) follow after a semicolon.
    """
    total = job.variant_count
    done = sum(1 for v in job.variants.values() if v.state == VariantState.DONE)
    failed = sum(1 for v in job.variants.values() if v.state == VariantState.FAILED)
    if job.state == JobState.COMPLETED:
        text = "completed"
    elif job.state == JobState.FAILED:
        text = f"failed: {job.error or 'unknown error'}"
    elif job.state == JobState.PARTIAL:
        text = f"partial ({done}/{total}): {job.error or ''}".rstrip(": ")
    elif job.state == JobState.CANCELLED:
        text = f"cancelled ({done}/{total} kept)"
    elif job.cancelled_at is not None:
        text = f"cancelling ({done}/{total})"
    elif waiting_shown(job) and job.waiting is not None:
        text = waiting_text(job.waiting, done, total)
    elif job.lane == "economy" and (words := economy_text(job, done, total)):
        text = words
    elif job.state == JobState.QUEUED:
        text = "queued"
    else:
        text = f"generating ({done}/{total})"
    notes = version_notes(job)
    if notes:
        text = "; ".join([text, *notes])
    return Progress(state=job.state, done=done, failed=failed, total=total, status=text)


def economy_text(job: Job, done: int, total: int) -> str | None:
    """Where an economy job is, until its images come back; then progress as any job's."""
    variants = job.variants.values()
    if any(v.state == VariantState.BATCHED for v in variants):
        states = {r.state for r in job.gemini_batches}
        where = "Gemini batch running" if "running" in states else "waiting for the Gemini batch"
        return f"economy: {where} ({done}/{total})"
    if job.state == JobState.QUEUED:
        return "economy: queued for a Gemini batch"
    return None


def waiting_shown(job: Job) -> bool:
    """A job waits only while none of its variants is being made."""
    return (
        job.waiting is not None
        and not job.terminal
        and not any(v.state == VariantState.GENERATING for v in job.variants.values())
    )


def waiting_text(waiting: Waiting, done: int, total: int) -> str:
    if waiting.reason == "spend_cap":
        resume = (waiting.until + timedelta(seconds=59)).strftime("%H:%M")
        return (
            f"paused ({done}/{total}): the project's Gemini spending cap was reached; "
            f"tries again about {resume} UTC (raise the cap in AI Studio to resume sooner)"
        )
    if waiting.reason == "daily_quota":
        return (
            f"paused ({done}/{total}): daily Gemini quota reached, resumes after midnight Pacific"
        )
    # Rounded up: "about" should not promise a minute too early.
    resume = (waiting.until + timedelta(seconds=59)).strftime("%H:%M")
    return f"waiting ({done}/{total}) for the Gemini quota, resumes about {resume} UTC"
