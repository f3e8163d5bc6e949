"""Router state as deployed (theory results (m)-(o)): identities proved, the exact helpers
against brute force, and each result against a small self-contained discrete simulation
(router replicas with local counters, blind dispatches within a lag window, a stale or
forgetful cache index). The engine-level checks come with the simulator's replica options."""

from __future__ import annotations

import itertools
from collections import OrderedDict
from fractions import Fraction as F

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from lmetric_theory.theory.replicas import (
    REPLICA_SYMBOLS,
    blind_dispatches,
    derive_replicas,
    expected_spread,
    flip_blocks,
    flip_error,
    replica_view_differs,
    replica_view_margin,
    spread_two_ties,
)

S = REPLICA_SYMBOLS
Q_1, Q_2, u_1, u_2, R = (S[k] for k in ("Q_1", "Q_2", "u_1", "u_2", "R"))
P_1, P_2, B_1, B_2, p_0, b_0, lam = (S[k] for k in ("P_1", "P_2", "B_1", "B_2", "p_0", "b_0",
                                                     "lam"))
m, QPS, T, err, blk = S["m"], S["QPS"], S["T"], S["err"], S["blk"]


@pytest.fixture(scope="module")
def th():
    return derive_replicas()


@pytest.mark.parametrize("name", [i.name for i in derive_replicas().identities])
def test_identity_holds(th, name):
    (ident,) = [i for i in th.identities if i.name == name]
    assert sp.simplify(ident.lhs - ident.rhs) == 0


def test_results_by_hand(th):
    assert [r.item for r in th.results] == ["m", "n", "o"]
    assert all(r.statement and r.formulas for r in th.results)
    # the remainder vanishes at R = 1 and is a multiple of R - 1
    assert sp.simplify(th.replica_remainder.subs(R, 1)) == 0
    assert sp.simplify(sp.cancel(th.replica_remainder / (R - 1))).is_polynomial(R)
    # with u = p0 = 0 the replica's rate is Qbar/(Bbar + R b0): falls with R
    lr = th.lam_eff_replica.subs({u_1: 0, u_2: 0, p_0: 0})
    assert sp.simplify(lr - (Q_1 + Q_2) / (B_1 + B_2 + 2 * R * b_0)) == 0
    assert sp.simplify(th.lam_eff_limit - (u_1 + u_2 + 2 * p_0) / (2 * b_0)) == 0
    assert sp.simplify(th.herding_lag - R / ((R - 1) * QPS)) == 0
    assert sp.simplify(th.lam_matching_error - (P_2 + p_0) / (B_1 + b_0)) == 0
    # the product's flip error is larger (more tolerant) than linear's exactly when the
    # erring instance is the less loaded one and lam is below the matching rate
    vals = {P_1: 100, P_2: 900, B_1: 2, B_2: 6, p_0: 0, b_0: 1}
    assert th.flip_error_gap.subs({**vals, lam: 10}) > 0
    assert th.flip_error_gap.subs({**vals, lam: 400}) < 0


# --------------------------------------------------------------- (m) against brute force


def _local_scores(q, u, b, r, p0, b0):
    """Brute force: the replica's own scores from its shares, in exact arithmetic."""
    return [(F(q[i], r) + u[i] + p0) * (F(b[i], r) + b0) for i in range(2)]


@settings(max_examples=300, deadline=None)
@given(
    q=st.tuples(st.integers(0, 4000), st.integers(0, 4000)),
    u=st.tuples(st.integers(0, 2000), st.integers(0, 2000)),
    b=st.tuples(st.integers(0, 40), st.integers(0, 40)),
    r=st.integers(1, 9),
    p0=st.sampled_from([F(0), F(1), F(7, 3)]),
    b0=st.sampled_from([F(1), F(1, 2), F(3)]),
)
def test_replica_view_matches_brute_force(q, u, b, r, p0, b0, th):
    g_bf = [(q[i] + u[i] + p0) * (b[i] + b0) for i in range(2)]
    l_bf = _local_scores(q, u, b, r, p0, b0)
    g, loc = replica_view_margin(q, u, b, r, p0, b0)
    assert g == g_bf[0] - g_bf[1]
    assert loc == r * r * (l_bf[0] - l_bf[1])
    assert replica_view_differs(q, u, b, r, p0, b0) == (
        (g_bf[0] < g_bf[1] and l_bf[0] > l_bf[1]) or (g_bf[0] > g_bf[1] and l_bf[0] < l_bf[1])
    )
    # the derived expressions give the same margins
    vals = {Q_1: q[0], Q_2: q[1], u_1: u[0], u_2: u[1], B_1: b[0], B_2: b[1], R: r,
            p_0: sp.Rational(p0.numerator, p0.denominator),
            b_0: sp.Rational(b0.numerator, b0.denominator)}
    assert th.replica_diff.subs(vals) == sp.Rational(loc.numerator, loc.denominator)
    assert bool(th.differs_condition.subs(vals)) == replica_view_differs(q, u, b, r, p0, b0)


def test_replica_view_can_differ_and_scaled_counters_restore_it():
    # a cached instance 1 (small u) with a longer queue: the global product balances to 2,
    # a replica with a quarter of the counters keeps the request on the cache
    q, u, b = (1000, 0), (100, 2000), (4, 1)
    glob1 = (1000 + 100) * 5 < 2000 * 2
    assert not glob1  # global: instance 2
    assert replica_view_differs(q, u, b, 4)
    assert not replica_view_differs(q, u, b, 1)
    # counters scaled by R: the replica's score is the global one (no flip for any R)
    for r in range(1, 9):
        scaled = _local_scores([r * x for x in q], u, [r * x for x in b], r, 0, 1)
        assert (scaled[0] < scaled[1]) == glob1


# -------------------------------------------------------- (m), (n): discrete simulation


def _lockstep_run(n_inst, r, steps, life, p0, b0, seed):
    """R replicas in lockstep: each step every replica routes one copy of the same request
    from its own counters (its own in-flight requests: queued tokens and batch), and learns
    nothing of the others' dispatches (a lag window of one step). Requests leave after
    ``life`` steps. Returns per step the replicas' choices and the global state seen."""
    rng = np.random.default_rng(seed)
    flights = [[] for _ in range(r)]  # per replica: (instance, tokens, leaves at)
    out = []
    for s in range(steps):
        u = [int(x) for x in rng.integers(0, 2000, n_inst)]
        for f in flights:
            f[:] = [x for x in f if x[2] > s]
        glob_q = [sum(t for f in flights for (i, t, _) in f if i == j) for j in range(n_inst)]
        glob_b = [sum(1 for f in flights for (i, _, _) in f if i == j) for j in range(n_inst)]
        picks = []
        for f in flights:
            lq = [sum(t for (i, t, _) in f if i == j) for j in range(n_inst)]
            lb = [sum(1 for (i, _, _) in f if i == j) for j in range(n_inst)]
            sc = [(lq[j] + u[j] + p0) * (lb[j] + b0) for j in range(n_inst)]
            picks.append(int(np.argmin(sc)))
        for f, j in zip(flights, picks, strict=True):
            f.append((j, u[j], s + life))
        out.append((picks, glob_q, glob_b, u))
    return out


@pytest.mark.parametrize("r", [1, 2, 4, 8])
def test_lockstep_replicas_route_like_the_derived_view_and_herd(r):
    """Result (m): the replicas' common choice is the argmin of (Q + R u + R p0)(B + R b0)
    on the global counters; it differs from the global product's exactly where
    replica_view_differs says (N = 2). Result (n): from the same state all R replicas pick
    the same instance, so each step's max-min load is R."""
    p0, b0 = 0, 1
    runs = _lockstep_run(2, r, 300, 5, p0, b0, seed=r)
    n_diff = 0
    for picks, gq, gb, u in runs:
        assert len(set(picks)) == 1  # herding: one choice for every replica
        loads = [picks.count(j) for j in range(2)]
        assert max(loads) - min(loads) == r
        equiv = [(gq[j] + r * u[j] + r * p0) * (gb[j] + r * b0) for j in range(2)]
        assert picks[0] == int(np.argmin(equiv))
        glob = [(gq[j] + u[j] + p0) * (gb[j] + b0) for j in range(2)]
        differs = replica_view_differs(gq, u, gb, r, p0, b0)
        if glob[0] != glob[1] and equiv[0] != equiv[1]:
            assert differs == (picks[0] != int(np.argmin(glob)))
        n_diff += differs
    if r == 1:
        assert n_diff == 0
    else:
        assert n_diff > 0  # the planted run reaches the region where the views disagree


def test_one_router_with_exact_counters_spreads_what_replicas_herd():
    """The imbalance R vs ceil(R/N) - floor(R/N): R identical requests on N empty
    identical instances, routed by one router counting each dispatch."""
    for r, n_inst in itertools.product(range(1, 9), (2, 3, 4)):
        b = [0] * n_inst
        for _ in range(r):
            j = int(np.argmin([(100 + 0) * (x + 1) for x in b]))
            b[j] += 1
        assert max(b) - min(b) == -(-r // n_inst) - r // n_inst
        herd = [r] + [0] * (n_inst - 1)  # the replicas' herd from the same state
        assert max(herd) - min(herd) == r


# ---------------------------------------------------------------- (n) against brute force


@pytest.mark.parametrize("r,mm", [(r, mm) for r in range(0, 7) for mm in range(1, 5)])
def test_expected_spread_matches_enumeration(r, mm):
    total = F(0)
    for picks in itertools.product(range(mm), repeat=r):
        loads = [picks.count(j) for j in range(mm)]
        total += max(loads) - min(loads)
    assert expected_spread(r, mm) == total / mm**r
    if mm == 2:
        assert spread_two_ties(r) == expected_spread(r, 2)
        if r >= 1:
            th = derive_replicas()
            assert th.spread_two.subs(R, r) == sp.Rational(spread_two_ties(r).numerator,
                                                          spread_two_ties(r).denominator)
    if r >= 1:
        n_same = sum(1 for p in itertools.product(range(mm), repeat=r) if len(set(p)) == 1)
        assert derive_replicas().herd_all_same.subs({R: r, m: mm}) == sp.Rational(n_same,
                                                                                   mm**r)


def test_spread_two_closed_form_beyond_enumeration():
    for r in range(1, 40):
        assert spread_two_ties(r) == expected_spread(r, 2)


def test_blind_dispatches_in_a_poisson_simulation():
    """Result (n) against a simulation: Poisson arrivals assigned to R replicas at random;
    for each decision count the other replicas' dispatches of the last T seconds. The mean
    is QPS T (R - 1)/R (within 5 standard errors of the simulated mean)."""
    rng = np.random.default_rng(7)
    qps, lag = 40.0, 0.2
    for r in (1, 2, 4, 8):
        times = np.cumsum(rng.exponential(1 / qps, 40_000))
        rep = rng.integers(0, r, times.size)
        lo = np.searchsorted(times, times - lag, side="left")
        counts = np.empty(times.size)
        for i in range(times.size):
            window = rep[lo[i]:i]
            counts[i] = np.count_nonzero(window != rep[i])
        want = blind_dispatches(qps, lag, r)
        se = counts.std(ddof=1) / np.sqrt(counts.size) if r > 1 else 0.0
        assert abs(counts.mean() - want) <= 5 * se + 1e-12, (r, counts.mean(), want)


def test_random_choice_among_ties_in_simulation():
    """R replicas pick uniformly among m tied instances (the power-of-d mitigation on tied
    state): the simulated mean max-min load matches expected_spread; always below R."""
    rng = np.random.default_rng(3)
    for r, mm in ((4, 2), (8, 4), (8, 8)):
        picks = rng.integers(0, mm, (20_000, r))
        loads = np.stack([(picks == j).sum(axis=1) for j in range(mm)], axis=1)
        spread = loads.max(axis=1) - loads.min(axis=1)
        want = float(expected_spread(r, mm))
        se = spread.std(ddof=1) / np.sqrt(spread.size)
        assert abs(spread.mean() - want) <= 5 * se
        assert want < r


# ---------------------------------------------------------------- (o) against brute force


def _choice(p1, p2, b1, b2, p0, b0, lam_, tie_to):
    if lam_ is None:
        s1, s2 = (p1 + p0) * (b1 + b0), (p2 + p0) * (b2 + b0)
    else:
        s1, s2 = p1 + lam_ * b1, p2 + lam_ * b2
    if s1 == s2:
        return tie_to
    return 1 if s1 < s2 else 2


@settings(max_examples=300, deadline=None)
@given(
    P=st.tuples(st.integers(0, 3000), st.integers(0, 3000)),
    B=st.tuples(st.integers(0, 30), st.integers(0, 30)),
    block=st.sampled_from([1, 16, 64]),
    p0=st.sampled_from([F(0), F(5, 2)]),
    b0=st.sampled_from([F(1), F(1, 3)]),
    lam_=st.sampled_from([None, F(0), F(16), F(250, 3)]),
    tie_to=st.sampled_from([1, 2]),
)
def test_flip_blocks_matches_enumeration(P, B, block, p0, b0, lam_, tie_to, th):
    star = flip_error(P, B, p0, b0, lam_)
    if star == 0:
        return
    base = _choice(F(P[0]), F(P[1]), B[0], B[1], p0, b0, lam_, tie_to)
    sign = 1 if base == 1 else -1
    k = 0
    while True:  # brute force: add one block of error at a time
        k += 1
        seen = F(P[0]) + sign * k * block
        if seen < 0 and sign < 0:
            seen_choice = None  # a prediction below zero tokens cannot happen
        else:
            seen_choice = _choice(seen, F(P[1]), B[0], B[1], p0, b0, lam_, tie_to)
        if seen_choice is None or seen_choice != base:
            break
    got = flip_blocks(P, B, block, p0, b0, lam_, tie_to=tie_to)
    if seen_choice is not None:
        assert got == k
    else:  # the flip would need more stale blocks than instance 1 could list
        assert got * block > P[0]
    if lam_ is None:  # the helper's threshold is the derived expression
        vals = {P_1: P[0], P_2: P[1], B_1: B[0], B_2: B[1],
                p_0: sp.Rational(p0.numerator, p0.denominator),
                b_0: sp.Rational(b0.numerator, b0.denominator)}
        assert th.product_flip_error.subs(vals) == sp.Rational(star.numerator, star.denominator)


class _Engine:
    """A tiny prefix cache: LRU over block hashes (ints), fixed capacity in blocks."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.blocks = capacity, OrderedDict()

    def store(self, hashes) -> list[int]:
        evicted = []
        for h in hashes:
            self.blocks[h] = True
            self.blocks.move_to_end(h)
            while len(self.blocks) > self.capacity:
                evicted.append(self.blocks.popitem(last=False)[0])
        return evicted

    def hit(self, hashes) -> int:
        n = 0
        for h in hashes:
            if h not in self.blocks:
                break
            n += 1
        return n


@pytest.mark.parametrize("score_lam", [None, F(16)])
def test_stale_index_flip_in_a_cache_simulation(score_lam):
    """Result (o) against a simulation: a probe's 40-block prefix sits on instance 1 (index
    0 here, the lower one); other traffic then evicts k of its blocks from the engine, and
    the router's index hears no removal (a long KV event lag). The router goes on
    predicting all 40 blocks; the first k at which its choice differs from the one with the
    engine's true hits is flip_blocks (ties to the lower index)."""
    block, n_blocks, tail = 16, 40, 8  # probe: 40 shared blocks + 8 of its own
    probe = list(range(n_blocks))
    b = (3, 1)
    first = None
    for k in range(0, n_blocks + 1):
        # other traffic: evicts the LRU blocks; store the probe's blocks from the tail
        # first so the prefix's *last* blocks are the oldest (k of them get evicted)
        eng = _Engine(capacity=n_blocks + 8)
        eng.store(list(reversed(probe)))
        evicted = eng.store([10_000 + j for j in range(8 + k)])
        assert len(evicted) == k
        true_hit = eng.hit(probe)
        assert true_hit == n_blocks - k
        p_true = ((n_blocks + tail) - true_hit) * block
        p_seen = tail * block  # the stale index still lists every prefix block
        p_other = (n_blocks + tail) * block  # instance 2 caches nothing of it
        c_true = _choice(p_true, p_other, b[0], b[1], 0, 1, score_lam, 1)
        c_seen = _choice(p_seen, p_other, b[0], b[1], 0, 1, score_lam, 1)
        if c_true != c_seen:
            first = k
            break
    assert first is not None, "the planted run never flipped"
    # derived: the true state (k blocks gone) loses to instance 2 exactly when the error
    # k*block exceeds the threshold of the seen state
    star = flip_error((tail * block, (n_blocks + tail) * block), b, 0, 1, score_lam)
    assert star > 0
    want = flip_blocks((tail * block, (n_blocks + tail) * block), b, block, 0, 1, score_lam,
                       tie_to=1)
    assert first == want


def test_results_in_derive_and_json(th):
    from lmetric_theory.theory import derive
    from lmetric_theory.theory.render import to_json_dict, to_markdown

    d = derive()
    assert [r.item for r in d.results][-3:] == ["m", "n", "o"]
    data = to_json_dict(d)["router_state"]
    assert set(data) == {"symbols", "ordering", "herding", "index_error"}
    got = sp.parse_expr(data["index_error"]["product_flip_error"], local_dict=REPLICA_SYMBOLS)
    assert sp.simplify(got - th.product_flip_error) == 0
    assert "## (n) Router replicas: herding within one lag window" in to_markdown(d)
