"""Shared fixtures: isolated environment and caches, fakes and services built on them."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from functions import wiring
from shared.adapters.image_check import image_mime
from shared.config.environment import get_settings
from shared.config.settings import Settings
from shared.contracts.links import LinkSigner
from shared.services.generation import Generation
from shared.services.ledger import JobLedger
from shared.services.rerolls import Rerolls
from shared.services.sheet_sync import SheetSync
from tests.fakes import (
    LINK_SIGNING_KEY,
    PUBLIC_BASE_URL,
    FakeBudgetLedger,
    FakeClock,
    FakeIdempotencyStore,
    FakeImageGenerator,
    FakeJobStore,
    FakeModelDirectory,
    FakeObjectStore,
    FakePublisher,
    FakeQuotaGate,
    FakeReferenceLoader,
    FakeSheetWriter,
    make_settings,
)

# The cached factories as defined, captured before any test can monkeypatch them.
_WIRING_CACHES = [
    value for value in vars(wiring).values() if callable(getattr(value, "cache_clear", None))
]
# Every variable the settings read, plus those functions-framework sets itself.
_ISOLATED_VARS = [name.upper() for name in Settings.model_fields] + [
    "FUNCTION_TARGET",
    "FUNCTION_SIGNATURE_TYPE",
    "FUNCTION_SOURCE",
    "ENTRY_POINT",
    "LOG_EXECUTION_ID",
]


def _clear_caches() -> None:
    get_settings.cache_clear()
    for cached in _WIRING_CACHES:
        cached.cache_clear()


@pytest.fixture(autouse=True)
def isolated_environment(request: pytest.FixtureRequest) -> Iterator[None]:
    """No setting leaks in from the shell or out of a test; caches start empty.

    Integration tests run against the live local stack and keep its environment.
    """
    if request.node.get_closest_marker("integration") is not None:
        yield
        return
    saved_env = dict(os.environ)
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    for name in _ISOLATED_VARS:
        os.environ.pop(name, None)
    _clear_caches()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        _clear_caches()


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(idempotency: FakeIdempotencyStore) -> FakeJobStore:
    return FakeJobStore(requests=idempotency)


@pytest.fixture
def budget(idempotency: FakeIdempotencyStore) -> FakeBudgetLedger:
    return FakeBudgetLedger(requests=idempotency)


@pytest.fixture
def idempotency() -> FakeIdempotencyStore:
    return FakeIdempotencyStore()


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


@pytest.fixture
def objects() -> FakeObjectStore:
    return FakeObjectStore()


@pytest.fixture
def generator() -> FakeImageGenerator:
    return FakeImageGenerator()


@pytest.fixture
def references() -> FakeReferenceLoader:
    return FakeReferenceLoader()


@pytest.fixture
def model_directory() -> FakeModelDirectory:
    return FakeModelDirectory()


@pytest.fixture
def quota_gate() -> FakeQuotaGate:
    return FakeQuotaGate()


@pytest.fixture
def sheet_writer() -> FakeSheetWriter:
    return FakeSheetWriter()


@pytest.fixture
def links() -> LinkSigner:
    return LinkSigner(LINK_SIGNING_KEY, PUBLIC_BASE_URL)


@pytest.fixture
def sheet_sync(store: FakeJobStore, sheet_writer: FakeSheetWriter, links: LinkSigner) -> SheetSync:
    return SheetSync(store, sheet_writer, links)


@pytest.fixture
def ledger(store: FakeJobStore, sheet_sync: SheetSync, budget: FakeBudgetLedger) -> JobLedger:
    return JobLedger(store, sheet_sync, budget)


@pytest.fixture
def fake_monotonic(clock: FakeClock) -> FakeClock:
    """The clock whose ``monotonic`` and ``sleep`` the generation service is given."""
    return clock


@pytest.fixture
def make_generation(
    ledger: JobLedger,
    objects: FakeObjectStore,
    generator: FakeImageGenerator,
    references: FakeReferenceLoader,
    quota_gate: FakeQuotaGate,
    fake_monotonic: FakeClock,
) -> Callable[..., Generation]:
    """Builds the generation service on the fakes; keyword arguments override settings."""

    def build(**setting_overrides: Any) -> Generation:
        return Generation(
            settings=make_settings(**setting_overrides),
            ledger=ledger,
            objects=objects,
            generator=generator,
            references=references,
            quota=quota_gate,
            probe=image_mime,
            clock=fake_monotonic,
            sleep=fake_monotonic.sleep,
            monotonic=fake_monotonic.monotonic,
        )

    return build


@pytest.fixture
def rerolls(
    store: FakeJobStore,
    budget: FakeBudgetLedger,
    publisher: FakePublisher,
    idempotency: FakeIdempotencyStore,
    clock: FakeClock,
) -> Rerolls:
    """Re-rolls on the fakes: five images a day, every seed 777."""
    return Rerolls(
        make_settings(daily_image_cap=5),
        store,
        JobLedger(store, budget=budget),
        publisher,
        budget,
        idempotency,
        clock,
        seeds=lambda: 777,
    )
