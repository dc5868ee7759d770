"""The whole pipeline under schedules nobody wrote down (``tests/simulation.py``).

``make test`` runs ``SEEDS`` seeded schedules and ``EXAMPLES`` more that Hypothesis
draws (the same ones every run: derandomized), each a few batches with cancels,
re-rolls, anchors and exports under crashes, slow calls, stalls past the lease,
interleavings, duplicate and late deliveries, then checks every promise about
money and state. A failing schedule is reported with its violations, its steps and
the end of its trace; Hypothesis first shrinks it to the fewest faults that still
break a promise. ``python -m bench.simulate --seeds 20000`` runs many more.

The last tests plant a fix's reversal and show that these seeds catch it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import tests.fakes
from shared.domain import lifecycle
from shared.services.sweeper import Sweeper
from tests.simulation import Run, SeededChooser, run

SEEDS = 200
EXAMPLES = 100
CHUNKS = 4
# Draws Hypothesis makes per schedule; later choices are the plain ones (no fault).
MAX_DRAWS = 4000
TRACE_LINES = 80


def report(result: Run, label: str) -> str:
    """The violations, the schedule, and what happened to what they name."""
    lines = [f"{label}: {len(result.violations)} violation(s)"]
    lines += [f"  ! {v}" for v in result.violations]
    lines += ["schedule:"] + [f"  {s}" for s in result.schedule]
    named = {
        found
        for violation in result.violations
        for found in re.findall(r"(?:job|bat|exp)_[0-9a-f_]+|\b[ab][0-9]*-[0-9]+\b", violation)
    }
    store = result.world.store
    named |= {j for j in store.job_ids if store.job(j).scene_id in named}
    trace = [t for t in result.world.trace if any(name in t for name in named)]
    lines += [f"trace of {', '.join(sorted(named))} (last {TRACE_LINES} lines):"]
    lines += [f"  {t}" for t in trace[-TRACE_LINES:]]
    return "\n".join(lines)


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_seeded_schedules_keep_every_promise(chunk: int) -> None:
    size = SEEDS // CHUNKS
    for seed in range(chunk * size, (chunk + 1) * size):
        result = run(SeededChooser(seed), seed=seed)
        assert not result.violations, report(result, f"seed {seed}")


class DrawnChooser:
    """Choices drawn by Hypothesis (which shrinks them towards 0, the plain choice)."""

    def __init__(self, data: st.DataObject) -> None:
        self._data = data
        self._left = MAX_DRAWS

    def below(self, n: int) -> int:
        if n <= 1 or self._left <= 0:
            return 0
        self._left -= 1
        return self._data.draw(st.integers(0, n - 1))


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
@given(st.data())
def test_drawn_schedules_keep_every_promise(data: st.DataObject) -> None:
    result = run(DrawnChooser(data))
    if result.violations:
        note(report(result, "drawn schedule"))
    assert not result.violations


# --------------------------------------------------------------------------- it finds bugs


def _no_renewal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Holders no longer renew their lease while they work."""
    monkeypatch.setattr(lifecycle, "renew", lambda job, *args, **kwargs: (None, False))


def _unfenced(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request's writes are no longer fenced by its record (Firestore's precondition
    is what the fake checks)."""
    monkeypatch.setattr(tests.fakes, "_check_fence", lambda requests, fence: None)


def _no_follow_ups(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweeper no longer runs the follow-ups a dead delivery left undone."""
    monkeypatch.setattr(Sweeper, "_unfollowed_jobs", lambda self, report: None)


PLANTS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "leases not renewed": _no_renewal,
    "request writes not fenced": _unfenced,
    "follow-ups not swept": _no_follow_ups,
}


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_the_seeds_catch_a_reverted_fix(plant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    PLANTS[plant](monkeypatch)
    for seed in range(SEEDS + EXAMPLES):
        if run(SeededChooser(seed), seed=seed).violations:
            return
    pytest.fail(f"{plant}: no violation in {SEEDS + EXAMPLES} seeds")
