"""The ``hotspot`` synthetic workload: one hot prefix class among unrelated requests.

The adversarial workload of the hot-prefix-class results (``lmetric-theory derive``, (j)-(l)):
a share ``share`` of the requests belongs to class 0, whose prompts start with the same
``prefix``-token shared prefix (a long system prompt or document) followed by a unique
suffix; the remaining requests are spread evenly over ``classes - 1`` further shared-prefix
classes of the same prefix length, or, with ``classes = 1`` (the default), have prompts of
median ``other`` tokens that share nothing. Arrivals are a Poisson process at ``rate`` requests/s.

With the default 8 instances the product caches class 0 on one instance or two and keeps
sending it there; the condition ``x/xbar > |M|/|Mbar|`` holds for ``share`` above about
``|M| / N`` (0.125 for one instance out of 8).

Block hashes are prefix-consistent like the other synthetic kinds (equal hash at position
``k`` iff equal prefix through block ``k``; partial last blocks hash differently), renumbered
densely in order of first appearance. Selected as ``synthetic:hotspot[:key=value,...]``;
:data:`HOTSPOT_KEYS` lists the keys with their ranges.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from lmetric_theory.workload.base import Workload
from lmetric_theory.workload.loaders import make_workload
from lmetric_theory.workload.synthetic import LengthDist, _Prompt, _Segments

__all__ = ["HOTSPOT_KEYS", "HotspotParams", "hotspot", "hotspot_from_spec"]


@dataclass(frozen=True, slots=True)
class HotspotParams:
    """Parameters of the ``hotspot`` kind (tokens, requests/s).

    Attributes
    ----------
    share : float
        Share ``x`` of requests in the hot class 0, in (0, 1].
    prefix : int
        Shared prefix length of each class, tokens (>= 1).
    rate : float
        Mean arrival rate, requests/s (> 0).
    classes : int
        Number of shared-prefix classes, hot one included (>= 1); with 1 the other requests
        share nothing.
    count : int
        Number of requests (>= 1).
    seed : int
        Seed (>= 0).
    suffix : int
        Median unique suffix length, tokens (>= 1; log-normal, sigma 0.5).
    output : int
        Median output length, tokens (>= 1; log-normal, sigma 0.5).
    warm : float
        Seconds between the first request, always of the hot class (it warms one
        instance's cache), and the Poisson arrivals of the rest (>= 0; 0: no warm-up). With
        the warm-up the class is cached on one instance when it turns hot
        (|M| = 1); without it the first requests miss everywhere and spread it.
    other : int
        Median prompt length of requests outside the shared-prefix classes (``classes = 1``),
        tokens (>= 1; log-normal, sigma 0.5).
    block : int
        Tokens per hash block (>= 1).
    """

    share: float = 0.6
    prefix: int = 8192
    rate: float = 16.0
    classes: int = 1
    count: int = 2000
    seed: int = 0
    suffix: int = 256
    output: int = 256
    warm: float = 1.0
    other: int = 1024
    block: int = 128

    def __post_init__(self) -> None:
        for key, (kind, lo, hi, text) in HOTSPOT_KEYS.items():
            v = getattr(self, key)
            if kind is int:
                ok = isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
            else:
                ok = (isinstance(v, int | float) and not isinstance(v, bool)
                      and math.isfinite(v) and lo < v <= hi)
            if not ok:
                raise ValueError(f"synthetic:hotspot: {key} must be {text}, got {v!r}")


#: key -> (type, low, high, range in words). Floats take the open low end ``(lo, hi]``.
HOTSPOT_KEYS: dict[str, tuple[type, float, float, str]] = {
    "share": (float, 0.0, 1.0, "a number in (0, 1]"),
    "prefix": (int, 1, 2**20, "an integer in [1, 1048576] (tokens)"),
    "rate": (float, 0.0, 1e6, "a number in (0, 1e6] (requests/s)"),
    "classes": (int, 1, 4096, "an integer in [1, 4096]"),
    "count": (int, 1, 10**7, "an integer in [1, 10000000]"),
    "seed": (int, 0, 2**63 - 1, "an integer >= 0"),
    "suffix": (int, 1, 2**20, "an integer in [1, 1048576] (tokens)"),
    "output": (int, 1, 2**20, "an integer in [1, 1048576] (tokens)"),
    "warm": (float, -1e-300, 1e6, "a number in [0, 1e6] (s)"),
    "other": (int, 1, 2**20, "an integer in [1, 1048576] (tokens)"),
    "block": (int, 1, 2**16, "an integer in [1, 65536] (tokens)"),
}


def hotspot_from_spec(pairs: dict[str, str], **defaults: object) -> Workload:
    """The workload of ``synthetic:hotspot:k=v,...`` from its raw ``key -> text`` pairs.

    ``defaults`` (e.g. ``seed`` from a command's ``--seed``) apply to keys not given.

    Raises
    ------
    ValueError
        One line naming the key and its valid range (unknown key: the valid keys).
    """
    kw: dict[str, object] = {k: v for k, v in defaults.items() if k in HOTSPOT_KEYS}
    for key, raw in pairs.items():
        spec = HOTSPOT_KEYS.get(key)
        if spec is None:
            raise ValueError(f"synthetic:hotspot: unknown key {key!r}; valid keys: "
                             f"{', '.join(HOTSPOT_KEYS)}")
        kind, _, _, text = spec
        try:
            kw[key] = int(raw) if kind is int else float(raw)
        except ValueError:
            raise ValueError(f"synthetic:hotspot: {key} must be {text}, got {raw!r}") from None
    return hotspot(HotspotParams(**kw))  # type: ignore[arg-type]


def hotspot(params: HotspotParams | None = None) -> Workload:
    """Generate the ``hotspot`` workload (see the module docstring).

    Parameters
    ----------
    params : HotspotParams, optional
        Defaults: share 0.6, 8,192-token prefix, 16 requests/s, 2,000 requests.

    Returns
    -------
    Workload
        ``session_ids`` holds each request's class (0 = hot, -1 = no shared prefix);
        ``meta`` records ``kind="hotspot"`` and every parameter.
    """
    p = params or HotspotParams()
    rng = np.random.default_rng(np.random.SeedSequence([p.seed, 0x407]))
    segs = _Segments(7)
    prefixes = []
    for _ in range(p.classes):
        pr = _Prompt(p.block)
        pr.extend(segs.new(), p.prefix)
        prefixes.append(pr)
    suffix = LengthDist(float(p.suffix), 0.5, 1, max(1, 8 * p.suffix))
    output = LengthDist(float(p.output), 0.5, 1, max(1, 8 * p.output))
    other = LengthDist(float(p.other), 0.5, 1, max(1, 8 * p.other))
    arrival = np.cumsum(rng.exponential(1.0 / p.rate, size=p.count))
    arrival -= arrival[0]
    u = rng.random(p.count)
    if p.warm > 0:
        arrival[1:] += p.warm
        u[0] = 0.0
    pick = rng.integers(1, max(p.classes, 2), size=p.count)
    cls = np.where(u < p.share, 0, pick if p.classes > 1 else -1)
    inp = np.empty(p.count, dtype=np.int64)
    out = np.empty(p.count, dtype=np.int64)
    raw: list[list[int]] = []
    for i in range(p.count):
        out[i] = output.draw(rng)
        c = int(cls[i])
        if c >= 0:
            pr = prefixes[c].copy()
            pr.extend(segs.new(), suffix.draw(rng))
        else:  # a prompt that shares nothing
            pr = _Prompt(p.block)
            pr.extend(segs.new(), other.draw(rng))
        inp[i] = pr.length
        raw.append(pr.hashes())
    lens = np.fromiter((len(h) for h in raw), dtype=np.int64, count=p.count)
    flat = np.fromiter((h for hs in raw for h in hs), dtype=np.int64, count=int(lens.sum()))
    uniq, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
    rank = np.empty(uniq.shape[0], dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(uniq.shape[0], dtype=np.int64)
    offsets = np.zeros(p.count + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    meta = {
        "source": "synthetic:hotspot",
        "format": "synthetic",
        "kind": "hotspot",
        "seed": p.seed,
        "n_requests": p.count,
        "rate_rps": float(p.rate),
        "block_size": p.block,
        "params": asdict(p),
        "skipped_lines": 0,
        "reordered_lines": 0,
        "rate_scale": 1.0,
        "transforms": [],
    }
    return make_workload(
        arrival_s=arrival,
        input_tokens=inp,
        output_tokens=out,
        hash_ids=rank[inverse.reshape(-1)],
        hash_offsets=offsets,
        block_size=p.block,
        session_ids=cls.astype(np.int64),
        meta=meta,
    )
