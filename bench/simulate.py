"""The simulation (``tests/simulation.py``) over many seeds.

    .venv/bin/python -m bench.simulate [--seeds 20000] [--start 0] [--workers 2]

Each seed is one schedule of the whole pipeline on the in-memory fakes (a few
batches with cancels, re-rolls, anchors and exports under crashes, slow calls,
stalls past the lease, interleavings, duplicate and late deliveries), then a
fault-free drain and the invariants. Reports how many schedules ran, the fault
points they went through, the distinct crash points they hit (port call, before
or after), the faults of each kind, and every violation with its seed (replay one
with ``tests.simulation.run(SeededChooser(seed), seed=seed)``). Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

CHUNK = 250


@dataclass
class Tally:
    seeds: int = 0
    points: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    crash_points: set[str] = field(default_factory=set)
    violations: list[tuple[int, str]] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        self.seeds += other.seeds
        self.points += other.points
        self.faults.update(other.faults)
        self.crash_points |= other.crash_points
        self.violations += other.violations


def run_seeds(first: int, count: int) -> Tally:
    from tests.simulation import SeededChooser, run

    tally = Tally()
    for seed in range(first, first + count):
        result = run(SeededChooser(seed), seed=seed)
        stats = result.world.stats
        tally.seeds += 1
        tally.points += stats.points
        tally.faults.update(
            {
                "crashes": stats.crashes,
                "ended at their timeout": stats.timeouts,
                "slow calls": stats.slow_calls,
                "stalls": stats.stalls,
                "holders stalled past their lease": stats.holders_stalled,
                "interleavings": stats.interleavings,
                "duplicate deliveries": stats.duplicates,
                "dead letters": stats.dead_letters,
                "deliveries": stats.deliveries,
            }
        )
        tally.crash_points |= stats.crash_points
        tally.violations += [(seed, v) for v in result.violations]
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20000)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    started = time.monotonic()
    total = Tally()
    chunks = [
        (first, min(CHUNK, args.start + args.seeds - first))
        for first in range(args.start, args.start + args.seeds, CHUNK)
    ]
    with ProcessPoolExecutor(args.workers) as pool:
        for tally in pool.map(run_seeds, *zip(*chunks, strict=True)):
            total.add(tally)
            print(
                f"  {total.seeds} seeds, {len(total.violations)} violations, "
                f"{time.monotonic() - started:.0f} s",
                flush=True,
            )
    elapsed = time.monotonic() - started
    bad_seeds = sorted({seed for seed, _ in total.violations})
    summary = {
        "seeds": total.seeds,
        "first_seed": args.start,
        "fault_points": total.points,
        "distinct_crash_points": len(total.crash_points),
        "faults": dict(total.faults),
        "violations": len(total.violations),
        "seeds_with_violations": bad_seeds[:50],
        "wall_s": round(elapsed, 1),
        "runs_per_s": round(total.seeds / elapsed, 1),
    }
    print(json.dumps(summary, indent=2))
    print("crash points hit:")
    for point in sorted(total.crash_points):
        print(f"  {point}")
    for seed, violation in total.violations[:50]:
        print(f"  seed {seed}: {violation}")


if __name__ == "__main__":
    main()
