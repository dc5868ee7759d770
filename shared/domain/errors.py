"""Exception hierarchy: raising a ``TransientError`` means "retry the delivery"."""

from __future__ import annotations


class PipelineError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(PipelineError):
    """A setting is missing or invalid; raised at start, naming the setting."""


class TransientError(PipelineError):
    """A failure worth retrying (network, quota, 5xx): the event is redelivered."""


class NotReady(TransientError):
    """Something the job needs is still being made (an anchored image): a reason
    to wait, never a failure."""


class RowMoved(TransientError):
    """A row write landed in another scene's row: the rows moved (a sort, an insert,
    a delete) between finding the row and writing it. Written again where the scene
    is now; the row that got the cells is given back to its own job."""

    def __init__(self, scene_id: str, *landed_in: str) -> None:
        # The arguments are the exception's args: a copy (one per waiter of a
        # coalesced write) is made from them.
        super().__init__(scene_id, *landed_in)
        self.scene_id = scene_id
        self.landed_in = landed_in  # the scenes whose rows got cells not theirs

    def __str__(self) -> str:
        rows = ", ".join(repr(scene) for scene in self.landed_in) or "a blank row, since cleared"
        return (
            f"the row of scene_id {self.scene_id!r} moved while it was written; "
            f"cells landed in the row of {rows}"
        )


class PermanentError(PipelineError):
    """A failure that retrying cannot fix: recorded on the job, event acknowledged."""


class MissingWorksheet(PermanentError):
    """The spreadsheet has no worksheet (tab) of that name."""


class NotFound(PipelineError):
    """A document or object that should exist does not."""


class QuotaExceeded(TransientError):
    """The model refused a call for quota: a reason to wait, never a failure.

    ``retry_after_s`` is the delay the answer named (``RetryInfo``), if any;
    ``per_day`` says the daily quota is used up (it resets at midnight Pacific);
    ``spend_cap`` that the project's spending cap refused it.
    """

    def __init__(
        self,
        message: str,
        retry_after_s: float | None,
        per_day: bool,
        spend_cap: bool = False,
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.per_day = per_day
        # Not a rate: the project's spending cap (no QuotaFailure, the words say so).
        self.spend_cap = spend_cap


class ModelGone(PermanentError):
    """The backend no longer serves the model (404 for it): Google shut it down."""


class NotAnImage(ValueError):
    """Bytes that are not an accepted, decodable image within the limits."""
