"""The sheet's Apps Script client, run unchanged under Node against the local stack.

``node --test apps_script/tests/`` loads ``apps_script/*.gs`` into a ``vm`` context with
stand-ins for the Apps Script services; the spreadsheet stand-in reads and writes the
local Sheets stub, so the rows the script marks are the rows the pipeline fills.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import LiveStack

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NODE_TESTS = REPO / "apps_script" / "tests"
TIMEOUT_S = 600


def test_apps_script_client_against_the_local_stack(stack: LiveStack) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node (20 or later) is required for the Apps Script client tests")
    env = {**os.environ, **stack.env}
    env.pop("NODE_OPTIONS", None)
    result = subprocess.run(
        [node, "--test", "--test-reporter=spec", str(NODE_TESTS.relative_to(REPO)) + "/"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    output = f"--- node stdout ---\n{result.stdout}\n--- node stderr ---\n{result.stderr}"
    print(output)
    assert result.returncode == 0, f"node --test exited with {result.returncode}\n{output}"
