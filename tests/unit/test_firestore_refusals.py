"""Firestore's refusals of a write, classed on purpose: a document too large (or
with too many index entries) is permanent, a busy service transient, and a lost
compare-and-set race is left to the caller to read again."""

from __future__ import annotations

import pytest
from google.api_core import exceptions as gexc

from shared.adapters.firestore_store import _commit
from shared.domain.errors import PermanentError, TransientError


class Refusing:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def commit(self) -> None:
        raise self.error


@pytest.mark.parametrize(
    ("error", "raised"),
    [
        (gexc.InvalidArgument("Document exceeds maximum size"), PermanentError),
        (gexc.InvalidArgument("too many index entries for entity"), PermanentError),
        (gexc.ServiceUnavailable("try again"), TransientError),
        (gexc.DeadlineExceeded("slow"), TransientError),
        (gexc.Aborted("contention"), TransientError),
        (gexc.ResourceExhausted("quota"), TransientError),
    ],
)
def test_refusals_are_classed(error: Exception, raised: type[Exception]) -> None:
    with pytest.raises(raised) as info:
        _commit(Refusing(error), "usage/abc_2030-01-02")
    assert "usage/abc_2030-01-02" in str(info.value)


@pytest.mark.parametrize("error", [gexc.FailedPrecondition("stale"), gexc.Conflict("exists")])
def test_a_lost_race_is_raised_as_it_is(error: Exception) -> None:
    with pytest.raises(type(error)):
        _commit(Refusing(error), "quota/m")
