"""Replay every instance choice of one routing decision in forked simulators.

The rule (what :func:`fork_decision` measures)
----------------------------------------------
For a decision ``d`` taken at time ``t_d`` (the arrival of request ``r_d``):

1. **Branches.** The simulator, stopped right before ``d``, is forked ``N + 1`` times.
   Branch ``c`` (``c = 0..N-1``) forces ``d`` onto instance ``c``; every later request is
   routed by the policy under study, as in the original run. Branch ``A'`` (the A-A
   branch) forces the policy's own choice again, with the policy's random generator
   re-seeded, so it differs from branch ``chosen`` only where the policy draws random
   numbers (e.g. ``tie=random``); with a deterministic policy it is the same run.
2. **Affected requests.** ``A(d)`` = the requests with decision index ``>= d`` that arrive
   at or before ``t_d + horizon_s``, in arrival order. In closed loop (sessions whose later
   turns wait for earlier ones, or a concurrency cap) the set and its order are those of
   the original run (its actual arrivals and decision order), and each branch measures
   them at the arrivals *it* gives them: a later turn arrives when its previous turn
   completes in that branch plus its think time, and a session is admitted when a slot
   frees in that branch (the pending turns are part of the forked simulator's state). A
   TTFT is always counted from the branch's own arrival.
3. **Re-convergence.** Among the requests of ``A(d)`` after ``r_d``, find the first run of
   ``converge_k`` consecutive requests that every one of the ``N`` branches routed to the
   same instance with the same TTFT (bit-equal). If there is one, ``A(d)`` is cut right
   before that run: the branches have re-converged, and later differences are not
   attributed to ``d``. ``converge_k = 0`` disables the cut. (A run already visible at
   ``t_d + horizon_s / 2`` lets the replay skip the requests after it; the cut is the same.)
4. **Cost.** Every branch runs until all requests of the (possibly cut) ``A(d)`` have
   their first token (the same stop time ``t_stop`` for every branch). A branch's cost is
   the sum of their TTFTs (seconds). Reported beside it: the sum of the TPOTs (seconds per
   token) of the affected requests that have finished by ``t_stop`` in every branch
   (one-token outputs have none), so all branches sum over the same requests.

Harm and regret are derived from the costs by the caller
(:mod:`lmetric_theory.experiments.counterfactual.study`).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from lmetric_theory.policies import Policy
from lmetric_theory.sim import Simulator

__all__ = ["DecisionForks", "ForkTask", "fork_decision", "reseed_policy", "run_fork_task"]


@dataclass(frozen=True, slots=True)
class DecisionForks:
    """The ``N`` branches of one decision (and its A-A branch), measured by the rule above.

    Attributes
    ----------
    decision : int
        Decision index.
    request : int
        Index of the routed request in the workload.
    time_s : float
        Decision time, seconds.
    chosen : int
        The policy's own choice (instance).
    affected : int
        Requests in ``A(d)`` after the re-convergence cut (>= 1).
    converged : bool
        Whether the re-convergence cut applied (``False``: the horizon ended ``A(d)``).
    ttft_cost_s : tuple of float, length N
        Summed TTFT of ``A(d)`` per branch (branch ``c`` sent ``d`` to instance ``c``), seconds.
    tpot_cost_s : tuple of float, length N
        Summed TPOT per branch of the affected multi-token requests finished in every
        branch by the stop time, seconds per token.
    aa_ttft_cost_s, aa_tpot_cost_s : float
        The same for the A-A branch (the chosen instance again, policy re-seeded).
    """

    decision: int
    request: int
    time_s: float
    chosen: int
    affected: int
    converged: bool
    ttft_cost_s: tuple[float, ...]
    tpot_cost_s: tuple[float, ...]
    aa_ttft_cost_s: float
    aa_tpot_cost_s: float

    @property
    def harm_s(self) -> float:
        """Chosen branch's TTFT cost minus the best branch's, seconds (>= 0)."""
        return self.ttft_cost_s[self.chosen] - min(self.ttft_cost_s)

    @property
    def aa_diff_s(self) -> float:
        """A-A branch minus chosen branch TTFT cost, seconds (0 for deterministic policies)."""
        return self.aa_ttft_cost_s - self.ttft_cost_s[self.chosen]

    def cost_of(self, instance: int) -> float:
        """TTFT cost of the branch sending ``d`` to ``instance``, seconds."""
        return self.ttft_cost_s[int(instance)]


def reseed_policy(policy: Policy, seed: int) -> None:
    """Give ``policy`` (and any policy it wraps) one fresh generator seeded with ``seed``.

    Wrapped policies (attributes that are themselves :class:`Policy`) share the new
    generator, as they shared the old one.
    """
    rng = np.random.default_rng([int(seed), 0xAA])
    policy.rng = rng
    for v in vars(policy).values():
        if isinstance(v, Policy):
            v.rng = rng


def _convergence_cut(inst: np.ndarray, ttft: np.ndarray, k: int) -> int | None:
    """Position in ``A(d)`` where a run of ``k`` agreeing requests (after the first) starts.

    ``inst`` and ``ttft`` have shape (branches, len(A(d))): each branch's instance and TTFT
    of every affected request.
    """
    if k <= 0 or inst.shape[1] <= k:
        return None
    inst, ttft = inst[:, 1:], ttft[:, 1:]
    same = (inst == inst[0]).all(axis=0) & (inst[0] >= 0)
    same &= np.isfinite(ttft[0]) & (ttft == ttft[0]).all(axis=0)
    run = 0
    for j, ok in enumerate(same.tolist()):
        run = run + 1 if ok else 0
        if run == k:
            return j - k + 2  # position in A(d) of the run's first request
    return None


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for one decision's forks.

    Forking copies many small containers, and each copy triggers collections that walk the
    whole heap (in a forked worker, the parent's too): with the collector on, a decision
    costs about 1.6x as much. The branches' cyclic garbage is bounded by one decision and
    is collected once the collector runs again.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _advance(sim: Simulator, t: float, idx: np.ndarray) -> tuple[np.ndarray, ...]:
    """Run ``sim`` to time ``t``; the outcomes of the requests ``idx`` (:meth:`Simulator.outcomes`)."""
    sim.advance(until_time=t)
    return sim.outcomes(idx)


def fork_decision(
    sim: Simulator,
    decision: int,
    *,
    request: int,
    chosen: int,
    arrival_s: np.ndarray,
    horizon_s: float,
    converge_k: int = 0,
    aa_seed: int = 1,
    decision_requests: np.ndarray | None = None,
) -> DecisionForks:
    """Replay every instance choice of ``decision`` (see the module docstring for the rule).

    Parameters
    ----------
    sim : Simulator
        Stopped right before ``decision`` (``sim.decisions_made == decision``); left as is.
    decision : int
        Decision index.
    request : int
        Its request index in the workload.
    chosen : int
        The policy's choice at this decision in the original run.
    arrival_s : np.ndarray, shape (n,), float64
        Arrival times of the workload, seconds (non-decreasing).
    horizon_s : float
        Arrivals up to ``t_d + horizon_s`` count as affected, seconds (>= 0).
    converge_k : int
        Consecutive agreeing requests that end ``A(d)`` early (0: never).
    aa_seed : int
        Seed of the A-A branch's re-seeded policy generator.
    decision_requests : np.ndarray of int, optional
        Closed loop: the request of every decision of the original run, in decision order,
        with ``arrival_s`` that run's actual arrivals (not sorted by request index). ``A(d)``
        is then the requests of decisions ``>= d`` arriving by ``t_d + horizon_s``.

    Returns
    -------
    DecisionForks
    """
    if sim.decisions_made != decision:
        raise ValueError(f"the simulator is at decision {sim.decisions_made}, not {decision}")
    n_inst = sim.config.n_instances
    if not 0 <= chosen < n_inst:
        raise ValueError(f"chosen instance {chosen} out of range 0..{n_inst - 1}")
    t_d = float(arrival_s[request])
    if decision_requests is None:
        hi = int(np.searchsorted(arrival_s, t_d + horizon_s, side="right"))
        idx = np.arange(request, max(hi, request + 1))
    else:
        later = np.asarray(decision_requests[decision:], dtype=np.int64)
        keep = arrival_s[later] <= t_d + horizon_s
        keep[0] = True
        idx = later[keep]
    with _gc_paused():
        branches = []
        for c in range(n_inst):
            f = sim.fork()
            f.force(decision, c)
            branches.append(f)
        aa = sim.fork()
        reseed_policy(aa.policy, aa_seed)
        aa.force(decision, chosen)
        everyone = [*branches, aa]

        # Shortcut: at mid-horizon, look for a run already visible; if there is one, requests
        # after it need not be simulated (the run itself is kept, so the cut below, made on
        # the final outcomes, is the same as without the shortcut).
        t_mid = t_d + horizon_s / 2.0
        if converge_k > 0:
            mid = [_advance(f, t_mid, idx) for f in branches]
            cut = _convergence_cut(np.stack([m[0] for m in mid]), np.stack([m[1] for m in mid]),
                                   converge_k)
            if cut is not None:
                idx = idx[:cut + converge_k]
        t = t_d + horizon_s
        step = max(1.0, horizon_s / 4.0)
        while True:  # every branch until all affected requests have their first token
            t += step
            step *= 2.0
            outs = [_advance(f, t, idx) for f in everyone]
            if all(bool(np.isfinite(o[1]).all()) for o in outs):
                break
        del branches, aa, everyone, f  # freed before the collector runs again
    inst = np.stack([o[0] for o in outs])
    ttft_m = np.stack([o[1] for o in outs])
    cut = _convergence_cut(inst[:n_inst], ttft_m[:n_inst], converge_k)
    converged = cut is not None
    if cut is None:
        cut = idx.size
    ttft = ttft_m[:, :cut].sum(axis=1).tolist()
    done = np.logical_and.reduce([np.isfinite(o[3][:cut]) for o in outs])
    tpot = [float(np.nansum(o[2][:cut][done])) for o in outs]
    idx = idx[:cut]
    return DecisionForks(
        decision=int(decision), request=int(request), time_s=t_d, chosen=int(chosen),
        affected=int(idx.size), converged=converged, ttft_cost_s=tuple(ttft[:n_inst]),
        tpot_cost_s=tuple(tpot[:n_inst]), aa_ttft_cost_s=ttft[n_inst], aa_tpot_cost_s=tpot[n_inst],
    )


@dataclass(frozen=True, slots=True)
class ForkTask:
    """A batch of sampled decisions for one executor call (picklable).

    Attributes
    ----------
    sim : Simulator
        A fork stopped at or before the first decision of the batch.
    decisions, requests, chosen : tuple of int
        Sampled decisions (increasing), their request indices and the policy's choices.
    arrival_s : np.ndarray, shape (n,), float64
        Arrival times, seconds.
    horizon_s : float
        See :func:`fork_decision`.
    converge_k : int
        See :func:`fork_decision`.
    aa_seed : int
        See :func:`fork_decision`.
    decision_requests : np.ndarray or None
        See :func:`fork_decision` (closed loop only).
    """

    sim: Simulator
    decisions: tuple[int, ...]
    requests: tuple[int, ...]
    chosen: tuple[int, ...]
    arrival_s: np.ndarray
    horizon_s: float
    converge_k: int
    aa_seed: int
    decision_requests: np.ndarray | None = None


def run_fork_task(task: ForkTask) -> list[DecisionForks]:
    """Advance the task's simulator through its decisions, forking at each (executor entry)."""
    import lmetric_theory.policies.guarded  # noqa: F401  (registers guarded-lmetric in workers)

    sim = task.sim
    out = []
    for d, r, c in zip(task.decisions, task.requests, task.chosen, strict=True):
        sim.advance(until_decision=d)
        out.append(fork_decision(sim, d, request=r, chosen=c, arrival_s=task.arrival_s,
                                 horizon_s=task.horizon_s, converge_k=task.converge_k,
                                 aa_seed=task.aa_seed + d,
                                 decision_requests=task.decision_requests))
    return out
