"""Each entry point loads at cold start only the heavy libraries its function uses.

Run in a fresh interpreter, as the runtime does: load ``main``, resolve one entry
point, then look at what got imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("PIL", "google.genai", "gspread")

# What each function may load when its entry point is resolved.
ALLOWED = {
    "http_api": set(),
    "handle_dead_letters": set(),
    "make_thumbnails": {"PIL"},
}

PROBE = """
import json, sys
import main
getattr(main, sys.argv[1])
print(json.dumps([m for m in sys.argv[2:] if m in sys.modules]))
"""


@pytest.mark.parametrize("entry_point", sorted(ALLOWED))
def test_an_entry_point_loads_no_heavy_library_it_does_not_use(entry_point: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, entry_point, *HEAVY],
        cwd=ROOT,
        env={"GOOGLE_CLOUD_PROJECT": "cold-start-test", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded = set(json.loads(done.stdout))
    assert loaded <= ALLOWED[entry_point], f"{entry_point} imports {sorted(loaded)} at cold start"
