"""Detector speed: ``Detector.check`` vs a plain numpy argmin, and ``check_many`` throughput.

Measures in one run (medians over ``--reps`` interleaved repetitions):

- baseline: ``np.argmin((P + p0) * (B + b0))`` on one 16-instance snapshot (int64 arrays);
- ``Detector.check`` on the same snapshot: fixed lam (unflagged decision), a lam with a
  large binary denominator (0.1), a band, and a flagged decision (findings built);
- the ratio check / argmin (goal <= 2x and <= 10 us);
- ``Snapshot.from_arrays(..., validate=False)`` and validated ``Snapshot(...)`` costs;
- ``Detector.check_many`` on (D, 16) int64 arrays: instance-rows per second (goal >= 20M);
- the hot-class monitor (``HotspotMonitor.observe``) on top of the bare product argmin, on a
  stream with no hot class and on one with a confirmed hot class (goal <= 2x the bare argmin);
- the router-state monitor (``RouterStateMonitor.observe``: ``herding`` alone, with the
  engines' counters for ``replica_skew``, with predicted and actual hits for ``stale_index``)
  beside the bare argmin and ``Detector.check``, after 1,000 and after 100,000 decisions of
  history (O(1) state: the cost must not grow with the history).

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
    bench_hotspot(P, B, p0, b0, args.reps, args.number)
    bench_router_state(P, B, p0, b0, args.reps, args.number)
    print(f"\ncommand: python benchmarks/bench_detector.py --reps {args.reps} --rows {D}")
    return 0


def bench_hotspot(P: np.ndarray, B: np.ndarray, p0: int, b0: int, reps: int, number: int) -> None:
    """Per-decision cost of the hot-class monitor beside the bare product argmin (N=16).

    Streams of 4,096 decisions, cycled: ``cold`` has a new class per decision cached nowhere
    (phase 1 never evaluated past the hit count); ``hot`` has a class with share 0.6 cached
    on instance 0 (alarmed, confirmed, mask applied), the rest unrelated.
    """
    from itertools import cycle

    from lmetric_theory.detector.hotspot import HotspotMonitor

    rng = np.random.default_rng(1)
    none = np.zeros(N, dtype=bool)
    one = none.copy()
    one[0] = True
    hot_stream = [(7, one) if u < 0.6 else (1000 + d, none)
                  for d, u in enumerate(rng.random(4096))]
    cold_stream = [(1000 + d, none) for d in range(4096)]
    big = np.iinfo(np.int64).max

    def bare() -> int:
        return int(np.argmin((P + p0) * (B + b0)))

    def with_monitor(mon: HotspotMonitor, it) -> object:
        def call() -> int:
            cls, hit = next(it)
            s = (P + p0) * (B + b0)
            mask = mon.observe(cls, hit, scores=s, P=P, B=B)
            if mask is None:
                return int(np.argmin(s))
            return int(np.argmin(np.where(mask, s, big)))
        return call

    # the monitor is the product's own: the product must prefer instance 0 for the hot
    # class to be confirmed, so make instance 0 the cheapest
    P_hot = P.copy()
    P_hot[0] = 1
    mons = {"cold": HotspotMonitor(N), "hot": HotspotMonitor(N)}
    calls = {
        "cold": with_monitor(mons["cold"], cycle(cold_stream)),
        "hot": with_monitor(mons["hot"], cycle(hot_stream)),
    }
    P_saved = P.copy()
    times: dict[str, list[float]] = {"bare product argmin": [], "monitor on, no hot class": [],
                                     "monitor on, confirmed hot class": []}
    for _ in range(reps):
        times["bare product argmin"].append(per_call_us(bare, number))
        times["monitor on, no hot class"].append(per_call_us(calls["cold"], number))
        P[:] = P_hot
        times["monitor on, confirmed hot class"].append(per_call_us(calls["hot"], number))
        P[:] = P_saved
    confirmed = [f for f in mons["hot"].findings if f.phase2_decision is not None]
    print(f"\nhot-class monitor, N={N}, median of {reps} x {number} calls "
          f"(hot stream: {len(confirmed)} class confirmed; cold stream: "
          f"{len(mons['cold'].findings)} findings)")
    base = statistics.median(times["bare product argmin"])
    print(f"{'':40s} {'us/call':>9s} {'x bare':>9s}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:40s} {m:9.2f} {m / base:9.2f}")
    worst = max(statistics.median(ts) for ts in times.values()) / base
    print(f"goal monitor on <= 2x bare argmin: worst {worst:.2f}x -> "
          f"{'met' if worst <= 2 else 'MISSED'}")


def bench_router_state(P: np.ndarray, B: np.ndarray, p0: int, b0: int, reps: int,
                       number: int) -> None:
    """Per-decision cost of the router-state monitor (N=16, 4 replicas, lag 50 ms, decisions
    1 ms apart so the lag window holds about 50), beside the bare argmin and ``check``."""
    from lmetric_theory.detector import RouterStateMonitor, RouterStateSettings

    st = RouterStateSettings(replicas=4, lag_s=0.05)
    TB = B * 4
    TP = P + 100
    det = Detector(37.5, p0, b0)
    snap = Snapshot(P, B)

    def bare() -> int:
        return int(np.argmin((P + p0) * (B + b0)))

    def make(kind: str, history: int):
        mon = RouterStateMonitor(N, st, p0=p0, b0=b0)
        clock = [0]
        extra: dict = {}
        if kind in ("skew", "all"):
            extra.update(true_prefill=TP, true_batch=TB)
        if kind in ("stale", "all"):
            extra.update(predicted_cached=640.0, actual_cached=320.0)

        def call() -> int:
            d = clock[0]
            clock[0] = d + 1
            c = bare()
            mon.observe(d * 1e-3, c, P, B, replica=d % 4, **extra)
            return c

        for _ in range(history):
            call()
        return call

    labels = {"herding only": "herd", "+ replica_skew (engine counters)": "skew",
              "+ stale_index (hits)": "stale", "all three": "all"}
    times: dict[str, list[float]] = {"bare product argmin": [], "Detector.check": []}
    calls = {}
    for name, kind in labels.items():
        for hist in (1_000, 100_000):
            key = f"{name}, {hist:,} before"
            calls[key] = make(kind, hist)
            times[key] = []
    for _ in range(reps):
        times["bare product argmin"].append(per_call_us(bare, number))
        times["Detector.check"].append(per_call_us(lambda: det.check(snap), number))
        for key, fn in calls.items():
            times[key].append(per_call_us(fn, number))
    base = statistics.median(times["bare product argmin"])
    chk = statistics.median(times["Detector.check"])
    print(f"\nrouter-state monitor (argmin + observe), N={N}, R=4, lag 50 ms, median of "
          f"{reps} x {number} calls")
    print(f"{'':52s} {'us/call':>9s} {'x bare':>8s} {'x check':>8s}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:52s} {m:9.2f} {m / base:8.2f} {m / chk:8.2f}")
    growth = max(
        statistics.median(times[f"{n}, 100,000 before"])
        / statistics.median(times[f"{n}, 1,000 before"]) for n in labels
    )
    print(f"cost after 100,000 decisions / after 1,000 (worst of the four): {growth:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
