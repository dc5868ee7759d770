"""Style anchors: a reference that names an earlier output instead of a URL.

``scene:<scene_id>#<n>`` is the newest image of variant ``n`` of that scene in
the same spreadsheet; ``job:<job_id>#<n>`` the newest image of variant ``n`` of
that job. Only outputs of the same caller (or any, for an admin) may be named.
Their syntax lives here; who may name what, and resolving them to images, is
``shared/services/style_anchors.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

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
