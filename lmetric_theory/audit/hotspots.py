"""Hot prefix classes in a replayed workload: the audit report's ``hotspots`` list.

The replay's snapshot log says, per decision, which request was routed and how many of its
prompt tokens each instance had cached; the workload gives the request's leading block hash
(its class). :class:`~lmetric_theory.detector.hotspot.HotspotMonitor` runs over the decisions
in order (detect only: the replay was routed by the product), and each class that raised
phase 1 becomes one entry with the keys ``class``, ``share``, ``cached_instances``,
``phase1_decision``, ``phase2_decision``, ``condition_holds`` and ``mitigation``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmetric_theory.detector.hotspot import HotspotFinding, HotspotMonitor

__all__ = ["class_ids", "hotspot_findings", "hotspots_report"]


def class_ids(workload: Any, requests: np.ndarray, lead_blocks: int = 1) -> np.ndarray:
    """Class of each routed request, shape (D,): the hash of its block ``lead_blocks``
    (1-based), which identifies its first ``lead_blocks`` blocks (hashes are
    prefix-consistent); -1 for a prompt with fewer blocks."""
    if lead_blocks < 1:
        raise ValueError(f"lead_blocks must be >= 1, got {lead_blocks}")
    offs = np.asarray(workload.hash_offsets)
    ids = np.asarray(workload.hash_ids)
    req = np.asarray(requests, dtype=np.int64)
    start, end = offs[req], offs[req + 1]
    out = np.full(req.shape[0], -1, dtype=np.int64)
    has = end - start >= lead_blocks
    out[has] = ids[start[has] + lead_blocks - 1]
    return out


def hotspot_findings(
    workload: Any,
    log: Any,
    *,
    prefill_offset: float = 0.0,
    batch_offset: float = 1.0,
    p_definition: str = "uncached",
    b_definition: str = "running",
    window: int = 200,
    min_decisions: int = 50,
    confirm_factor: int = 2,
    lead_blocks: int = 1,
) -> tuple[HotspotFinding, ...]:
    """Run the two-phase monitor over a replay's snapshot log.

    Parameters
    ----------
    workload : Workload
        The replayed requests (block hashes give the classes).
    log : SnapshotLog
        The replay's per-decision log (``request``, ``input_tokens``, ``uncached``,
        ``queued``, ``running``, ``waiting``; shapes (D,) and (D, N)).
    prefill_offset, batch_offset : float
        ``p0``, ``b0`` of the product score.
    p_definition, b_definition : str
        ``P`` (``uncached`` or ``queued+uncached``) and ``B`` (``running`` or ``in-flight``).
    window, min_decisions, confirm_factor : int
        Monitor settings (see :class:`HotspotMonitor`).
    lead_blocks : int
        Leading blocks that define a class (1: the first block hash). An instance holds the
        class when it has at least ``lead_blocks`` of the prompt's blocks cached.

    Returns
    -------
    tuple of HotspotFinding
        One per class that raised phase 1, in order of first alarm.
    """
    unc = np.asarray(log.uncached, dtype=np.int64)
    if unc.ndim != 2 or unc.shape[0] == 0:
        return ()
    n = unc.shape[1]
    if n < 2:
        return ()
    P = unc + np.asarray(log.queued, dtype=np.int64) if p_definition == "queued+uncached" else unc
    B = np.asarray(log.running, dtype=np.int64)
    if b_definition in ("in-flight", "in_flight"):
        B = B + np.asarray(log.waiting, dtype=np.int64)
    bs = int(getattr(workload, "block_size", 1) or 1)
    cached = np.asarray(log.input_tokens, dtype=np.int64)[:, None] - unc
    hits = cached > (lead_blocks - 1) * bs
    mon = HotspotMonitor(n, window=window, min_decisions=min(min_decisions, window),
                         confirm_factor=confirm_factor, p0=float(prefill_offset),
                         b0=float(batch_offset), mitigate=False)
    return mon.fit(class_ids(workload, log.request, lead_blocks), hits, P, B).findings


def hotspots_report(findings: tuple[HotspotFinding, ...]) -> list[dict[str, Any]]:
    """The report's ``hotspots`` list (JSON-ready dicts with the documented keys)."""
    return [f.to_dict() for f in findings]
