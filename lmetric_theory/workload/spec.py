"""Synthetic workloads selected by name wherever a trace file is: ``synthetic:KIND[:k=v,...]``.

Kinds and keys
--------------
``chat``, ``api``, ``agent``, ``mixed`` (see :mod:`lmetric_theory.workload.synthetic`)
    ``count`` (requests, >= 1; default 2000), ``rate`` (requests/s, > 0; default 8),
    ``seed`` (>= 0; default the command's ``--seed``), ``block`` (tokens per block, >= 1;
    default 128). For ``agent`` (closed-loop sessions) ``count`` counts turns and ``rate``
    is the nominal turn rate (sessions start at ``rate / E[turns]``).
``hotspot`` (see :mod:`lmetric_theory.workload.hotspot`)
    ``share``, ``prefix``, ``rate``, ``classes``, ``count``, ``seed``, ``suffix``,
    ``output``, ``warm``, ``other``, ``block``.

Examples: ``synthetic:chat``, ``synthetic:api:count=500,rate=4``,
``synthetic:hotspot:share=0.6,prefix=8192``. Errors are one-line ``ValueError``s naming the
kind, the key and the valid range.
"""

from __future__ import annotations

import math

from lmetric_theory.workload.base import Workload

__all__ = ["SPEC_PREFIX", "SYNTHETIC_KINDS", "is_synthetic_spec", "synthetic_from_spec"]

#: What a synthetic workload spec starts with.
SPEC_PREFIX = "synthetic:"
#: Kinds a spec may name.
SYNTHETIC_KINDS: tuple[str, ...] = ("chat", "api", "agent", "mixed", "hotspot")

_BASIC_KEYS = {
    "count": (int, "an integer in [1, 10000000]", 1, 10**7),
    "rate": (float, "a number in (0, 1e6] (requests/s)", 0.0, 1e6),
    "seed": (int, "an integer >= 0", 0, 2**63 - 1),
    "block": (int, "an integer in [1, 65536] (tokens)", 1, 2**16),
}


def is_synthetic_spec(text: str | None) -> bool:
    """True when ``text`` names a synthetic workload rather than a file."""
    return text is not None and str(text).startswith(SPEC_PREFIX)


def _pairs(spec: str, rest: str) -> dict[str, str]:
    out: dict[str, str] = {}
    if not rest.strip():
        return out
    for item in rest.split(","):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ValueError(f"{spec}: expected key=value, got {item!r}")
        if key in out:
            raise ValueError(f"{spec}: key {key!r} given twice")
        out[key] = value.strip()
    return out


def synthetic_from_spec(spec: str, *, seed: int = 0) -> Workload:
    """The workload a ``synthetic:KIND[:k=v,...]`` spec names.

    Parameters
    ----------
    spec : str
        The spec (see the module docstring).
    seed : int
        Seed used when the spec has no ``seed`` key.

    Raises
    ------
    ValueError
        Unknown kind (lists the kinds), unknown key (lists the keys), or a value out of range,
        in one line.
    """
    if not is_synthetic_spec(spec):
        raise ValueError(f"{spec!r}: a synthetic workload spec starts with {SPEC_PREFIX!r}")
    kind, _, rest = spec[len(SPEC_PREFIX):].partition(":")
    kind = kind.strip()
    if kind not in SYNTHETIC_KINDS:
        raise ValueError(f"{spec}: unknown synthetic kind {kind!r}; valid kinds: "
                         f"{', '.join(SYNTHETIC_KINDS)}")
    pairs = _pairs(spec, rest)
    if kind == "hotspot":
        from lmetric_theory.workload.hotspot import hotspot_from_spec

        return hotspot_from_spec(pairs, seed=seed)
    from lmetric_theory.workload.synthetic import DEFAULT_BLOCK_SIZE, synthetic

    values: dict[str, float | int] = {"count": 2000, "rate": 8.0, "seed": seed,
                                      "block": DEFAULT_BLOCK_SIZE}
    for key, raw in pairs.items():
        if key not in _BASIC_KEYS:
            raise ValueError(f"synthetic:{kind}: unknown key {key!r}; valid keys: "
                             f"{', '.join(_BASIC_KEYS)}")
        tp, text, lo, hi = _BASIC_KEYS[key]
        try:
            v = tp(raw)
        except ValueError:
            raise ValueError(f"synthetic:{kind}: {key} must be {text}, got {raw!r}") from None
        ok = (lo <= v <= hi) if tp is int else (math.isfinite(v) and lo < v <= hi)
        if not ok:
            raise ValueError(f"synthetic:{kind}: {key} must be {text}, got {raw!r}")
        values[key] = v
    return synthetic(kind, n_requests=int(values["count"]), rate_rps=float(values["rate"]),
                     seed=int(values["seed"]), block_size=int(values["block"]))
