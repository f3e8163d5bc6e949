"""Guard any Python routing function with the detector: :class:`Guard`.

Example (a router that takes a :class:`~lmetric_theory.Snapshot` and returns an index)::

    from lmetric_theory import Detector, Guard, LinearReference

    guard = Guard(Detector(LinearReference.fixed(40.0)), my_router, on_flag="mitigate")
    instance = guard(snapshot)          # my_router's pick, or the mitigation's
    guard.stats()                       # checks, flagged, disagreements, by kind

Routers with another signature pass ``snapshot_fn`` which builds the snapshot from the
same arguments: ``Guard(det, route, snapshot_fn=lambda req, pool: Snapshot(...))``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmetric_theory.core.kernel import product_scores
from lmetric_theory.detector import (
    DEGENERATE_KINDS,
    FINDING_KINDS,
    Detector,
    Finding,
    MitigationKind,
    Snapshot,
    Verdict,
)
from lmetric_theory.detector.hotspot import HotspotFinding, HotspotMonitor
from lmetric_theory.detector.mitigation import mitigated_choice as _mitigated_choice
from lmetric_theory.detector.router_state import RouterStateMonitor

__all__ = ["ON_FLAG", "Guard", "GuardStats", "PrometheusMetrics"]

logger = logging.getLogger(__name__)

#: What a guard does with a flagged decision.
ON_FLAG: tuple[str, ...] = ("log", "count", "fallback", "mitigate")


@dataclass(frozen=True, slots=True)
class GuardStats:
    """Counters of a :class:`Guard` since creation (or the last ``reset``).

    Attributes
    ----------
    checks : int
        Decisions checked.
    flagged : int
        Decisions with at least one finding of an acted-on kind.
    disagreements : int
        Decisions where the product and the linear reference pick different instances.
    overridden : int
        Decisions where the guard returned another instance than the router's.
    router_mismatch : int
        Decisions where the router's pick differs from the product argmin the detector
        computed (a hint that the router scores differently than assumed).
    by_kind : dict
        Findings per kind (all of :data:`~lmetric_theory.detector.FINDING_KINDS`).
    """

    checks: int
    flagged: int
    disagreements: int
    overridden: int
    router_mismatch: int
    by_kind: dict[str, int] = field(default_factory=dict)


class PrometheusMetrics:
    """Prometheus counters for a :class:`Guard` (needs the ``prometheus`` extra).

    Counters (with ``namespace`` prefix, default ``lmetric``):
    ``<ns>_guard_checks_total``, ``<ns>_guard_disagreements_total``,
    ``<ns>_guard_overrides_total``, ``<ns>_guard_findings_total{kind}`` for every finding
    kind and ``<ns>_guard_degenerate_total{kind}`` for zero_prefill, idle_tie, exact_tie.

    Parameters
    ----------
    registry : prometheus_client.CollectorRegistry, optional
        Where to register (default: the global registry).
    namespace : str
        Metric name prefix.

    Raises
    ------
    ImportError
        When ``prometheus_client`` is not installed (install ``lmetric-theory[prometheus]``).
    """

    def __init__(self, registry: Any = None, *, namespace: str = "lmetric") -> None:
        try:
            import prometheus_client as pc
        except ImportError as exc:  # pragma: no cover - exercised only without the extra
            raise ImportError(
                "PrometheusMetrics needs prometheus_client; install the 'prometheus' extra: "
                "pip install 'lmetric-theory[prometheus]'"
            ) from exc
        kw: dict[str, Any] = {"namespace": namespace, "subsystem": "guard"}
        if registry is not None:
            kw["registry"] = registry
        self.checks = pc.Counter("checks", "Routing decisions checked", **kw)
        self.disagreements = pc.Counter(
            "disagreements", "Decisions where product and linear reference differ", **kw
        )
        self.overrides = pc.Counter(
            "overrides", "Decisions where the guard replaced the router's pick", **kw
        )
        self.findings = pc.Counter("findings", "Findings by kind", ["kind"], **kw)
        self.degenerate = pc.Counter(
            "degenerate", "Degenerate product-score cases by kind", ["kind"], **kw
        )
        # create the labelled children up front so every series exists from the start
        self._findings = {k: self.findings.labels(kind=k) for k in FINDING_KINDS}
        self._degenerate = {k: self.degenerate.labels(kind=k) for k in DEGENERATE_KINDS}

    def record(self, verdict: Verdict, overridden: bool) -> None:
        """Count one checked decision."""
        self.checks.inc()
        if verdict.disagrees:
            self.disagreements.inc()
        if overridden:
            self.overrides.inc()
        for f in verdict.findings:
            self._findings[f.kind].inc()
            deg = self._degenerate.get(f.kind)
            if deg is not None:
                deg.inc()


class Guard:
    """Wrap a routing function; check every decision; act on flagged ones.

    Parameters
    ----------
    detector : Detector
        The detector that checks each decision.
    route_fn : callable
        The router. Called with the guard's arguments; returns the chosen instance as
        an index into the snapshot, or as an instance id when the snapshot has
        ``instance_ids`` (the guard then returns an id too).
    on_flag : {"log", "count", "fallback", "mitigate"}
        For a flagged decision: ``"log"`` keeps the router's pick and logs a warning
        (logger ``lmetric_theory.detector.guard``); ``"count"`` keeps it silently;
        ``"fallback"`` returns the linear reference's pick; ``"mitigate"`` returns the
        pick of the verdict's mitigation (:meth:`Detector.mitigated_choice`).
    kinds : iterable of str, optional
        Finding kinds that count as a flag (default: all).
    snapshot_fn : callable, optional
        Builds the :class:`Snapshot` from the guard's arguments; default: the single
        positional argument is the snapshot.
    metrics : PrometheusMetrics, optional
        Also count into Prometheus.
    hotspot : HotspotMonitor, optional
        Also watch hot prefix classes (:mod:`lmetric_theory.detector.hotspot`); needs
        ``class_fn``. With ``on_flag`` ``"fallback"`` or ``"mitigate"``, a request of a
        confirmed hot class goes to the product's pick among the instances that were not
        hot at confirmation; its findings are :attr:`hotspot_findings`.
    class_fn : callable, optional
        ``class_fn(*args, **kwargs) -> (class_id, hit)``: the request's prefix class (its
        leading block hash) and a boolean array, shape (N,), True where the instance caches
        the class's leading blocks.
    router_state : RouterStateMonitor, optional
        Also watch the router's own state (``replica_skew``, ``herding``, ``stale_index``;
        :mod:`lmetric_theory.detector.router_state`); needs ``state_fn``. With ``on_flag``
        ``"fallback"`` or ``"mitigate"``, while a finding is active its mitigation replaces
        the pick (counter sync, scaled offsets, a random choice among near-ties; a shorter
        TTL is advisory and leaves the pick); its findings are :attr:`router_state_findings`.
    state_fn : callable, optional
        ``state_fn(*args, **kwargs) -> dict``: the keyword arguments of
        :meth:`RouterStateMonitor.observe` besides the snapshot's ``P``, ``B`` and the pick
        (``time_s`` required; ``replica``, ``true_prefill``, ``true_batch``,
        ``predicted_cached``, ``actual_cached`` as the router knows them).
    rng : numpy.random.Generator, optional
        The draws of ``random_near_ties`` (default: seeded with 0).
    """

    def __init__(
        self,
        detector: Detector,
        route_fn: Callable[..., Any],
        *,
        on_flag: str = "fallback",
        kinds: Any = None,
        snapshot_fn: Callable[..., Snapshot] | None = None,
        metrics: PrometheusMetrics | None = None,
        hotspot: HotspotMonitor | None = None,
        class_fn: Callable[..., tuple[int, Any]] | None = None,
        router_state: RouterStateMonitor | None = None,
        state_fn: Callable[..., dict[str, Any]] | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        if not isinstance(detector, Detector):
            raise ValueError(f"detector: expected a Detector, got {type(detector).__name__}")
        if not callable(route_fn):
            raise ValueError("route_fn: not callable")
        if on_flag not in ON_FLAG:
            raise ValueError(f"on_flag: unknown {on_flag!r}; valid: {', '.join(ON_FLAG)}")
        act = frozenset(FINDING_KINDS if kinds is None else kinds)
        unknown = sorted(act - set(FINDING_KINDS))
        if unknown:
            raise ValueError(f"kinds: unknown {unknown[0]!r}; valid: {', '.join(FINDING_KINDS)}")
        self.detector = detector
        self.route_fn = route_fn
        self.on_flag = on_flag
        self.kinds = act
        self.snapshot_fn = snapshot_fn
        self.metrics = metrics
        if (hotspot is None) != (class_fn is None):
            raise ValueError("hotspot and class_fn: give both, or neither")
        self.hotspot = hotspot
        self.class_fn = class_fn
        if (router_state is None) != (state_fn is None):
            raise ValueError("router_state and state_fn: give both, or neither")
        self.router_state = router_state
        self.state_fn = state_fn
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.last_verdict: Verdict | None = None
        self.reset()

    def reset(self) -> None:
        """Zero the counters (Prometheus counters are not touched)."""
        self._checks = 0
        self._flagged = 0
        self._disagreements = 0
        self._overridden = 0
        self._mismatch = 0
        self._by_kind = dict.fromkeys(FINDING_KINDS, 0)

    def stats(self) -> GuardStats:
        """Current counters."""
        return GuardStats(
            self._checks,
            self._flagged,
            self._disagreements,
            self._overridden,
            self._mismatch,
            dict(self._by_kind),
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Route one request: the router's pick, or the guard's replacement."""
        if self.snapshot_fn is None:
            if len(args) != 1 or kwargs or not isinstance(args[0], Snapshot):
                raise ValueError(
                    "Guard without snapshot_fn expects exactly one Snapshot argument"
                )
            snap = args[0]
        else:
            snap = self.snapshot_fn(*args, **kwargs)
        picked = self.route_fn(*args, **kwargs)
        index = self._index(snap, picked)
        verdict = self.detector.check(snap)
        self.last_verdict = verdict
        self._checks += 1
        if verdict.disagrees:
            self._disagreements += 1
        if index != verdict.product_choice:
            self._mismatch += 1
        chosen = index
        if verdict.findings:
            by_kind = self._by_kind
            acted = False
            for f in verdict.findings:
                by_kind[f.kind] += 1
                acted = acted or f.kind in self.kinds
            if acted:
                self._flagged += 1
                if self.on_flag == "fallback":
                    chosen = verdict.linear_choice
                elif self.on_flag == "mitigate":
                    chosen = self.detector.mitigated_choice(snap, verdict=verdict)
                elif self.on_flag == "log":
                    logger.warning(
                        "routing decision flagged: %s",
                        "; ".join(f"{f.kind}: {f.message}" for f in verdict.findings),
                    )
        if self.hotspot is not None:
            cls, hit = self.class_fn(*args, **kwargs)
            mask = self.hotspot.observe(int(cls), hit, snap.prefill_tokens, snap.batch_size)
            if (mask is not None and mask.any() and not mask[chosen]
                    and self.on_flag in ("fallback", "mitigate")):
                d = self.detector
                s = product_scores(snap.prefill_tokens, snap.batch_size, d.prefill_offset,
                                   d.batch_offset)
                chosen = int(np.flatnonzero(mask)[np.argmin(s[mask])])
        if self.router_state is not None:
            chosen = self._router_state(snap, chosen, self.state_fn(*args, **kwargs))
        overridden = chosen != index
        if overridden:
            self._overridden += 1
        if self.metrics is not None:
            self.metrics.record(verdict, overridden)
        if chosen == index:
            return picked
        if isinstance(picked, str) and snap.instance_ids is not None:
            return snap.instance_ids[chosen]
        return chosen

    @property
    def hotspot_findings(self) -> tuple[HotspotFinding, ...]:
        """Hot prefix classes found so far (empty without a hotspot monitor)."""
        return () if self.hotspot is None else self.hotspot.findings

    def _router_state(self, snap: Snapshot, chosen: int, state: dict[str, Any]) -> int:
        """Feed the router-state monitor; the active finding's mitigated pick, if any."""
        mon = self.router_state
        state = dict(state)
        time_s = state.pop("time_s")
        active = mon.observe(time_s, chosen, snap.prefill_tokens, snap.batch_size, **state)
        if not active or self.on_flag not in ("fallback", "mitigate"):
            return chosen
        m = mon.mitigation(active[0])
        if m.kind in (MitigationKind.NONE, MitigationKind.SHORTER_TTL):
            return chosen
        moved = _mitigated_choice(self.detector.settings, snap, m, rng=self.rng)
        mon.moved(moved)  # the lag window counts where the request really goes
        return moved

    @property
    def router_state_findings(self) -> tuple[Finding, ...]:
        """Router-state findings so far (empty without a router-state monitor)."""
        return () if self.router_state is None else self.router_state.findings

    @staticmethod
    def _index(snap: Snapshot, picked: Any) -> int:
        n = snap.n_instances
        if isinstance(picked, int) and not isinstance(picked, bool):
            if not 0 <= picked < n:
                raise ValueError(f"route_fn: returned index {picked} outside 0..{n - 1}")
            return picked
        if hasattr(picked, "__index__") and not isinstance(picked, str):
            return Guard._index(snap, int(picked))
        ids = snap.instance_ids
        if ids is None:
            raise ValueError(
                f"route_fn: returned {picked!r}, not an index, and the snapshot has no instance_ids"
            )
        try:
            return ids.index(str(picked))
        except ValueError:
            raise ValueError(f"route_fn: returned unknown instance id {picked!r}") from None
