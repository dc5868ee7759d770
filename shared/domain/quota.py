"""The fleet's shared view of the Gemini quota: a pace and a gate, as pure functions.

Every generate instance asks the gate for a call slot before calling Gemini.
The gate paces calls at a configured number of images per minute (a generic
cell rate algorithm: one slot every ``60 / images_per_minute`` seconds, in
order of asking) and is closed for everyone when Gemini refuses a call for
quota (until the time its ``RetryInfo`` names, or until the daily quota resets).
The adapter keeps one such state per model in the store (``QuotaGate`` port)
and applies these functions under compare-and-set.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

# Gemini's daily quotas reset at midnight Pacific time.
QUOTA_DAY_ZONE = ZoneInfo("America/Los_Angeles")


class Limit(StrEnum):
    """Which quota refused a call."""

    MINUTE = "minute"  # requests, images or tokens per minute: passes in seconds
    DAY = "day"  # per day: passes at midnight Pacific
    SPEND = "spend"  # the project's spending cap: a rolling window, or a person raises it


@dataclass(frozen=True)
class GateState:
    """One model's gate: the next free slot of the pace, and a closing, if any."""

    next_slot: datetime | None = None
    closed_until: datetime | None = None
    closed_for: Limit | None = None


@dataclass(frozen=True)
class Slot:
    """When to call, or, when no slot is free within the wait allowed, why not."""

    at: datetime | None  # the call may start then (None: not within the wait)
    reopens: datetime | None = None  # the earliest time a slot could be had
    closed_for: Limit | None = None  # the gate is closed by a refusal of this quota


def reserve(
    state: GateState, now: datetime, interval: timedelta, max_wait: timedelta
) -> tuple[GateState | None, Slot]:
    """A call slot within ``max_wait`` (taken from the pace), or when to ask again.

    ``interval`` zero means no pace: only a closed gate makes a caller wait.
    """
    closed = state.closed_until is not None and state.closed_until > now
    earliest = state.closed_until if closed and state.closed_until else now
    if interval > timedelta(0) and state.next_slot is not None:
        earliest = max(earliest, state.next_slot)
    reason = state.closed_for if closed else None
    if earliest - now > max_wait:
        return None, Slot(at=None, reopens=earliest, closed_for=reason)
    if interval <= timedelta(0):
        return None, Slot(at=earliest, closed_for=reason)
    return replace(state, next_slot=earliest + interval), Slot(at=earliest, closed_for=reason)


def peek(state: GateState, now: datetime, interval: timedelta) -> Slot:
    """When the next call slot is, without taking it (``reopens``; ``at`` is None)."""
    closed = state.closed_until is not None and state.closed_until > now
    earliest = state.closed_until if closed and state.closed_until else now
    if interval > timedelta(0) and state.next_slot is not None:
        earliest = max(earliest, state.next_slot)
    return Slot(at=None, reopens=earliest, closed_for=state.closed_for if closed else None)


def close(state: GateState, until: datetime, limit: Limit) -> tuple[GateState | None, None]:
    """Close the gate until ``until`` after a refusal; a later closing wins."""
    if state.closed_until is not None and state.closed_until >= until:
        return None, None
    return replace(state, closed_until=until, closed_for=limit), None


# Writes a minute one gate document takes at most: Firestore sustains about one
# write a second on a document, and compare-and-set retries need headroom.
GATE_WRITES_PER_MINUTE = 40


def shards_for(images_per_minute: float) -> int:
    """How many documents the pace is spread over, so that none takes more than
    ``GATE_WRITES_PER_MINUTE`` (one write per call slot); each paces at its share."""
    return max(1, -(-int(images_per_minute) // GATE_WRITES_PER_MINUTE))


def next_quota_day(now: datetime) -> datetime:
    """When a daily quota refused now resets: the next midnight, Pacific time."""
    local = now.astimezone(QUOTA_DAY_ZONE)
    midnight = (local + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight.astimezone(now.tzinfo)
