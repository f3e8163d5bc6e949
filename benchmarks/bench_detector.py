"""Detector speed: ``Detector.check`` vs a plain numpy argmin, and ``check_many`` throughput.

Measures in one run (medians over ``--reps`` interleaved repetitions):

- baseline: ``np.argmin((P + p0) * (B + b0))`` on one 16-instance snapshot (int64 arrays);
- ``Detector.check`` on the same snapshot: fixed lam (unflagged decision), a lam with a
  large binary denominator (0.1), a band, and a flagged decision (findings built);
- the ratio check / argmin (goal <= 2x and <= 10 us);
- ``Snapshot.from_arrays(..., validate=False)`` and validated ``Snapshot(...)`` costs;
- ``Detector.check_many`` on (D, 16) int64 arrays: instance-rows per second (goal >= 20M).

Run from the project root::

    python benchmarks/bench_detector.py [--reps R] [--rows D]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import timeit

import numpy as np

from lmetric_theory import Detector, LinearReference, Snapshot

N = 16


def per_call_us(fn, number: int) -> float:
    return timeit.timeit(fn, number=number) / number * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--number", type=int, default=20_000, help="calls per timing")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    P = rng.integers(0, 8000, N)
    B = rng.integers(0, 64, N)
    p0, b0 = 0, 1
    snap = Snapshot(P, B)
    flagged_snap = Snapshot(np.array([100, 40] + [5000] * (N - 2)), np.array([0, 1] + [60] * (N - 2)))

    cases = {
        "check  lam=37.5": (Detector(LinearReference.fixed(37.5), p0, b0), snap),
        "check  lam=0.1 (large denominator)": (Detector(0.1, p0, b0), snap),
        "check  band [20, 60]": (Detector(LinearReference.band(20, 60), p0, b0), snap),
        "check  flagged (disagreement)": (Detector(100, p0, b0), flagged_snap),
    }
    for name, (det, s) in cases.items():
        v = det.check(s)
        cases[name] = (det, s)
        print(f"# {name}: flagged={v.flagged} kinds={list(v.kinds)}")

    def baseline() -> int:
        return int(np.argmin((P + p0) * (B + b0)))

    assert baseline() == cases["check  lam=37.5"][0].check(snap).product_choice
    Pl, Bl = P.copy(), B.copy()
    times: dict[str, list[float]] = {"numpy argmin (baseline)": []}
    times.update({k: [] for k in cases})
    times["Snapshot.from_arrays(validate=False)"] = []
    times["Snapshot(...) validated"] = []
    for _ in range(args.reps):  # interleaved so machine load hits all alike
        times["numpy argmin (baseline)"].append(per_call_us(baseline, args.number))
        for name, (det, s) in cases.items():
            times[name].append(per_call_us(lambda det=det, s=s: det.check(s), args.number))
        times["Snapshot.from_arrays(validate=False)"].append(
            per_call_us(lambda: Snapshot.from_arrays(Pl, Bl, validate=False), args.number)
        )
        times["Snapshot(...) validated"].append(
            per_call_us(lambda: Snapshot(Pl, Bl), args.number // 4)
        )
    base = statistics.median(times["numpy argmin (baseline)"])
    print(f"\none decision, N={N} instances, median of {args.reps} x {args.number} calls")
    print(f"{'':40s} {'us/call':>9s} {'x argmin':>9s}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:40s} {m:9.2f} {m / base:9.2f}")
    main_ratio = statistics.median(times["check  lam=37.5"]) / base
    main_us = statistics.median(times["check  lam=37.5"])
    print(
        f"goal check <= 2x argmin and <= 10 us: {main_ratio:.2f}x, {main_us:.2f} us -> "
        f"{'met' if main_ratio <= 2 and main_us <= 10 else 'MISSED'}"
    )

    D = args.rows
    Pm = rng.integers(0, 8000, (D, N))
    Bm = rng.integers(0, 64, (D, N))
    print(f"\ncheck_many on ({D}, {N}) int64 arrays, median of 5")
    for label, det, validate in (
        ("lam=37.5, validate=False", Detector(37.5), False),
        ("lam=37.5, validate=True", Detector(37.5), True),
        ("lam=0.1, validate=False", Detector(0.1), False),
        ("band [20, 60], validate=False", Detector(LinearReference.band(20, 60)), False),
    ):
        ts = []
        for _ in range(5):
            t = time.perf_counter()
            vs = det.check_many(Pm, Bm, validate=validate)
            ts.append(time.perf_counter() - t)
        m = statistics.median(ts)
        print(
            f"{label:32s} {m:7.3f} s  {D * N / m / 1e6:7.1f} M instance-rows/s  "
            f"({D / m / 1e6:.2f} M decisions/s; {int(vs.disagrees.sum())} disagreements)"
        )
    print("goal >= 20 M instance-rows/s")
    print(f"\ncommand: python benchmarks/bench_detector.py --reps {args.reps} --rows {D}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
