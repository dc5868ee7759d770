"""Style anchors: a reference that names an earlier output instead of a URL.

``scene:<scene_id>#<n>`` is the newest image of variant ``n`` of that scene in
the same spreadsheet; ``job:<job_id>#<n>`` the newest image of variant ``n`` of
that job. Only outputs of the same caller (or any, for an admin) may be named.
Parsing and who may name what live here (intake checks them without loading
any image code); resolving them to images is ``shared/services/anchors.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from shared.models import Job
    from shared.ports import JobStore

ANCHOR_FORMS = "scene:<scene_id>#<variant> or job:<job_id>#<variant>"
_ANCHOR = re.compile(
    r"(?P<kind>scene|job):(?P<ident>[A-Za-z0-9][A-Za-z0-9_.-]{0,63})#(?P<n>[1-9][0-9]?)"
)

AnchorKind = Literal["scene", "job"]


@dataclass(frozen=True)
class Anchor:
    kind: AnchorKind
    ident: str  # a scene id or a job id
    variant: int

    def __str__(self) -> str:
        return f"{self.kind}:{self.ident}#{self.variant}"


def is_anchor(text: str) -> bool:
    """Whether ``text`` is meant as an anchor (well formed or not)."""
    return text.startswith(("scene:", "job:"))


def parse_anchor(text: str) -> Anchor | None:
    match = _ANCHOR.fullmatch(text.strip())
    if match is None:
        return None
    kind: AnchorKind = "scene" if match["kind"] == "scene" else "job"
    return Anchor(kind, match["ident"], int(match["n"]))


def outputs(
    store: JobStore,
    anchor: Anchor,
    spreadsheet_id: str,
    caller: str,
    admin: bool,
    exclude: str = "",
) -> list[Job]:
    """The jobs the anchor may name for this caller: same caller (or an admin),
    for ``scene:`` in the same spreadsheet, with that variant."""
    if anchor.kind == "job":
        found = store.get_job(anchor.ident)
        jobs = [found] if found is not None else []
    else:
        jobs = store.scene_jobs(spreadsheet_id, anchor.ident)
    return [
        job
        for job in jobs
        if (admin or job.caller == caller)
        and job.job_id != exclude
        and anchor.variant <= job.variant_count
    ]


def problem(
    store: JobStore, reference: str, spreadsheet_id: str, caller: str, admin: bool
) -> str | None:
    """Why an anchor cannot name anything for this caller (None: it can, or it is no
    anchor). Missing and not visible read the same, so nothing leaks."""
    anchor = parse_anchor(reference)
    if anchor is None or outputs(store, anchor, spreadsheet_id, caller, admin):
        return None
    if anchor.kind == "scene":
        return (
            f"names no output visible to you: no job of scene {anchor.ident} with "
            f"variant {anchor.variant} in this spreadsheet"
        )
    return f"names no output visible to you: no job {anchor.ident} with variant {anchor.variant}"
