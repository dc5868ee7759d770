"""The one log entry per finished job that the log-based metrics count."""

from __future__ import annotations

import logging

from shared.models import Job


def log_job_finished(log: logging.Logger, job: Job) -> None:
    """Log ``event="job_finished"`` with the job's state and its duration.

    Call it only where the job's atomic update reported that this very change
    made it terminal, so that it is logged exactly once per job
    (``jobs_processed`` and ``job_duration_seconds`` in monitoring.tf count it).
    """
    finished = job.finished_at or job.updated_at
    duration_ms = max(int((finished - job.created_at).total_seconds() * 1000), 0)
    log.info(
        "job finished",
        extra={
            "job_id": job.job_id,
            "batch_id": job.batch_id,
            "scene_id": job.scene_id,
            "event": "job_finished",
            "state": job.state.value,
            "duration_ms": duration_ms,
            "error": job.error,
        },
    )
