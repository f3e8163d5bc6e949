"""The paper's baseline catalog, formula for formula as the authors' router lists them.

Every policy here follows one listing of ``blitz-serving/blitz-router`` (``docs/dsl/policies.md``
and the ``policy!`` invocation under ``router/src/policies/``); ``docs/policies.md`` gives
each formula, the signals it reads, its tie rule, its defaults and what is simplified.

Signals (read as attributes of the decision view, shapes (N,)):

- ``hit_blocks`` - cached prefix blocks of the request on each instance (router's cache view);
  ``block_size`` - tokens per block;
- ``router_queued`` - router-counted queued prefill tokens (``queued_tokens``, clamped at 0);
- ``router_inflight`` - router-counted requests in flight, running + queued (``bs``);
- ``router_all_tokens`` - router-counted tokens of the in-flight requests (``all_tokens``);
- ``waiting`` - waiting requests (engine-reported; the authors' router counts them itself).

Derived, per instance ``i`` with prompt length ``T`` tokens and block size ``s``:
``new_tokens = max(T - hit_blocks * s, 0)``, ``new_blocks = max(ceil(T / s) - hit_blocks, 0)``,
``prefill_tokens = queued_tokens + new_tokens``, ``hit_pct = hit_blocks * s / T``,
``decode_blocks = floor(all_tokens / s)``.

Scores are exact (Python ints and :class:`fractions.Fraction`). Where the authors' router turns
a real score into an integer (``(score * 1000) as u64``) the policy does the same with its
``scale`` parameter, so the ties that truncation creates are reproduced; ``scale=0`` keeps the
exact score.

Tie rules (``tie`` parameter of every policy here): ``rust`` is the authors' router's own rule
- ``Select min`` is Rust's ``Iterator::min_by`` (the first, i.e. lowest-index, minimum) and
``Select max`` is ``Iterator::max_by`` (the last, i.e. highest-index, maximum); ``lowest`` and
``highest`` pick that index among the best; ``random`` picks uniformly among them with the
policy's seeded generator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar

import numpy as np

from lmetric_theory.core import signals as sig
from lmetric_theory.core.definitions import BDefinition, PDefinition
from lmetric_theory.policies.base import TUNED, Policy, register_policy

__all__ = [
    "BASELINE_POLICIES",
    "CATALOG_TIE_RULES",
    "Aibrix",
    "Bailian",
    "BoundedMostHit",
    "CatalogPolicy",
    "Dynamo",
    "DynamoDeterministic",
    "DynamoPO",
    "LeastActive",
    "LeastBatch",
    "LeastTokenLoad",
    "LeastWaitToken",
    "LeastWaiting",
    "MostHit",
    "MostHitLoad",
    "MostHitLoadActive",
    "Preble",
    "VllmV1",
    "all_tokens",
    "batch_size",
    "block_size",
    "decode_blocks",
    "hit_blocks",
    "hit_fraction",
    "new_blocks",
    "new_tokens",
    "prefill_tokens",
    "queued_tokens",
    "register_baselines",
    "select",
    "waiting",
]

#: Tie rules of the catalog policies (``rust``: first minimum / last maximum, as the
#: authors' router's ``select_min_by`` / ``select_max_by``).
CATALOG_TIE_RULES: tuple[str, ...] = ("rust", "lowest", "highest", "random")

Score = Any  # int, Fraction or a tuple of them: anything totally ordered and exact


def catalog_tie_field(default: str = "rust") -> Any:
    """The ``tie`` dataclass field of catalog policies (choices :data:`CATALOG_TIE_RULES`)."""
    return dataclasses.field(default=default, metadata={"choices": CATALOG_TIE_RULES})


def _check_tie(tie: str) -> None:
    if tie not in CATALOG_TIE_RULES:
        raise ValueError(f"tie: {tie!r} is not one of {', '.join(CATALOG_TIE_RULES)}")


def _nonneg(name: str, value: Any) -> None:
    if Fraction(value) < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


# --------------------------------------------------------------------------- signals


def _ints(a: Any) -> list[int]:
    return np.asarray(a).astype(np.int64).tolist()


def block_size(view: Any) -> int:
    """Tokens per KV block of the router's cache view (``view.block_size``), > 0."""
    return sig._block(view)


def hit_blocks(view: Any) -> list[int]:
    """Cached prefix blocks of the request per instance (router's cache view), blocks."""
    return sig.hit_blocks(view).tolist()


def new_tokens(view: Any) -> list[int]:
    """``max(T - hit_blocks * block_size, 0)``: the request's uncached tokens, hits in whole
    blocks (``new_tokens`` of the authors' router), tokens."""
    return sig.new_tokens(view).tolist()


def new_blocks(view: Any) -> list[int]:
    """``max(ceil(T / block_size) - hit_blocks, 0)``: the request's uncached blocks, blocks."""
    return sig.new_blocks(view).tolist()


def queued_tokens(view: Any) -> list[int]:
    """Router-counted queued prefill tokens (``queued_tokens``, clamped at 0), tokens."""
    return sig.router_queued(view).tolist()


def prefill_tokens(view: Any) -> list[int]:
    """``queued_tokens + new_tokens`` (``prefill_tokens`` of the authors' router), tokens."""
    return sig.prefill_signal(view, PDefinition.ROUTER_QUEUED_PLUS_NEW).tolist()


def batch_size(view: Any) -> list[int]:
    """Router-counted running + queued requests (``bs``), requests."""
    return sig.router_inflight(view).tolist()


def waiting(view: Any) -> list[int]:
    """Waiting requests per instance (``waiting``), requests."""
    return [max(w, 0) for w in _ints(view.waiting)]


def all_tokens(view: Any) -> list[int]:
    """Router-counted tokens of the in-flight requests (``all_tokens``), tokens."""
    return [max(a, 0) for a in _ints(view.router_all_tokens)]


def decode_blocks(view: Any) -> list[int]:
    """``floor(all_tokens / block_size)`` (``decode_blocks``), blocks."""
    return sig.batch_signal(view, BDefinition.DECODE_BLOCKS).tolist()


def hit_fraction(view: Any) -> list[Fraction]:
    """``hit_blocks * block_size / T`` (``hit_pct``; 0 for an empty prompt), exact."""
    s, t = block_size(view), int(view.input_tokens)
    if t <= 0:
        return [Fraction(0)] * len(hit_blocks(view))
    return [Fraction(h * s, t) for h in hit_blocks(view)]


# ------------------------------------------------------------------------- selection


def select(
    scores: Sequence[Score],
    candidates: Sequence[int] | None = None,
    *,
    maximize: bool,
    tie: str,
    rng: np.random.Generator,
) -> int:
    """Index of the best score among ``candidates`` (default: all) under a tie rule.

    Parameters
    ----------
    scores : sequence, shape (N,)
        Exact scores (ints, Fractions or tuples of them), one per instance.
    candidates : sequence of int, optional
        Instance indices to choose from, in increasing order.
    maximize : bool
        ``True`` for ``Select max``, ``False`` for ``Select min``.
    tie : str
        One of :data:`CATALOG_TIE_RULES`.
    rng : numpy.random.Generator
        Used by ``tie='random'`` only.

    Returns
    -------
    int
        The chosen instance index.
    """
    cand = range(len(scores)) if candidates is None else candidates
    best_val = (max if maximize else min)(scores[i] for i in cand)
    best = [i for i in cand if scores[i] == best_val]
    if len(best) == 1:
        return best[0]
    if tie == "lowest" or (tie == "rust" and not maximize):
        return best[0]
    if tie == "highest" or tie == "rust":
        return best[-1]
    return best[int(rng.integers(len(best)))]


# ---------------------------------------------------------------------------- policies


class CatalogPolicy(Policy):
    """Base of the catalog policies: adds ``formula``, ``source`` and ``signals``."""

    #: The score or rule, in the notation of ``docs/policies.md``.
    formula: ClassVar[str] = ""
    #: Repository and file the policy follows.
    source: ClassVar[str] = ""
    #: View attributes the policy reads.
    signals: ClassVar[tuple[str, ...]] = ()

    def _pick(self, scores: Sequence[Score], candidates: Sequence[int] | None = None, *,
              maximize: bool) -> int:
        return select(scores, candidates, maximize=maximize, tie=self.params.tie, rng=self.rng)


_BLITZ = "blitz-serving/blitz-router"


@dataclass(frozen=True, slots=True)
class CatalogTieParams:
    """Parameters of catalog policies that only choose a tie rule (default ``rust``)."""

    tie: str = catalog_tie_field()

    def __post_init__(self) -> None:
        _check_tie(self.tie)


class _SelectMin(CatalogPolicy):
    """A policy that is one ``Select min by f`` over all instances."""

    Params = CatalogTieParams
    score: ClassVar[Callable[[Any], list[Score]]]

    def choose(self, view: Any) -> int:
        return self._pick(type(self).score(view), maximize=False)


class VllmV1(_SelectMin):
    """vLLM v1 data-parallel load balancing: join the shortest weighted queue."""

    name = "vllm-v1"
    formula = "argmin 4 * waiting + bs"
    source = f"{_BLITZ}: docs/dsl/policies.md (join-shortest-weight-q), router/src/policies/vllm.rs"
    signals = ("waiting", "router_inflight")

    @staticmethod
    def score(view: Any) -> list[int]:
        return [4 * w + b for w, b in zip(waiting(view), batch_size(view), strict=True)]


class LeastWaitToken(_SelectMin):
    """Fewest prefill tokens: queued plus the request's new tokens."""

    name = "least-wait-token"
    formula = "argmin prefill_tokens = queued_tokens + new_tokens"
    source = f"{_BLITZ}: docs/dsl/policies.md (least-wait-token-q), router/src/policies/simple.rs"
    signals = ("router_queued", "hit_blocks", "block_size", "input_tokens")
    score = staticmethod(prefill_tokens)


class LeastWaiting(_SelectMin):
    """llm-d ``load-aware-scorer`` / ``queue-depth-scorer`` alone."""

    name = "least-waiting"
    formula = "argmin waiting"
    source = f"{_BLITZ}: docs/dsl/policies.md (least-waiting-q), router/src/policies/llm_d/least_waiting.rs"
    signals = ("waiting",)
    score = staticmethod(waiting)


class LeastBatch(_SelectMin):
    """llm-d ``running-requests-scorer`` alone (bs = running + queued)."""

    name = "least-bs"
    formula = "argmin bs"
    source = f"{_BLITZ}: docs/dsl/policies.md (least-bs-q), router/src/policies/llm_d/least_bs.rs"
    signals = ("router_inflight",)
    score = staticmethod(batch_size)


class LeastActive(_SelectMin):
    """llm-d ``kv-cache-utilization-scorer`` alone, capacity-free (all_tokens)."""

    name = "least-active"
    formula = "argmin all_tokens"
    source = f"{_BLITZ}: docs/dsl/policies.md (least-active-q), router/src/policies/llm_d/least_active.rs"
    signals = ("router_all_tokens",)
    score = staticmethod(all_tokens)


class LeastTokenLoad(_SelectMin):
    """llm-d ``token-load-scorer`` alone: queued prefill plus active tokens."""

    name = "least-token-load"
    formula = "argmin queued_tokens + all_tokens"
    source = (f"{_BLITZ}: docs/dsl/policies.md (least-token-load-q), "
              "router/src/policies/llm_d/least_token_load.rs")
    signals = ("router_queued", "router_all_tokens")

    @staticmethod
    def score(view: Any) -> list[int]:
        return [q + a for q, a in zip(queued_tokens(view), all_tokens(view), strict=True)]


class MostHit(CatalogPolicy):
    """llm-d ``precise-prefix-cache-scorer`` + ``max-score-picker``: longest cached prefix."""

    name = "most-hit"
    formula = "argmax hit_blocks"
    source = f"{_BLITZ}: docs/dsl/policies.md (most-hit-q), router/src/policies/llm_d/most_hit.rs"
    signals = ("hit_blocks",)
    Params = CatalogTieParams

    def choose(self, view: Any) -> int:
        return self._pick(hit_blocks(view), maximize=True)


@dataclass(frozen=True, slots=True)
class BoundedMostHitParams:
    """``bounded-most-hit``: ``bound`` on queued prefill tokens (authors' default 2048)."""

    bound: int = 2048
    tie: str = catalog_tie_field()

    def __post_init__(self) -> None:
        _check_tie(self.tie)
        _nonneg("bound", self.bound)


class BoundedMostHit(CatalogPolicy):
    """Most hit blocks among instances with fewer than ``bound`` queued prefill tokens; when
    none qualifies, fewest prefill tokens (the authors' "attention black hole" guard)."""

    name = "bounded-most-hit"
    formula = ("among {i: queued_tokens < bound}: argmax hit_blocks; "
               "if that set is empty: argmin prefill_tokens")
    source = f"{_BLITZ}: docs/dsl/policies.md (bounded-most-hit-q), router/src/policies/simple.rs"
    signals = ("router_queued", "hit_blocks", "block_size", "input_tokens")
    Params = BoundedMostHitParams

    def choose(self, view: Any) -> int:
        q = queued_tokens(view)
        ok = [i for i, x in enumerate(q) if x < self.params.bound]
        if ok:
            return self._pick(hit_blocks(view), ok, maximize=True)
        return self._pick(prefill_tokens(view), maximize=False)


@dataclass(frozen=True, slots=True)
class DynamoParams:
    """Dynamo's logit: overlap weight ``w`` (default 1) and the router's integer ``scale``.

    ``w=tuned`` asks for the weight to be tuned on the workload before the run
    (:func:`lmetric_theory.experiments.tuning.resolve_policy` replaces it with the weight
    of :data:`lmetric_theory.experiments.tuning.DYNAMO_W_GRID` that gives the lowest mean
    TTFT); such a policy cannot route until then.
    """

    w: Fraction | str = dataclasses.field(default=Fraction(1), metadata={"tunable": True})
    scale: int = 1000
    tie: str = catalog_tie_field()

    def __post_init__(self) -> None:
        _check_tie(self.tie)
        if self.w != TUNED:
            _nonneg("w", self.w)
        _nonneg("scale", self.scale)


class Dynamo(CatalogPolicy):
    """Dynamo's KV-router logit as a prefill instance sees it (queued prefill folded in; the
    decode term falls back to ``floor`` of the prefill blocks)."""

    name = "dynamo"
    formula = ("argmin trunc(scale * (w * prefill_tokens / block_size "
               "+ floor(prefill_tokens / block_size)))")
    source = (f"{_BLITZ}: router/src/policies/dynamo.rs (dynamo-q = DynamoQ), "
              "router/src/policies/dynamo/prefill.rs; after ai-dynamo/dynamo selector.rs")
    signals = ("router_queued", "hit_blocks", "block_size", "input_tokens")
    Params = DynamoParams

    def scores(self, view: Any) -> list[int | Fraction]:
        """Per-instance logits (truncated as the router does unless ``scale=0``)."""
        s = block_size(view)
        num = [self._wn * p + self._wd * s * (p // s) for p in prefill_tokens(view)]
        return self._finish(num, self._wd * s)

    def __init__(self, params: DynamoParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        if params.w == TUNED:  # resolved by tuning before any routing
            self._wn, self._wd = 0, 0
            return
        w = Fraction(params.w)
        self._wn, self._wd = w.numerator, w.denominator

    def _finish(self, num: list[int], den: int) -> list[int | Fraction]:
        """``trunc(scale * num / den)`` (exact, ``num >= 0``), or ``num / den`` for ``scale=0``."""
        if self.params.w == TUNED:  # both logits end here
            raise RuntimeError(
                f"{self.name}:w=tuned is not resolved: lmetric_theory.experiments.tuning."
                "resolve_policy(spec, workload, config) tunes w on the workload first")
        k = self.params.scale
        if k > 0:
            return [k * x // den for x in num]
        return [Fraction(x, den) for x in num]

    def choose(self, view: Any) -> int:
        return self._pick(self.scores(view), maximize=False)


class DynamoDeterministic(Dynamo):
    """The paper's plotted "Dynamo" curve: ``dynamo`` with deterministic selection (Dynamo's
    temperature-0 choice, the first minimum; no softmax sampling)."""

    name = "dynamo-deterministic"
    formula = ("argmin trunc(scale * (w * prefill_tokens / block_size "
               "+ floor(prefill_tokens / block_size))), first minimum (= dynamo:tie=rust)")
    source = (f"{_BLITZ}: router/src/policies/dynamo.rs (dynamo-q), router/Cargo.toml "
              "(default feature determinent-schedule); blitz-serving/MetricsTestRunner plotting: "
              "'dynamo-deterministic' -> 'Dynamo', sweep_test_robust.sh runs dynamo-q")


class DynamoPO(Dynamo):
    """Dynamo's KV-router logit as a decode instance sees it: the request's own new tokens
    (no queue) and real decode blocks (the request's new blocks + active blocks)."""

    name = "dynamo-po"
    formula = ("argmin trunc(scale * (w * new_tokens / block_size "
               "+ new_blocks + decode_blocks))")
    source = (f"{_BLITZ}: router/src/policies/dynamo.rs (dynamo-po-q = DynamoDecodeQ), "
              "router/src/policies/dynamo/decode.rs; after ai-dynamo/dynamo selector.rs")
    signals = ("router_all_tokens", "hit_blocks", "block_size", "input_tokens")

    def scores(self, view: Any) -> list[int | Fraction]:
        s = block_size(view)
        num = [self._wn * n + self._wd * s * (nb + d) for n, nb, d in
               zip(new_tokens(view), new_blocks(view), decode_blocks(view), strict=True)]
        return self._finish(num, self._wd * s)


@dataclass(frozen=True, slots=True)
class BailianParams:
    """Bailian: weights ``alpha`` (hit), ``beta`` (requests), ``gamma`` (tokens) and ``norm``.

    Defaults 0.7 / 0.15 / 0.15 are the authors' router's command-line defaults. ``norm``:
    ``listing`` = ``hit_pct``, ``1 - bs / max bs``, ``1 - all_tokens / max all_tokens`` (the DSL
    listing); ``minmax`` = each term min-max normalised over the instances, as the
    ``bailian.rs`` code does. ``tie`` has no effect (the choice is a weighted draw).

    ``alpha=tuned`` asks for the hit weight to be tuned on the workload before the run, as the
    authors tuned Company-X (``bailian-impl-00`` ... ``bailian-impl-10``: one weight swept over
    0, 0.1, ..., 1):
    :func:`lmetric_theory.experiments.tuning.resolve_policy` replaces it with the weight of
    :data:`lmetric_theory.experiments.tuning.BAILIAN_ALPHA_GRID` that gives the lowest mean
    TTFT and sets ``beta`` and ``gamma`` to share ``1 - alpha`` in the ratio given (1:1 by
    default, so ``(1 - alpha) / 2`` each, as the defaults 0.7 / 0.15 / 0.15 do); such a policy
    cannot route until then.
    """

    alpha: Fraction | str = dataclasses.field(default=Fraction(7, 10), metadata={"tunable": True})
    beta: Fraction = Fraction(3, 20)
    gamma: Fraction = Fraction(3, 20)
    norm: str = dataclasses.field(default="listing", metadata={"choices": ("listing", "minmax")})
    tie: str = catalog_tie_field()

    def __post_init__(self) -> None:
        _check_tie(self.tie)
        for k in ("alpha", "beta", "gamma"):
            if getattr(self, k) != TUNED:
                _nonneg(k, getattr(self, k))
        if self.alpha == TUNED and self.beta + self.gamma <= 0:
            raise ValueError("alpha=tuned: beta + gamma must be > 0 (they share 1 - alpha in "
                             "their ratio)")
        if self.norm not in ("listing", "minmax"):
            raise ValueError(f"norm: {self.norm!r} is not one of listing, minmax")


def _ratio(x: int, m: int) -> Fraction:
    """``x / m`` with ``0 / 0 = 0`` (every instance idle)."""
    return Fraction(x, m) if m else Fraction(0)


def _minmax_int(xs: Sequence[int], hi_is_good: bool) -> tuple[list[int], int]:
    """Min-max normalisation as integer numerators over ``max - min`` (all equal: 0 over 1)."""
    lo, hi = min(xs), max(xs)
    if hi == lo:
        return [0] * len(xs), 1
    return ([x - lo for x in xs] if hi_is_good else [hi - x for x in xs]), hi - lo


class Bailian(CatalogPolicy):
    """Alibaba Bailian's weighted random selection over cache hit, requests and tokens."""

    name = "bailian"
    formula = ("draw i with probability proportional to max(0, alpha * hit_pct "
               "+ beta * (1 - bs / max bs) + gamma * (1 - all_tokens / max all_tokens))")
    source = (f"{_BLITZ}: docs/dsl/policies.md (bailian-impl-q), "
              "router/src/scheduler/policies/bailian.rs")
    signals = ("hit_blocks", "block_size", "input_tokens", "router_inflight", "router_all_tokens")
    Params = BailianParams

    def __init__(self, params: BailianParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        if params.alpha == TUNED:  # resolved by tuning before any routing
            self._abg, self._d = (0, 0, 0), 1
            return
        a, b, g = (Fraction(x) for x in (params.alpha, params.beta, params.gamma))
        d = a.denominator * b.denominator * g.denominator
        self._abg = (int(a * d), int(b * d), int(g * d))
        self._d = d

    def integer_weights(self, view: Any) -> tuple[list[int], int]:
        """Sampling weights as integers over one positive denominator: ``(numerators, den)``."""
        if self.params.alpha == TUNED:
            raise RuntimeError(
                "bailian:alpha=tuned is not resolved: lmetric_theory.experiments.tuning."
                "resolve_policy(spec, workload, config) tunes alpha on the workload first")
        A, B, G = self._abg
        hit, bs, tok = hit_blocks(view), batch_size(view), all_tokens(view)
        if self.params.norm == "listing":
            t, s = int(view.input_tokens), block_size(view)
            # hit_pct = h*s/T; 1 - b/M = (M - b)/M; a term whose denominator is 0 is 0 or 1
            n0, d0 = ([h * s for h in hit], t) if t > 0 else ([0] * len(hit), 1)
            mb, mt = max(bs), max(tok)
            n1, d1 = ([mb - b for b in bs], mb) if mb else ([1] * len(bs), 1)
            n2, d2 = ([mt - a for a in tok], mt) if mt else ([1] * len(tok), 1)
        else:
            if int(view.input_tokens) <= 0:
                hit = [0] * len(hit)  # hit_pct of an empty prompt is 0
            n0, d0 = _minmax_int(hit, True)  # hit_pct's T and s cancel in min-max
            n1, d1 = _minmax_int(bs, False)
            n2, d2 = _minmax_int(tok, False)
        c0, c1, c2 = A * d1 * d2, B * d0 * d2, G * d0 * d1
        w = [max(c0 * x + c1 * y + c2 * z, 0) for x, y, z in zip(n0, n1, n2, strict=True)]
        return w, self._d * d0 * d1 * d2

    def weights(self, view: Any) -> list[Fraction]:
        """Per-instance sampling weights (exact, >= 0)."""
        w, den = self.integer_weights(view)
        return [Fraction(x, den) for x in w]

    def choose(self, view: Any) -> int:
        w, _ = self.integer_weights(view)
        total = sum(w)
        if total <= 0:
            return 0  # the router's weighted_pick falls back to the first instance
        u = Fraction(float(self.rng.random()))  # exact binary value of the uniform draw
        r = u.numerator * total  # r and the weights below are scaled by u.denominator
        ud = u.denominator
        for i, x in enumerate(w):
            if r <= x * ud:
                return i
            r -= x * ud
        return len(w) - 1


@dataclass(frozen=True, slots=True)
class AibrixParams:
    """AIBrix prefix-cache routing: ``imbalance`` (requests, default 8) and ``std_factor``
    (default 1) of the threshold ``mean bs + std_factor * std bs``."""

    imbalance: int = 8
    std_factor: Fraction = Fraction(1)
    tie: str = catalog_tie_field()

    def __post_init__(self) -> None:
        _check_tie(self.tie)
        _nonneg("imbalance", self.imbalance)
        _nonneg("std_factor", self.std_factor)


def _below_threshold(bs: Sequence[int], factor: Fraction) -> list[bool]:
    """``bs_i <= mean(bs) + factor * std(bs)`` exactly (sample std, n - 1; 0 for n <= 1).

    With ``S = sum(bs)`` and ``d_i = n * bs_i - S``: ``d_i <= 0`` or
    ``d_i**2 * (n - 1) * fd**2 <= fn**2 * sum_j d_j**2`` (``factor = fn / fd``).
    """
    n, S = len(bs), sum(bs)
    d = [n * b - S for b in bs]
    if n <= 1:
        return [x <= 0 for x in d]
    q = sum(x * x for x in d)
    fn, fd = factor.numerator, factor.denominator
    rhs = fn * fn * q
    return [x <= 0 or x * x * (n - 1) * fd * fd <= rhs for x in d]


class Aibrix(CatalogPolicy):
    """AIBrix's prefix-cache router as the authors port it: a load-imbalance gate, then the
    highest hit among instances at most one standard deviation above the mean load."""

    name = "aibrix"
    formula = ("C = {i: bs_i = min bs} if max bs - min bs > imbalance else all; "
               "among {i in C: bs_i <= mean bs + std_factor * std bs}: argmin (-hit_pct, bs); "
               "if that set is empty: argmax (-hit_pct, bs) over C")
    source = f"{_BLITZ}: docs/dsl/policies.md (aibrix-q), router/src/policies/aibrix.rs"
    signals = ("hit_blocks", "block_size", "input_tokens", "router_inflight")
    Params = AibrixParams

    def choose(self, view: Any) -> int:
        p = self.params
        bs = batch_size(view)
        lo, hi = min(bs), max(bs)
        cand = [i for i, b in enumerate(bs) if b == lo] if hi - lo > p.imbalance else list(range(len(bs)))
        below = _below_threshold(bs, Fraction(p.std_factor))
        # (-hit_pct, bs): hit_pct = hit_blocks * s / T orders like hit_blocks (T, s > 0)
        hit = hit_blocks(view) if int(view.input_tokens) > 0 else [0] * len(bs)
        key = [(-h, b) for h, b in zip(hit, bs, strict=True)]
        ok = [i for i in cand if below[i]]
        if ok:
            return self._pick(key, ok, maximize=False)
        return self._pick(key, cand, maximize=True)


@dataclass(frozen=True, slots=True)
class PrebleParams:
    """Preble: ``threshold`` on the matched fraction of the prompt (default 1/2)."""

    threshold: Fraction = Fraction(1, 2)
    tie: str = catalog_tie_field()

    def __post_init__(self) -> None:
        _check_tie(self.tie)
        if not 0 <= Fraction(self.threshold) <= 1:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")


class Preble(CatalogPolicy):
    """Preble's two-stage routing as the authors port it: follow a long cached prefix, else
    the lowest cost. The cost keeps the terms that can differ between instances (see
    ``docs/policies.md``: the sliding-window histogram term is the same for every instance in
    the authors' router and is dropped)."""

    name = "preble"
    formula = ("among {i: hit_blocks * block_size / T > threshold}: argmax hit_blocks; "
               "if that set is empty: argmin new_tokens + all_tokens - bonus, "
               "bonus = floor(hit_pct * T / 2) if hit_pct > 1/2 else 0")
    source = (f"{_BLITZ}: docs/dsl/policies.md (preble-q), router/src/policies/preble/mod.rs, "
              "router/src/policies/dsl_runtime.rs (preble_cost)")
    signals = ("hit_blocks", "block_size", "input_tokens", "router_all_tokens")
    Params = PrebleParams

    def costs(self, view: Any) -> list[int]:
        """The stage-two cost per instance, tokens (``bonus = floor(hit_blocks * s / 2)``,
        which is ``floor(hit_pct * T / 2)``, when ``hit_pct > 1/2``)."""
        s, t = block_size(view), int(view.input_tokens)
        return [n + a - ((h * s) // 2 if 2 * h * s > t > 0 else 0) for n, a, h in
                zip(new_tokens(view), all_tokens(view), hit_blocks(view), strict=True)]

    def choose(self, view: Any) -> int:
        s, t = block_size(view), max(int(view.input_tokens), 1)
        hb = hit_blocks(view)
        thr = Fraction(self.params.threshold)
        tn, td = thr.numerator, thr.denominator
        ok = [i for i, h in enumerate(hb) if h * s * td > tn * t]
        if ok:
            return self._pick(hb, ok, maximize=True)
        return self._pick(self.costs(view), maximize=False)


@dataclass(frozen=True, slots=True)
class MostHitLoadParams:
    """llm-d scorer weights (defaults ``w_hit=10``, ``w_load=1``, ``w_kv=1``), the load-aware
    queue threshold ``T`` (128 requests) and the router's integer ``scale`` (1000)."""

    w_hit: Fraction = Fraction(10)
    w_load: Fraction = Fraction(1)
    w_kv: Fraction = Fraction(1)
    T: int = 128
    scale: int = 1000
    tie: str = catalog_tie_field()

    def __post_init__(self) -> None:
        _check_tie(self.tie)
        for k in ("w_hit", "w_load", "w_kv", "scale"):
            _nonneg(k, getattr(self, k))
        if self.T < 1:
            raise ValueError(f"T must be >= 1, got {self.T}")


def _load_aware(w: int, T: int) -> Fraction:
    """llm-d ``load-aware-scorer``: 1/2 when nothing waits, else ``(1 - min(w, T) / T) / 2``."""
    return Fraction(1, 2) if w == 0 else Fraction(1, 2) * (1 - Fraction(min(w, T), T))


class MostHitLoad(CatalogPolicy):
    """llm-d precise prefix-cache scorer + load-aware scorer."""

    name = "most-hit-load"
    formula = ("argmax trunc(scale * (w_hit * (hit_blocks - min hit) / (max hit - min hit) "
               "+ w_load * load_aware(waiting, T)))")
    source = f"{_BLITZ}: docs/dsl/policies.md (most-hit-load-q), router/src/policies/llm_d/most_hit_load.rs"
    signals = ("hit_blocks", "waiting")
    Params = MostHitLoadParams
    with_kv: ClassVar[bool] = False

    def __init__(self, params: MostHitLoadParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        ws = [Fraction(params.w_hit), Fraction(params.w_load), Fraction(params.w_kv)]
        d = ws[0].denominator * ws[1].denominator * ws[2].denominator
        self._w = tuple(int(w * d) for w in ws)
        self._d = d

    def scores(self, view: Any) -> list[int | Fraction]:
        """Per-instance score (truncated as the router does unless ``scale=0``)."""
        p = self.params
        Wh, Wl, Wk = self._w
        T = p.T
        nh, dh = _minmax_int(hit_blocks(view), True)
        # load_aware(w, T) = lw / (2T): lw = T when nothing waits, else T - min(w, T)
        lw = [T if w == 0 else T - min(w, T) for w in waiting(view)]
        if self.with_kv:
            nk, dk = _minmax_int(all_tokens(view), False)
        else:
            nk, dk = [0] * len(lw), 1
        # score = num / den with den = d * dh * 2T * dk
        ch, cl, ck = Wh * 2 * T * dk, Wl * dh * dk, Wk * dh * 2 * T
        num = [ch * h + cl * x + ck * k for h, x, k in zip(nh, lw, nk, strict=True)]
        den = self._d * dh * 2 * T * dk
        if p.scale > 0:
            return [p.scale * x // den for x in num]
        return [Fraction(x, den) for x in num]

    def choose(self, view: Any) -> int:
        return self._pick(self.scores(view), maximize=True)


class MostHitLoadActive(MostHitLoad):
    """llm-d precise prefix-cache + load-aware + KV-utilisation scorers."""

    name = "most-hit-load-active"
    formula = ("argmax trunc(scale * (w_hit * (hit_blocks - min hit) / (max hit - min hit) "
               "+ w_load * load_aware(waiting, T) "
               "+ w_kv * (max all_tokens - all_tokens) / (max all_tokens - min all_tokens)))")
    source = (f"{_BLITZ}: docs/dsl/policies.md (most-hit-load-active-q), "
              "router/src/policies/llm_d/most_hit_load_active.rs")
    signals = ("hit_blocks", "waiting", "router_all_tokens")
    with_kv = True


#: Every catalog policy class, in the order of ``docs/policies.md``.
BASELINE_POLICIES: tuple[type[CatalogPolicy], ...] = (
    VllmV1,
    Dynamo,
    DynamoDeterministic,
    DynamoPO,
    Bailian,
    Aibrix,
    Preble,
    MostHit,
    LeastWaiting,
    LeastBatch,
    LeastActive,
    LeastTokenLoad,
    MostHitLoad,
    MostHitLoadActive,
    BoundedMostHit,
    LeastWaitToken,
)


def register_baselines(register: Callable[[type[Policy]], Any] = register_policy) -> None:
    """Register every class of :data:`BASELINE_POLICIES` with ``register``."""
    for cls in BASELINE_POLICIES:
        register(cls)
