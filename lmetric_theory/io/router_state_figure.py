"""The router-state study's figure (docs/img/router_state.png), drawn with matplotlib from
saved ``results --router-study --json`` documents."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from lmetric_theory.core.fileio import atomic_write

__all__ = ["write_figure"]


def write_figure(docs: list[dict[str, Any]], path: str | Path) -> None:
    """Mean TTFT (log scale, bars: [min, max] over seeds) of every policy, per workload:
    against the router replica count at the smallest lag (left) and against the KV event
    lag at the smallest replica count (right, lags evenly spaced). Written atomically as
    PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    panels = []
    for d in docs:
        for wl in dict.fromkeys(a["workload"] for a in d["aggregate"]):
            panels.append((d, wl))
    fig, axes = plt.subplots(len(panels), 2, figsize=(14, 3.6 * len(panels)), squeeze=False)
    for row, (d, wl) in enumerate(panels):
        agg = {(a["policy"], a["replicas"], a["lag_s"]): a for a in d["aggregate"]
               if a["workload"] == wl}
        rs = sorted({r for r, _ in d["settings"]})
        lags = sorted({x for _, x in d["settings"]})
        for col, (axis, xs) in enumerate((("replicas", rs), ("lag", lags))):
            ax = axes[row][col]
            for pol in d["policies"]:
                pts = []
                for x in xs:
                    a = agg.get((pol, x, lags[0]) if axis == "replicas" else (pol, rs[0], x))
                    if a is not None and a["ttft_mean_s"]["value"] is not None:
                        v = a["ttft_mean_s"]
                        pts.append((x, v["value"], v["range"][0], v["range"][1]))
                if not pts:
                    continue
                xv = [p[0] if axis == "replicas" else xs.index(p[0]) for p in pts]
                yv = [p[1] for p in pts]
                err = [[max(p[1] - p[2], 0) for p in pts], [max(p[3] - p[1], 0) for p in pts]]
                ax.errorbar(xv, yv, yerr=err, marker="o", capsize=3, label=pol)
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_minor_formatter(ScalarFormatter())
            if axis == "replicas":
                ax.set_xscale("log", base=2)
                ax.set_xticks(rs, [str(r) for r in rs])
                ax.set_xlabel(f"router replicas R (KV event lag {lags[0] * 1000:g} ms)")
            else:  # the lags evenly spaced
                ax.set_xticks(range(len(lags)), [f"{x * 1000:g}" for x in lags])
                ax.set_xlabel(f"KV event lag, ms (R = {rs[0]})")
            ax.set_ylabel("mean TTFT, s")
            ax.set_title(wl, fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
        axes[row][1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    data = buf.getvalue()
    atomic_write(path, lambda f: f.write(data))
