"""The daily budget in Firestore (the emulator): a caller's day document keeps its
totals only, so the 50,000th image of a day is settled like the first, and a
day recorded in the earlier layout (keys in the document) goes on correctly."""

from __future__ import annotations

import hashlib
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest

from shared.adapters.firestore_store import SETTLED, SHARDS, USAGE_SHARDS, FirestoreBudgetLedger
from tests.integration.conftest import LiveStack

pytestmark = pytest.mark.integration

DAY = "2001-02-03"
CAP, COST_CAP = 10**6, Decimal(10**6)


def day_ref(stack: LiveStack, caller: str) -> Any:
    digest = hashlib.sha256(caller.encode()).hexdigest()[:24]
    return stack.firestore.collection("usage").document(f"{digest}_{DAY}")


def test_the_50000th_image_of_a_day_is_settled_like_the_first(stack: LiveStack) -> None:
    ledger = FirestoreBudgetLedger(stack.firestore)
    caller = f"busy-{uuid.uuid4().hex[:8]}"
    assert ledger.reserve(caller, DAY, "batch:a", 50_000, Decimal("1680"), CAP, COST_CAP)[0]
    day = day_ref(stack, caller)
    reserved = day.get()
    ledger.settle(caller, DAY, "job_a/1", 0, Decimal("-0.0010"))
    # Two hundred images later, and then the day's 50,000th key: each record is a
    # document below the day's, and each correction goes to one of the day's shards,
    # so the day's document is neither written nor grown by a settlement.
    for n in range(2, 202):
        ledger.settle(caller, DAY, f"job_a/{n}", 0, Decimal("-0.0010"))
        ledger.settle(caller, DAY, f"job_a/{n}", 0, Decimal("-0.0010"))
    ledger.settle(caller, DAY, "job_a/50000", -1, Decimal("-0.0336"))
    after = day.get()
    assert after.update_time == reserved.update_time
    assert set(after.to_dict() or {}) == {"caller", "day", "images", "cost_usd", "expires_at"}
    shards = list(day.collection(SHARDS).stream())
    assert 8 <= len(shards) <= USAGE_SHARDS  # 202 keys spread over the shards
    assert max(int(s.to_dict()["images"]) for s in shards) == 0
    used = ledger.usage(caller, DAY)
    assert used.images == 49_999
    assert used.cost == Decimal("1680") - Decimal("0.2010") - Decimal("0.0336")
    # Once per key: settling any of them again changes nothing.
    ledger.settle(caller, DAY, "job_a/50000", -1, Decimal("-0.0336"))
    ledger.settle(caller, DAY, "job_a/7", 0, Decimal("-0.0010"))
    assert ledger.usage(caller, DAY) == used
    # A given-back image found made after all is corrected once more, to made.
    ledger.settle(caller, DAY, "job_a/50000", 0, Decimal("0.0020"))
    assert ledger.usage(caller, DAY).images == 50_000
    # The next reservation counts the settlements: the cap sees the whole day.
    ok, before = ledger.reserve(caller, DAY, "batch:b", 1, Decimal("1"), 50_001, COST_CAP)
    assert ok and before.images == 50_000
    assert not ledger.reserve(caller, DAY, "batch:c", 1, Decimal("1"), 50_001, COST_CAP)[0]
    assert ledger.usage(caller, DAY).images == 50_001


def test_concurrent_settlements_of_one_day_each_count_once(stack: LiveStack) -> None:
    ledger = FirestoreBudgetLedger(stack.firestore)
    caller = f"race-{uuid.uuid4().hex[:8]}"
    ledger.reserve(caller, DAY, "batch:b", 40, Decimal("1.3440"), CAP, COST_CAP)
    keys = [f"job_b/{n % 20}" for n in range(60)]  # every key three times, at once
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda k: ledger.settle(caller, DAY, k, -1, Decimal("-0.0336")), keys))
    used = ledger.usage(caller, DAY)
    assert (used.images, used.cost) == (20, Decimal("0.6720"))


def test_a_day_of_the_earlier_layout_keeps_its_keys(stack: LiveStack) -> None:
    ledger = FirestoreBudgetLedger(stack.firestore)
    caller = f"legacy-{uuid.uuid4().hex[:8]}"
    digest = hashlib.sha256(caller.encode()).hexdigest()[:24]
    ref = stack.firestore.collection("usage").document(f"{digest}_{DAY}")
    ref.set(
        {
            "caller": caller,
            "day": DAY,
            "images": 3,
            "cost_usd": "0.1008",
            "reservations": {"batch:old": {"images": 3, "cost_usd": "0.1008", "released": False}},
            "settled": {"job_old/1": {"images": -1, "cost_usd": "-0.0336"}},
        }
    )
    # Counted already in the document's own map: nothing changes twice.
    ledger.settle(caller, DAY, "job_old/1", -1, Decimal("-0.0336"))
    assert ledger.usage(caller, DAY).images == 3
    assert not ref.collection(SETTLED).get()
    # A reservation of the old layout is given back once.
    ledger.release(caller, DAY, "batch:old")
    ledger.release(caller, DAY, "batch:old")
    assert ledger.usage(caller, DAY).images == 0
