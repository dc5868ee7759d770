"""Cloud Functions entry points (``--entry-point``); each lives in ``functions/``.

Every function is deployed from this one source, but an instance imports only
the module of its own entry point (PEP 562 module ``__getattr__``), so the HTTP
function never pays at cold start for what the others need.
"""

from __future__ import annotations

import importlib
from typing import Any

ENTRY_POINTS = {
    "http_api": "functions.http_api",
    "generate_images": "functions.generate",
    "make_thumbnails": "functions.thumbnail",
    "handle_dead_letters": "functions.dead_letters",
    "run_economy": "functions.economy",
    "export_batch": "functions.export",
    "write_sheet_rows": "functions.sheet_rows",
}

__all__ = sorted(ENTRY_POINTS)


def __getattr__(name: str) -> Any:
    module = ENTRY_POINTS.get(name)
    if module is None:
        raise AttributeError(f"module 'main' has no entry point {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
