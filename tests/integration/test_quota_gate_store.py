"""The fleet's pace in Firestore (the emulator): spread over several gate documents
when it is fast, so no document takes more than about one write a second, at the
same total pace."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from shared.adapters.firestore_store import FirestoreQuotaGate
from shared.domain import quota
from shared.domain.quota import Limit
from tests.integration.conftest import LiveStack

pytestmark = pytest.mark.integration

NOW = datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC)


def test_a_fast_pace_is_spread_over_documents_at_the_same_total_rate(stack: LiveStack) -> None:
    model = f"model-{uuid.uuid4().hex[:8]}"
    gate = FirestoreQuotaGate(stack.firestore, images_per_minute=120)
    assert quota.shards_for(120) == 3
    with ThreadPoolExecutor(6) as pool:
        slots = list(pool.map(lambda _: gate.reserve(model, NOW, 600), range(30)))
    times = sorted((slot.at - NOW).total_seconds() for slot in slots if slot.at is not None)
    assert len(times) == 30
    # 120 a minute: the k-th call no sooner than the pace allows, three documents
    # each at a slot every 1.5 s; the 30 slots take 15 s like one gate's.
    for k, at in enumerate(times):
        assert at >= (k // 3) * 1.5 - 1e-6
    assert times[-1] == pytest.approx(13.5)
    docs = [
        stack.firestore.collection("quota").document(d).get()
        for d in (model, f"{model}~1", f"{model}~2")
    ]
    last = [doc.to_dict()["next_slot"] for doc in docs]
    assert all(value is not None for value in last)
    # A refusal closes every document: nobody gets a slot until it reopens.
    gate.close(model, NOW + timedelta(minutes=5), Limit.MINUTE)
    refused = gate.reserve(model, NOW, 10)
    assert refused.at is None and refused.closed_for == Limit.MINUTE
    assert gate.peek(model, NOW).reopens is not None


def test_a_slow_pace_keeps_one_document(stack: LiveStack) -> None:
    model = f"model-{uuid.uuid4().hex[:8]}"
    gate = FirestoreQuotaGate(stack.firestore, images_per_minute=20)
    first, second = gate.reserve(model, NOW, 60), gate.reserve(model, NOW, 60)
    assert first.at == NOW and second.at == NOW + timedelta(seconds=3)
    assert not stack.firestore.collection("quota").document(f"{model}~1").get().exists
