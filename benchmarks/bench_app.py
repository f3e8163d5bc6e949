"""Speed of the Streamlit app: first render of each page and the region recompute.

Goals (issue 5): each page's first render with default settings <= 2 s; the
decision-region plot recomputes in <= 200 ms at 400 x 400 when a control moves.

Figures (medians):

- region recompute: ``compute_regions`` at 400 x 400 for a moving ``lam``; also with the
  plotly figure built and serialised to JSON (what a rerun sends to the browser);
- first render, warm process: a new AppTest session (``AppTest.from_file(...).run()``)
  in a process that already imported the library, as a running server serves a new
  visitor;
- first render, cold process: a fresh Python process importing streamlit, the library
  and deriving the theory, then rendering the page script once (a server's very first
  visitor of that page).

Run: ``python benchmarks/bench_app.py [--repeat N] [--cold-repeat M]``
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
PAGES = {
    "Decision regions": "app_pages/decision_regions.py",
    "Snapshot checker": "app_pages/snapshot_checker.py",
    "Trace audit": "app_pages/trace_audit.py",
}
RENDER_GOAL_S = 2.0
RECOMPUTE_GOAL_S = 0.200

# A fresh interpreter renders one page script on its own (what st.navigation runs for it).
_COLD = """
import time
t0 = time.perf_counter()
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({script!r}, default_timeout=120).run()
assert not at.exception, at.exception
print(time.perf_counter() - t0)
"""


def _median_time(fn, repeat: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_regions(repeat: int) -> tuple[float, float]:
    from lmetric_theory.app.support import region_figure
    from lmetric_theory.experiments.regions import compute_regions

    lams = [300.0 + 7.0 * k for k in range(repeat)]
    compute_regions(1024.0, 8.0, lam=300.0)  # warm-up (lambdify, caches)
    it = iter(lams)
    t_compute = _median_time(
        lambda: compute_regions(1024.0, 8.0, lam=next(it), p_range=(0.0, 4096.0),
                                b_range=(0.0, 32.0), resolution=(400, 400)),
        repeat,
    )
    it2 = iter(lams)

    def with_figure() -> None:
        rm = compute_regions(1024.0, 8.0, lam=next(it2), p_range=(0.0, 4096.0),
                             b_range=(0.0, 32.0), resolution=(400, 400))
        region_figure(rm).to_json()

    t_fig = _median_time(with_figure, repeat)
    return t_compute, t_fig


def _render(page: str | None) -> None:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=120).run()
    if page is not None:
        at.switch_page(page).run()
    if at.exception:
        raise RuntimeError(f"page {page or 'default'} raised: {at.exception}")


def bench_warm(repeat: int) -> dict[str, float]:
    from streamlit.testing.v1 import AppTest

    _render(None)  # imports, derivation, lambdify: paid once per process
    out = {}
    for name, page in PAGES.items():

        def one(page: str = page) -> float:
            at = AppTest.from_file(APP, default_timeout=120).run()
            at.switch_page(page)
            t = time.perf_counter()
            at.run()
            dt = time.perf_counter() - t
            if at.exception:
                raise RuntimeError(f"page {page} raised: {at.exception}")
            return dt

        out[name] = statistics.median(one() for _ in range(repeat))
    return out


def bench_cold(repeat: int) -> dict[str, float]:
    out = {}
    for name, page in PAGES.items():
        times = []
        for _ in range(repeat):
            code = _COLD.format(script=str(ROOT / page))
            res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                                 text=True, check=True)
            times.append(float(res.stdout.strip().splitlines()[-1]))
        out[name] = statistics.median(times)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15, help="runs per warm figure (median)")
    ap.add_argument("--cold-repeat", type=int, default=3, help="fresh processes per page")
    args = ap.parse_args(argv)
    if args.repeat < 1 or args.cold_repeat < 1:
        ap.error("--repeat and --cold-repeat must be >= 1")

    t_compute, t_fig = bench_regions(max(args.repeat, 5))
    warm = bench_warm(args.repeat)
    cold = bench_cold(args.cold_repeat)

    print(f"command: python benchmarks/bench_app.py --repeat {args.repeat} "
          f"--cold-repeat {args.cold_repeat}")
    print()
    print("region recompute at 400 x 400 (median)        time      goal    ratio")
    print(f"  compute_regions                          {t_compute * 1e3:7.1f} ms  "
          f"{RECOMPUTE_GOAL_S * 1e3:5.0f} ms  {t_compute / RECOMPUTE_GOAL_S:6.2f}")
    print(f"  compute_regions + figure + JSON          {t_fig * 1e3:7.1f} ms  "
          f"{RECOMPUTE_GOAL_S * 1e3:5.0f} ms  {t_fig / RECOMPUTE_GOAL_S:6.2f}")
    print()
    print("first render, default settings (median)   warm process   cold process   goal")
    for name in PAGES:
        print(f"  {name:<38} {warm[name]:8.3f} s     {cold[name]:8.3f} s   "
              f"{RENDER_GOAL_S:.1f} s")
    print()
    print("warm: new AppTest session in a process that already rendered once (a running")
    print("server's new visitor); cold: fresh interpreter incl. imports and the sympy")
    print("derivation (a server's first visitor). Ratios are time / goal.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
