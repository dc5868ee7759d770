"""Structured logging: installed once per instance, whatever calls it at once."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from shared.adapters import cloud_logging
from shared.adapters.cloud_logging import CloudJsonFormatter, setup_logging


@pytest.fixture
def bare_root() -> Iterator[logging.Logger]:
    """The root logger without our handler, restored afterwards."""
    root = logging.getLogger()
    kept = list(root.handlers)
    root.handlers = [h for h in kept if not isinstance(h.formatter, CloudJsonFormatter)]
    try:
        yield root
    finally:
        root.handlers = kept


def test_concurrent_first_requests_install_one_handler(
    bare_root: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    class SlowHandler(logging.StreamHandler):  # type: ignore[type-arg]
        """Makes the first-request window wide: every caller is inside it at once."""

        def __init__(self, *args: Any) -> None:
            time.sleep(0.2)
            super().__init__(*args)

    monkeypatch.setattr(cloud_logging.logging, "StreamHandler", SlowHandler)
    start = threading.Barrier(4)

    def first_request() -> None:
        start.wait(timeout=10)
        setup_logging()

    threads = [threading.Thread(target=first_request) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    ours = [h for h in bare_root.handlers if isinstance(h.formatter, CloudJsonFormatter)]
    assert len(ours) == 1  # two would write every log line (and every metric) twice
