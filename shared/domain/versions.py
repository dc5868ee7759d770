"""Later versions of a variant: a re-roll (new seed), an edit (an instruction on
the current image) or a promotion (a chosen image re-made larger, itself the
reference), each a new image made and paid for once."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from shared.domain.job import TERMINAL_VARIANT_STATES, Job, VariantState, Version

R = TypeVar("R")
Step = tuple[Job | None, R]

# Versions one variant may have (they live in the job's document).
MAX_VERSIONS = 50
# What a promotion asks of the model, with the image itself as the reference.
PROMOTE_INSTRUCTION = (
    "Re-create this exact image at a higher resolution. Keep everything unchanged: "
    "composition, subjects, faces, colours, lighting, text and style. Add detail only."
)


@dataclass(frozen=True)
class VersionRequest:
    """A re-roll (no instruction) or an edit of one variant, as asked for."""

    instruction: str | None
    seed: int
    caller: str
    budget_day: str
    price_per_image: str
    # The request that asks for it (its idempotency record): one version per request,
    # whichever run of the request (a retry, the sweeper) adds it.
    request_key: str | None = None
    # A promotion: the version to re-make larger, the size, and the model (a draft's
    # final model; None: the job's).
    promotes: int | None = None
    image_size: str | None = None
    target_model: str | None = None


@dataclass(frozen=True)
class VersionAdded:
    version: int | None  # the new version's number, or None with the reason
    refusal: str | None = None


def add_version(job: Job, n: int, request: VersionRequest, now: datetime) -> Step[VersionAdded]:
    """Add the next version of variant ``n``: a new image, the earlier ones kept. A
    request that added its version already gets that one (nothing is added twice)."""
    variant = job.variant(n)
    asked = [
        v for v in variant.versions if request.request_key and v.request_key == request.request_key
    ]
    if asked:
        return None, VersionAdded(asked[0].version)
    if variant.state not in TERMINAL_VARIANT_STATES:
        return None, VersionAdded(None, f"variant {n} is still being made; try when it is done")
    if len(variant.versions) + 1 >= MAX_VERSIONS:
        return None, VersionAdded(None, f"variant {n} has {MAX_VERSIONS} versions already")
    source_version, source = variant.current()
    if request.promotes is not None:
        try:
            source_version, source = request.promotes, variant.slot(request.promotes)
        except KeyError:
            return None, VersionAdded(None, f"variant {n} has no version {request.promotes}")
    if request.instruction and (source.state != VariantState.DONE or not source.object_name):
        what = "promote" if request.promotes is not None else "edit"
        return None, VersionAdded(None, f"variant {n} has no image to {what}")
    number = max((v.version for v in variant.versions), default=1) + 1
    variant.versions.append(
        Version(
            version=number,
            instruction=request.instruction,
            seed=request.seed,
            source_object=source.object_name if request.instruction else None,
            source_version=source_version if request.instruction else None,
            requested_at=now,
            caller=request.caller,
            budget_day=request.budget_day,
            price_per_image=request.price_per_image,
            request_key=request.request_key,
            promotes=request.promotes,
            image_size=request.image_size,
            target_model=request.target_model,
        )
    )
    job.updated_at = now
    return job, VersionAdded(number)
