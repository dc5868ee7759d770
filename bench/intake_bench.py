"""Intake benchmarks (issue 3): accepting a 500-item live batch, and cold import time.

    .venv/bin/python -m bench.intake_bench [--runs 5]

Reports figures; it asserts nothing (these machines are noisy).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

from devstack.stack import REPO, Stack, StackConfig, sheets_client

ITEMS = 500

# `import pydantic` alone is lazy (it loads its machinery on first model), so
# the bare function declares one small model, as any function using it does.
BARE_FUNCTION = """
import time
start = time.perf_counter()
import functions_framework
import pydantic

class Body(pydantic.BaseModel):
    name: str

@functions_framework.http
def bare(request):
    return Body(name="ok").name
print(time.perf_counter() - start)
"""

BARE_IMPORT_ONLY = BARE_FUNCTION.replace(
    "class Body(pydantic.BaseModel):\n    name: str\n", ""
).replace('Body(name="ok").name', '"ok"')

# What the runtime does: load main.py, then look up the entry point.
OUR_ENTRY_POINT = """
import time
start = time.perf_counter()
import main
main.http_api
print(time.perf_counter() - start)
"""


def cold_import(code: str) -> float:
    result = subprocess.run(
        [sys.executable, "-X", "frozen_modules=on", "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(result.stdout.strip().splitlines()[-1])


def import_times(runs: int) -> tuple[float, float, float]:
    """Median cold import of our entry point, the bare function, and bare import-only."""
    ours, bare, lazy = [], [], []
    for _ in range(runs):  # interleaved, so drift hits all three the same way
        bare.append(cold_import(BARE_FUNCTION))
        lazy.append(cold_import(BARE_IMPORT_ONLY))
        ours.append(cold_import(OUR_ENTRY_POINT))
    return statistics.median(ours), statistics.median(bare), statistics.median(lazy)


def accept_times(runs: int) -> list[float]:
    with tempfile.TemporaryDirectory() as state:
        stack = Stack(
            StackConfig(
                state_dir=Path(state),
                gemini_latency_ms=2000,
                function_env={
                    "DAILY_IMAGE_CAP": str(ITEMS * (runs + 2)),
                    "DAILY_COST_CAP_USD": "100000",
                },
            )
        )
        env = stack.start()
        try:
            url = f"{env['API_URL']}/batch/images"
            headers = {"X-API-Key": env["API_KEY"]}
            times = []
            worksheet = (
                sheets_client(env["SHEETS_API_URL"])
                .open_by_key(env["SPREADSHEET_ID"])
                .worksheet(env["WORKSHEET"])
            )
            for run in range(runs + 1):
                tag = uuid.uuid4().hex[:6]
                scenes = [f"b{tag}-{i}" for i in range(ITEMS)]
                # The rows come first, as the team makes them: intake checks them.
                worksheet.append_rows(
                    [[scene] for scene in scenes], value_input_option="RAW", table_range="A1"
                )
                body = {
                    "items": [
                        {"scene_id": scene, "prompt": f"bench {tag} {i}", "variants": 1}
                        for i, scene in enumerate(scenes)
                    ],
                    "runMode": "live",
                    "spreadsheet_id": env["SPREADSHEET_ID"],
                    "worksheet": env["WORKSHEET"],
                }
                start = time.perf_counter()
                answer = requests.post(url, json=body, headers=headers, timeout=120)
                elapsed = time.perf_counter() - start
                assert answer.status_code == 202, answer.text[:500]
                assert len(answer.json()["jobs"]) == ITEMS
                if run:  # the first call warms the instance (clients, connections)
                    times.append(elapsed)
            return times
        finally:
            stack.stop()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    ours, bare, lazy = import_times(max(args.runs, 5) * 2)
    print(
        f"cold import of main.http_api: {ours * 1000:.0f} ms; bare functions-framework "
        f"function with a pydantic model {bare * 1000:.0f} ms -> ratio {ours / bare:.2f}x "
        f"(target <= 1.5x); bare with a bare `import pydantic` {lazy * 1000:.0f} ms -> "
        f"{ours / lazy:.2f}x"
    )
    times = accept_times(args.runs)
    print(
        f"accept a {ITEMS}-item live batch (warm instance, local stack): "
        f"median {statistics.median(times):.2f} s, min {min(times):.2f} s, "
        f"max {max(times):.2f} s over {len(times)} runs (target <= 2 s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
