"""Intake: plan a batch (dry run), record and publish it (live), report status."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared import jobs as transitions
from shared.ids import new_id, utcnow
from shared.links import LinkSigner
from shared.models import Batch, BatchRequest, Job, JobMessage, VariantState, money
from shared.ports import JobPublisher, JobStore
from shared.settings import Settings


@dataclass(frozen=True)
class Intake:
    """The HTTP function's use cases, wired to their ports."""

    settings: Settings
    store: JobStore
    publisher: JobPublisher
    links: LinkSigner
    clock: Callable[[], datetime] = utcnow
    ids: Callable[[str], str] = new_id

    def plan(self, request: BatchRequest) -> dict[str, Any]:
        """What ``live`` would do, without writing or publishing anything."""
        price = self.settings.price_per_image()
        images = sum(item.variants for item in request.items)
        return {
            "runMode": request.run_mode,
            "model": self.settings.gemini_model,
            "price_per_image_usd": money(price),
            "job_count": len(request.items),
            "image_count": images,
            "estimated_cost_usd": money(price * images),
            "jobs": [
                {
                    "scene_id": item.scene_id,
                    "variants": item.variants,
                    "estimated_cost_usd": money(price * item.variants),
                }
                for item in request.items
            ],
        }

    def submit(self, request: BatchRequest, caller: str) -> dict[str, Any]:
        """Record the batch and its jobs, then publish one message per job."""
        answer = self.plan(request)
        now = self.clock()
        price = money(self.settings.price_per_image())
        batch_id = self.ids("bat")
        jobs = [
            Job(
                job_id=self.ids("job"),
                batch_id=batch_id,
                scene_id=item.scene_id,
                prompt=item.prompt,
                ref_pack_public_url=item.ref_pack_public_url,
                variant_count=item.variants,
                caller=caller,
                spreadsheet_id=request.spreadsheet_id,
                worksheet=request.worksheet,
                model=self.settings.gemini_model,
                price_per_image=price,
                created_at=now,
                updated_at=now,
            )
            for item in request.items
        ]
        batch = Batch(
            batch_id=batch_id,
            caller=caller,
            spreadsheet_id=request.spreadsheet_id,
            worksheet=request.worksheet,
            model=self.settings.gemini_model,
            job_ids=[job.job_id for job in jobs],
            image_count=answer["image_count"],
            estimated_cost_usd=answer["estimated_cost_usd"],
            created_at=now,
        )
        self.store.create_batch(batch, jobs)
        attributes = {"batch_id": batch_id, "user_id": caller, "run_mode": request.run_mode}
        failed = self.publisher.publish(
            [
                (JobMessage(job_id=j.job_id, batch_id=batch_id, scene_id=j.scene_id), attributes)
                for j in jobs
            ]
        )
        for job_id, error in failed.items():
            self._fail(job_id, f"could not be queued: {error}")
        answer["batch_id"] = batch_id
        answer["unpublished"] = sorted(failed)
        answer["jobs"] = [
            {
                "scene_id": job.scene_id,
                "job_id": job.job_id,
                "variants": job.variant_count,
                "state": "failed" if job.job_id in failed else "queued",
                **({"error": failed[job.job_id]} if job.job_id in failed else {}),
            }
            for job in jobs
        ]
        return answer

    def _fail(self, job_id: str, reason: str) -> None:
        self.store.update_job(job_id, lambda job: transitions.fail_job(job, reason, self.clock()))

    def job_status(self, job_id: str, caller: str) -> dict[str, Any] | None:
        """The job as its caller sees it; None if missing or someone else's."""
        job = self.store.get_job(job_id)
        if job is None or job.caller != caller:
            return None
        return job_view(job, self.links)


def job_view(job: Job, links: LinkSigner) -> dict[str, Any]:
    """Public JSON view of a job, with durable links to finished images."""

    def when(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    variants = []
    for key in sorted(job.variants, key=int):
        v = job.variants[key]
        entry: dict[str, Any] = {"variant": v.n, "state": v.state.value, "error": v.error}
        if v.state in (VariantState.UPLOADED, VariantState.DONE):
            entry["image_url"] = links.link(job.job_id, v.n, "full")
        if v.state == VariantState.DONE:
            entry["thumbnail_url"] = links.link(job.job_id, v.n, "thumb")
        variants.append(entry)
    return {
        "job_id": job.job_id,
        "batch_id": job.batch_id,
        "scene_id": job.scene_id,
        "state": job.state.value,
        "status_text": transitions.progress(job).status,
        "error": job.error,
        "model": job.model,
        "variants": variants,
        "created_at": when(job.created_at),
        "started_at": when(job.started_at),
        "finished_at": when(job.finished_at),
    }
