"""The deployers' metrics of a run, named as vLLM's benchmark, AIPerf and DynoSim name them.

:func:`compute_metrics` reduces a :class:`~lmetric_theory.sim.config.SimResult` to a frozen
:class:`Metrics` (``to_json()`` gives the stable document ``simulate --json`` prints); an
:class:`Slo` (``--slo ttft=S,itl=S,e2e=S``, seconds) adds SLO attainment and goodput as
DistServe defines it (good requests per second). docs/metrics.md lists every metric with
its names in the three tools, its definition and unit.

Conventions
-----------
- Percentiles are numpy's default (linear interpolation between closest ranks,
  ``np.percentile(..., method="linear")``). The pooled ITL percentiles are computed from
  ``(gap, multiplicity)`` pairs without expanding them and equal ``np.percentile`` of the
  expanded array (:func:`weighted_percentile`).
- Latency distributions (TTFT, TPOT, E2E) are over finished requests.
- Duration = first arrival to last finish (the span AIPerf calls
  ``benchmark_duration``); throughputs and goodput divide by it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["SLO_KEYS", "Metrics", "Slo", "compute_metrics", "jain_index", "weighted_percentile"]

#: Keys of ``--slo`` (seconds each).
SLO_KEYS: tuple[str, ...] = ("ttft", "itl", "e2e")


@dataclass(frozen=True, slots=True)
class Slo:
    """Service-level objective: upper bounds per request, seconds (``None``: not bounded).

    A finished request meets it when every given bound holds (``<=``): its TTFT, its E2E
    latency and its mean inter-token latency (TPOT, ``(e2e - ttft) / (n_out - 1)``; a
    one-token output satisfies the ITL bound, as AIPerf and DynoSim do).

    Attributes
    ----------
    ttft_s, itl_s, e2e_s : float or None
        Bounds on time to first token, mean inter-token latency and end-to-end latency,
        seconds.
    """

    ttft_s: float | None = None
    itl_s: float | None = None
    e2e_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("ttft_s", "itl_s", "e2e_s"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ValueError(f"slo {name}: need a finite number of seconds > 0, got {v!r}")

    @classmethod
    def parse(cls, text: str) -> Slo:
        """Read ``ttft=S,itl=S,e2e=S`` (any non-empty subset, seconds).

        Raises
        ------
        ValueError
            One message naming the bad item: an unknown or repeated key, a missing ``=``,
            or a value that is not a finite number > 0.
        """
        keys = ", ".join(SLO_KEYS)
        items = [t.strip() for t in str(text).split(",")]
        if not any(items):
            raise ValueError(f"empty SLO: expected KEY=SECONDS[,...] with keys {keys}")
        got: dict[str, float] = {}
        for item in items:
            key, eq, val = item.partition("=")
            key, val = key.strip(), val.strip()
            if not eq:
                raise ValueError(f"{item!r}: expected KEY=SECONDS with KEY one of {keys}")
            if key not in SLO_KEYS:
                raise ValueError(f"unknown key {key!r} in {item!r} (keys: {keys}; values in seconds)")
            if key in got:
                raise ValueError(f"key {key!r} given twice")
            try:
                x = float(val)
            except ValueError:
                x = math.nan
            if not (math.isfinite(x) and x > 0):
                raise ValueError(f"{key}={val!r}: need a finite number of seconds > 0")
            got[key] = x
        return cls(ttft_s=got.get("ttft"), itl_s=got.get("itl"), e2e_s=got.get("e2e"))

    def to_json(self) -> dict[str, float | None]:
        """``{"ttft_s", "itl_s", "e2e_s"}``, seconds or ``None``."""
        return {"ttft_s": self.ttft_s, "itl_s": self.itl_s, "e2e_s": self.e2e_s}

    def __str__(self) -> str:
        parts = [f"{k}={v:g}" for k, v in zip(SLO_KEYS, (self.ttft_s, self.itl_s, self.e2e_s),
                                              strict=True) if v is not None]
        return ",".join(parts)

    def met(self, ttft_s: np.ndarray, tpot_s: np.ndarray, e2e_s: np.ndarray,
            output_tokens: np.ndarray) -> np.ndarray:
        """Mask of requests meeting every given bound, shape (n,), bool.

        Parameters
        ----------
        ttft_s, tpot_s, e2e_s : np.ndarray, shape (n,), float64
            Per-request latencies, seconds (NaN: not finished, never met).
        output_tokens : np.ndarray, shape (n,), int64
            Output lengths; ``<= 1`` satisfies the ITL bound.
        """
        ok = np.isfinite(e2e_s) & np.isfinite(ttft_s)
        with np.errstate(invalid="ignore"):
            if self.ttft_s is not None:
                ok &= ttft_s <= self.ttft_s
            if self.e2e_s is not None:
                ok &= e2e_s <= self.e2e_s
            if self.itl_s is not None:
                ok &= (np.asarray(output_tokens) <= 1) | (tpot_s <= self.itl_s)
        return ok


def weighted_percentile(values: np.ndarray, counts: np.ndarray, q: float | np.ndarray) -> np.ndarray:
    """Percentiles of ``values`` repeated ``counts`` times, without expanding them.

    Equal to ``np.percentile(np.repeat(values, counts), q)`` (linear interpolation): on the
    expanded sorted array ``x`` of length ``M``, the ``q``-th percentile sits at position
    ``h = q / 100 * (M - 1)`` and is ``x[floor(h)] + (h - floor(h)) * (x[floor(h) + 1] -
    x[floor(h)])``; ``x[k]`` is read from the cumulative counts by a binary search.

    Parameters
    ----------
    values : np.ndarray, shape (k,), float64
        Distinct or repeated values (any order).
    counts : np.ndarray, shape (k,), int64
        Multiplicity of each value, >= 0.
    q : float or np.ndarray
        Percentiles in [0, 100].

    Returns
    -------
    np.ndarray
        One value per ``q`` (shape of ``q``); NaN when ``sum(counts) == 0``.
    """
    v = np.asarray(values, dtype=np.float64)
    c = np.asarray(counts, dtype=np.int64)
    qa = np.asarray(q, dtype=np.float64)
    if v.shape != c.shape:
        raise ValueError("values and counts must have the same shape")
    if np.any(c < 0):
        raise ValueError("counts must be >= 0")
    keep = c > 0
    if not keep.all():  # (a run's ITL counts are all positive: no copy of millions then)
        v, c = v[keep], c[keep]
    m = int(c.sum())
    if m == 0:
        return np.full(qa.shape, np.nan)
    h = (qa / 100.0) * (m - 1)
    lo = np.floor(h)
    t = h - lo
    lo_i = lo.astype(np.int64)
    hi_i = np.minimum(lo_i + 1, m - 1)
    ab = _expanded_at(v, c, np.concatenate((lo_i.ravel(), hi_i.ravel())))
    a = ab[: lo_i.size].reshape(lo_i.shape)
    b = ab[lo_i.size :].reshape(hi_i.shape)
    d = b - a
    # numpy's own lerp (exact at both ends)
    return np.where(t >= 0.5, b - d * (1 - t), a + d * t)


#: Above this many values, :func:`_expanded_at` sorts only the bucket a position falls in.
_BUCKET_MIN = 1 << 16


def _expanded_at(v: np.ndarray, c: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """``x[pos]`` of the sorted expansion ``x = sort(repeat(v, c))`` (``c > 0``), exactly.

    A few values are sorted whole. Many (a run's inter-token gaps: millions) are cut into
    equal-width buckets of value, and only the buckets holding the wanted positions are
    sorted: the bucket index is a non-decreasing function of the value, so a bucket holds
    every copy of its values, the expansion is the buckets in order, and a position is read
    inside its own bucket. The bucket width only changes the cost, never the result.
    """
    pos = np.asarray(pos, dtype=np.int64).ravel()
    lo, hi = (v.min(), v.max()) if v.size > _BUCKET_MIN else (0.0, 0.0)
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        order = np.argsort(v)  # ties hold equal values: their order does not matter
        return v[order][np.searchsorted(np.cumsum(c[order]), pos, side="right")]
    # bucket width from a sample's range below its 99th percentile (a long tail of large
    # gaps would otherwise leave the bulk in a few buckets); larger values share the last one
    sample = np.sort(v[:: v.size // 2048])
    top = sample[int(0.99 * (sample.size - 1))]
    if not top > lo:
        top = hi
    # k = min((v - lo) * 4096 / (top - lo), 4096) as int, non-decreasing in v; computed in
    # place (the same ufuncs, so the same values) to spare three arrays of millions
    x = v - lo
    x *= 4096.0 / (top - lo)
    np.minimum(x, 4096.0, out=x)
    k = x.astype(np.int64)
    del x
    before = np.concatenate(([0], np.cumsum(np.bincount(k, weights=c).astype(np.int64))))
    out = np.empty(pos.size, dtype=np.float64)
    sorted_buckets: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for j, p in enumerate(pos.tolist()):
        b = int(np.searchsorted(before, p, side="right")) - 1  # before[b] <= p < before[b + 1]
        if b not in sorted_buckets:
            sel = k == b
            vb, cb = v[sel], c[sel]
            order = np.argsort(vb)
            sorted_buckets[b] = (vb[order], np.cumsum(cb[order]))
        vb, cum = sorted_buckets[b]
        out[j] = vb[np.searchsorted(cum, p - before[b], side="right")]
    return out


def jain_index(x: np.ndarray) -> float:
    """Jain's fairness index ``(sum x)^2 / (n * sum x^2)``: 1 when all equal, ``1/n`` when
    one holds everything; NaN when ``n == 0`` or all are zero."""
    a = np.asarray(x, dtype=np.float64)
    s2 = float(np.sum(a * a))
    if a.size == 0 or s2 == 0:
        return math.nan
    return float(np.sum(a)) ** 2 / (a.size * s2)


def _max_over_mean(x: np.ndarray) -> float:
    a = np.asarray(x, dtype=np.float64)
    m = float(a.mean()) if a.size else 0.0
    return float(a.max()) / m if m > 0 else math.nan


def _pct(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q)) if a.size else math.nan


def _mean(a: np.ndarray) -> float:
    return float(a.mean()) if a.size else math.nan


@dataclass(frozen=True, slots=True)
class Metrics:
    """The deployers' metrics of one run (docs/metrics.md). Times in seconds, throughputs
    per second of :attr:`duration_s`; NaN (``null`` in JSON) where undefined.

    Attributes
    ----------
    requests, completed : int
        Requests in the run and those finished.
    first_arrival_s, last_finish_s, duration_s : float
        First arrival, last finish and their difference (the throughput denominator), s.
    ttft_mean_s, ttft_p50_s, ttft_p90_s, ttft_p95_s, ttft_p99_s : float
        Time to first token (first token - arrival) over finished requests, s.
    itl_p50_s, itl_p95_s, itl_p99_s, itl_mean_s : float
        Inter-token latency, every gap of every generated token pooled, s.
    itl_gaps : int
        Number of gaps pooled (``sum(n_out - 1)`` over finished requests); -1 when the
        result carries no gaps.
    tpot_mean_s, tpot_p99_s : float
        Per-request time per output token after the first, over finished requests with
        ``n_out > 1``, s.
    e2e_p50_s, e2e_p99_s : float
        End-to-end latency (last token - arrival), s.
    request_throughput_rps, output_throughput_tok_s : float
        Finished requests and their output tokens per second of duration.
    slo : Slo or None
        The objective of ``good_requests`` .. ``goodput_rps`` (all NaN / -1 without one).
    good_requests : int
        Finished requests meeting every bound of ``slo`` (-1 without an SLO).
    slo_attainment : float
        ``good_requests / completed``.
    goodput_rps : float
        ``good_requests / duration_s`` (DistServe's goodput), requests per second.
    prefix_hit_rate : float
        Prompt tokens served from the prefix cache / prompt tokens, over admitted requests.
    instance_requests, instance_prefill_tokens : tuple of int
        Requests routed to, and prompt tokens computed by prefill on, each instance.
    instance_mean_batch_busy, instance_mean_batch : tuple of float
        Mean running batch per instance: ``batch_integral / busy_s`` (while iterating)
        and ``batch_integral / duration_s`` (over the run); empty when not recorded.
    requests_max_over_mean, requests_jain : float
        Load spread of ``instance_requests``: max / mean and Jain's fairness index.
    prefill_max_over_mean, prefill_jain : float
        The same of ``instance_prefill_tokens``.
    sessions : int
        Sessions with every turn finished (0 without sessions).
    session_duration_p50_s, session_duration_p99_s : float
        Session duration: its first turn's arrival to its last turn's finish, s.
    session_wait_p50_s, session_wait_p99_s : float
        Summed wait of a session's turns: the sum over its turns of the time from the
        turn's arrival to its first token (its TTFT), s. Think time and decode are
        excluded.
    """

    requests: int
    completed: int
    first_arrival_s: float
    last_finish_s: float
    duration_s: float
    ttft_mean_s: float
    ttft_p50_s: float
    ttft_p90_s: float
    ttft_p95_s: float
    ttft_p99_s: float
    itl_mean_s: float
    itl_p50_s: float
    itl_p95_s: float
    itl_p99_s: float
    itl_gaps: int
    tpot_mean_s: float
    tpot_p99_s: float
    e2e_p50_s: float
    e2e_p99_s: float
    request_throughput_rps: float
    output_throughput_tok_s: float
    prefix_hit_rate: float
    instance_requests: tuple[int, ...]
    instance_prefill_tokens: tuple[int, ...]
    requests_max_over_mean: float
    requests_jain: float
    prefill_max_over_mean: float
    prefill_jain: float
    instance_mean_batch_busy: tuple[float, ...] = ()
    instance_mean_batch: tuple[float, ...] = ()
    slo: Slo | None = None
    good_requests: int = -1
    slo_attainment: float = math.nan
    goodput_rps: float = math.nan
    sessions: int = 0
    session_duration_p50_s: float = math.nan
    session_duration_p99_s: float = math.nan
    session_wait_p50_s: float = math.nan
    session_wait_p99_s: float = math.nan

    def to_json(self) -> dict[str, Any]:
        """The stable JSON document (keys documented in docs/metrics.md); NaN stays NaN
        here (``json_safe`` turns it into ``null``)."""
        has_slo = self.slo is not None
        has_itl = self.itl_gaps >= 0
        nan = math.nan
        return {
            "requests": self.requests,
            "completed": self.completed,
            "duration_s": self.duration_s,
            "first_arrival_s": self.first_arrival_s,
            "last_finish_s": self.last_finish_s,
            "ttft_s": {"mean": self.ttft_mean_s, "p50": self.ttft_p50_s, "p90": self.ttft_p90_s,
                       "p95": self.ttft_p95_s, "p99": self.ttft_p99_s},
            "itl_s": {"mean": self.itl_mean_s, "p50": self.itl_p50_s, "p95": self.itl_p95_s,
                      "p99": self.itl_p99_s, "gaps": self.itl_gaps if has_itl else None},
            "tpot_s": {"mean": self.tpot_mean_s, "p99": self.tpot_p99_s},
            "e2e_s": {"p50": self.e2e_p50_s, "p99": self.e2e_p99_s},
            "request_throughput_rps": self.request_throughput_rps,
            "output_throughput_tok_s": self.output_throughput_tok_s,
            "slo": self.slo.to_json() if has_slo else None,
            "good_requests": self.good_requests if has_slo else None,
            "slo_attainment": self.slo_attainment if has_slo else nan,
            "goodput_rps": self.goodput_rps if has_slo else nan,
            "prefix_hit_rate": self.prefix_hit_rate,
            "per_instance": {
                "requests": list(self.instance_requests),
                "prefill_tokens_computed": list(self.instance_prefill_tokens),
                "mean_batch_busy": list(self.instance_mean_batch_busy) or None,
                "mean_batch": list(self.instance_mean_batch) or None,
            },
            "load_spread": {
                "requests": {"max_over_mean": self.requests_max_over_mean,
                             "jain": self.requests_jain},
                "prefill_tokens": {"max_over_mean": self.prefill_max_over_mean,
                                   "jain": self.prefill_jain},
            },
            "sessions": {
                "count": self.sessions,
                "duration_s": {"p50": self.session_duration_p50_s,
                               "p99": self.session_duration_p99_s},
                "wait_s": {"p50": self.session_wait_p50_s, "p99": self.session_wait_p99_s},
            },
        }


def _sessions_of(result: Any, workload: Any) -> np.ndarray | None:
    """Session index per request from the result, else the workload; None without sessions."""
    s = getattr(result, "session", None)
    if s is None and workload is not None and getattr(workload, "sessions", None) is not None:
        s = workload.sessions.session
    if s is None:
        return None
    s = np.asarray(s, dtype=np.int64)
    return s if s.size and np.any(s >= 0) else None


def compute_metrics(result: Any, slo: Slo | None = None, workload: Any = None) -> Metrics:
    """The deployers' metrics of ``result`` (see :class:`Metrics` and docs/metrics.md).

    Parameters
    ----------
    result : SimResult
        A finished (or stopped) run. Optional fields it lacks (``first_token_s`` and
        ``finish_s``: from ``arrival + ttft`` and ``arrival + e2e``; ``itl_gap_s``,
        ``batch_integral``, ``busy_s``, ``session``) give NaN or empty entries, except
        ``session``, which is then read from ``workload``.
    slo : Slo or None
        Adds ``good_requests``, ``slo_attainment`` and ``goodput_rps``.
    workload : Workload or None
        The replayed workload, for its sessions when the result carries none.

    Returns
    -------
    Metrics
    """
    arrival = np.asarray(result.arrival_s, dtype=np.float64)
    ttft = np.asarray(result.ttft_s, dtype=np.float64)
    e2e = np.asarray(result.e2e_s, dtype=np.float64)
    tpot = np.asarray(result.tpot_s, dtype=np.float64)
    out = np.asarray(result.output_tokens, dtype=np.int64)
    inp = np.asarray(result.input_tokens, dtype=np.int64)
    cached = np.asarray(result.cached_tokens, dtype=np.int64)
    finish = (arrival + e2e if getattr(result, "finish_s", None) is None
              else np.asarray(result.finish_s, dtype=np.float64))
    done = np.isfinite(e2e)
    n, k = int(arrival.shape[0]), int(done.sum())

    first_arr = float(arrival.min()) if n else math.nan
    last_fin = float(finish[done].max()) if k else math.nan
    dur = last_fin - first_arr if k else math.nan
    per_s = 1.0 / dur if k and dur > 0 else math.nan

    t_d, e_d = ttft[done], e2e[done]
    tp = tpot[done & (out > 1)]
    tp = tp[np.isfinite(tp)]

    gaps, cnt = getattr(result, "itl_gap_s", None), getattr(result, "itl_count", None)
    if gaps is None or cnt is None:
        itl = (math.nan,) * 3
        itl_mean, n_gaps = math.nan, -1
    else:
        g = np.asarray(gaps, dtype=np.float64)
        c = np.asarray(cnt, dtype=np.int64)
        itl = tuple(float(x) for x in weighted_percentile(g, c, [50.0, 95.0, 99.0]))
        n_gaps = int(c.sum())
        itl_mean = float(np.dot(g, c) / n_gaps) if n_gaps else math.nan

    admitted = cached >= 0
    p_tok = int(inp[admitted].sum())
    hit = float(cached[admitted].sum() / p_tok) if p_tok else math.nan

    n_inst = int(np.asarray(result.prefill_tokens_computed).shape[0])
    where = np.asarray(result.instance, dtype=np.int64)
    req_inst = np.bincount(where[where >= 0], minlength=n_inst).astype(np.int64)
    pf_inst = np.asarray(result.prefill_tokens_computed, dtype=np.int64)
    bi, busy = getattr(result, "batch_integral", None), getattr(result, "busy_s", None)
    mb_busy: tuple[float, ...] = ()
    mb_all: tuple[float, ...] = ()
    if bi is not None:
        bi_a = np.asarray(bi, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            if busy is not None:
                b_a = np.asarray(busy, dtype=np.float64)
                mb_busy = tuple(float(x) for x in np.where(b_a > 0, bi_a / b_a, np.nan))
            mb_all = tuple(float(x) * per_s for x in bi_a)

    kw: dict[str, Any] = {}
    if slo is not None:
        good = int(slo.met(ttft, tpot, e2e, out).sum())
        kw.update(slo=slo, good_requests=good,
                  slo_attainment=good / k if k else math.nan, goodput_rps=good * per_s)

    sess = _sessions_of(result, workload)
    if sess is not None and sess.shape[0] == n:
        m = sess >= 0
        s_ids = sess[m]
        n_s = int(s_ids.max()) + 1
        turns = np.bincount(s_ids, minlength=n_s)
        fin = np.bincount(s_ids, weights=done[m], minlength=n_s)
        whole = (turns > 0) & (fin == turns)
        start = np.full(n_s, np.inf)
        np.minimum.at(start, s_ids, arrival[m])
        end = np.full(n_s, -np.inf)
        np.maximum.at(end, s_ids, np.where(done[m], finish[m], -np.inf))
        wait = np.bincount(s_ids, weights=np.where(done[m], ttft[m], 0.0), minlength=n_s)
        d_s, w_s = (end - start)[whole], wait[whole]
        kw.update(sessions=int(whole.sum()),
                  session_duration_p50_s=_pct(d_s, 50), session_duration_p99_s=_pct(d_s, 99),
                  session_wait_p50_s=_pct(w_s, 50), session_wait_p99_s=_pct(w_s, 99))

    return Metrics(
        requests=n, completed=k, first_arrival_s=first_arr, last_finish_s=last_fin,
        duration_s=dur,
        ttft_mean_s=_mean(t_d), ttft_p50_s=_pct(t_d, 50), ttft_p90_s=_pct(t_d, 90),
        ttft_p95_s=_pct(t_d, 95), ttft_p99_s=_pct(t_d, 99),
        itl_mean_s=itl_mean, itl_p50_s=itl[0], itl_p95_s=itl[1], itl_p99_s=itl[2],
        itl_gaps=n_gaps,
        tpot_mean_s=_mean(tp), tpot_p99_s=_pct(tp, 99),
        e2e_p50_s=_pct(e_d, 50), e2e_p99_s=_pct(e_d, 99),
        request_throughput_rps=k * per_s,
        output_throughput_tok_s=float(out[done].sum()) * per_s,
        prefix_hit_rate=hit,
        instance_requests=tuple(int(x) for x in req_inst),
        instance_prefill_tokens=tuple(int(x) for x in pf_inst),
        requests_max_over_mean=_max_over_mean(req_inst), requests_jain=jain_index(req_inst),
        prefill_max_over_mean=_max_over_mean(pf_inst), prefill_jain=jain_index(pf_inst),
        instance_mean_batch_busy=mb_busy, instance_mean_batch=mb_all,
        **kw,
    )
