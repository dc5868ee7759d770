"""The dev stack's Cloud Scheduler: POST to the economy tick every few seconds.

Production calls the same entry point (``run_economy``) from a Cloud Scheduler
job with an OIDC token; here a loop on loopback does, with no credentials (the
functions-framework process is not behind Cloud Run's IAM).

Run: ``python -m devstack.scheduler --url http://127.0.0.1:PORT/ --every 5``
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

import requests

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.scheduler", description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--every", type=float, default=5.0, help="seconds between ticks")
    parser.add_argument("--timeout", type=float, default=600.0, help="one tick's deadline")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    print(f"scheduler calling {args.url} every {args.every:g} s", flush=True)
    while not stop.is_set():
        try:
            answer = requests.post(args.url, json={}, timeout=args.timeout)
            log.info("tick %s %s", answer.status_code, answer.text[:300])
        except requests.RequestException as exc:
            log.warning("tick failed: %s", exc)
        stop.wait(args.every)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
