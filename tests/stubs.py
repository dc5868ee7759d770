"""The Gemini stub served in-process on a free loopback port, for unit tests."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from devstack.gemini_stub import GeminiStubServer, StubConfig, make_server


@contextlib.contextmanager
def serving(config: StubConfig) -> Iterator[GeminiStubServer]:
    server = make_server("127.0.0.1", 0, config)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
