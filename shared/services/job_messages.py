"""Handing jobs to the generate function: one Pub/Sub message per job (or version)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from shared.contracts.messages import JobMessage
from shared.domain.job import Job, JobState
from shared.services.ports import JobPublisher


def unstarted(jobs: Iterable[Job]) -> list[Job]:
    """Live jobs no delivery has started yet: publishing them (again) is harmless, a
    duplicate message pays for nothing."""
    return [job for job in jobs if job.lane == "live" and job.state == JobState.QUEUED]


def publish_jobs(
    publisher: JobPublisher, jobs: Iterable[Job], attributes: Mapping[str, str]
) -> dict[str, str]:
    """Publish one message per job; ``{job_id: error}`` for those that did not go out."""
    messages = [
        (JobMessage(job_id=job.job_id, batch_id=job.batch_id, scene_id=job.scene_id), attributes)
        for job in jobs
    ]
    return publisher.publish(messages) if messages else {}
