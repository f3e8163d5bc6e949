"""Seeded synthetic workloads: chat sessions, API calls with shared templates, coding agents.

The model
---------
A prompt is a sequence of *segments* (a system prompt, a user message, an answer, a tool
result, ...); every segment has its own content, so two prompts hold equal tokens at a
position exactly when they hold the same segment at the same offset there. Block ``k`` of a
prompt is hashed as ``H(hash of block k-1, the segment pieces in block k)`` (a 64-bit
mixing chain), so *equal hash at position k iff equal prefix through block k*; a partial
last block hashes differently from any full block. Hashes are finally renumbered densely
(0, 1, 2, ... in order of first appearance), as in the Mooncake trace.

Kinds (all lengths in tokens, drawn from clipped log-normal distributions given by median,
sigma, bounds; see :class:`LengthDist`)

``chat``
    Sessions start as a Poisson process. A session picks one of a few shared system prompts
    (400/900/1600/2800 tokens, popularity 0.4/0.3/0.2/0.1) and runs a geometric number of
    turns (mean 4, at most 24). Turn ``t`` sends ``system + u1 + a1 + ... + u_t``: the
    previous prompt, the previous answer and a new user message (median 120 tokens), so
    prefixes grow. Answers: median 250 tokens. Between turns the user thinks
    ``5 s + Exp(25 s)`` (measured arrival to arrival, so it includes the answer's own
    generation time). A session ends early when its prompt would exceed 32,768 tokens.
``api``
    Independent calls, Poisson arrivals. Each uses one of 6 long templates (median 3,000
    tokens, 1,000-8,000; Zipf popularity, exponent 1.1) followed by a short unique suffix
    (median 150 tokens); outputs median 80 tokens. Session id -1.
``agent`` (closed loop)
    Coding-agent sessions, replayed closed loop like the AIPerf agentic-code profile at a
    small scale. Sessions start as a Poisson process at ``rate_rps / E[turns]``
    (sessions/s). Turn 0 sends one of 2 shared tool/system prompts (5,000 or 8,000 tokens,
    popularity 0.6/0.4) followed by a task context unique to the session (median 4,000
    tokens: instructions, files). The session runs a geometric number of turns (mean 12,
    at most 60); turn ``k`` sends the whole context: turn ``k-1``'s prompt, its output
    (median 180 tokens) and the tool result that follows (median 900 tokens). Turn ``k``
    arrives a think time ``0.2 s + Exp(2.5 s)`` (median about 1.9 s, AIPerf's trace: 2.0 s)
    after turn ``k-1`` *completes*. A session stops before a turn whose prompt would exceed
    96,000 tokens. Block ids follow the delta convention
    (:mod:`lmetric_theory.workload.sessions`): one id per block position of a session, so
    ``output_hash_ids`` holds each turn's output blocks and the next turn hits them where
    this one ran. ``arrival_s`` is the nominal arrival (session start plus the think
    times, as if answers were instant); sessions start at time 0 (no warm-up).
``mixed``
    All three, by request rate: 50% chat, 30% api, 20% agent. Its agent share keeps the
    open-loop agent model (steps ``gap_min_s + Exp(gap_mean_s)`` = ``1 s + Exp(6 s)``
    apart, arrival to arrival, 300 s warm-up), so the default workload is unchanged.

Arrivals
--------
``rate_rps`` is the long-run mean request rate (requests/s). Session processes start
sessions at ``rate_rps / E[requests per session]`` (the expectation of the capped
geometric; the context caps make the realised rate slightly lower). The processes start
``warmup_s`` (300 s) before time 0 (not ``agent``) and only requests at ``t >= 0`` are
kept, so the workload starts in steady state (sessions already in progress, with their earlier turns'
context in the prompt); the first ``n_requests`` requests are returned, times in seconds
from 0.

Randomness: one :class:`numpy.random.Generator` per kind, spawned from ``seed`` with
:class:`numpy.random.SeedSequence`; same arguments, same workload.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from itertools import chain
from typing import Any

import numpy as np

from lmetric_theory.workload.base import Sessions, Workload
from lmetric_theory.workload.loaders import make_workload
from lmetric_theory.workload.sessions import chain_links, materialise_delta, segment_cumsum

__all__ = [
    "KINDS",
    "LengthDist",
    "ChatParams",
    "ApiParams",
    "AgentParams",
    "SyntheticParams",
    "synthetic",
    "default_workload",
    "DEFAULT_N_REQUESTS",
    "DEFAULT_RATE_RPS",
    "DEFAULT_BLOCK_SIZE",
]

#: Workload kinds :func:`synthetic` generates.
KINDS: tuple[str, ...] = ("chat", "api", "agent", "mixed")

#: Tokens per hash block of synthetic workloads unless overridden.
DEFAULT_BLOCK_SIZE = 128

#: Size and rate of :func:`default_workload` (see its docstring for the load reasoning).
DEFAULT_N_REQUESTS = 6000
DEFAULT_RATE_RPS = 16.0

_M64 = (1 << 64) - 1
_M63 = (1 << 63) - 1
_ROOT = 0x2545F4914F6CDD1D
_K1, _K2, _K3 = 0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9


def _mix(x: int) -> int:
    """SplitMix64 finaliser, reduced to 63 bits (non-negative int64)."""
    x &= _M64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _M64
    x ^= x >> 31
    return x & _M63


@dataclass(frozen=True, slots=True)
class LengthDist:
    """Clipped log-normal length, tokens: ``clip(round(median * exp(sigma * Z)), lo, hi)``."""

    median: float
    sigma: float
    lo: int
    hi: int

    def draw(self, rng: np.random.Generator) -> int:
        """One length (tokens)."""
        x = self.median * math.exp(self.sigma * float(rng.standard_normal()))
        return int(min(max(round(x), self.lo), self.hi))


@dataclass(frozen=True, slots=True)
class ChatParams:
    """Chat sessions (tokens, seconds)."""

    system_tokens: tuple[int, ...] = (400, 900, 1600, 2800)
    system_weights: tuple[float, ...] = (0.4, 0.3, 0.2, 0.1)
    mean_turns: float = 4.0
    max_turns: int = 24
    user_tokens: LengthDist = LengthDist(120.0, 1.0, 8, 4000)
    output_tokens: LengthDist = LengthDist(250.0, 0.8, 4, 2048)
    think_min_s: float = 5.0
    think_mean_s: float = 25.0
    max_context: int = 32768


@dataclass(frozen=True, slots=True)
class ApiParams:
    """API calls on shared templates (tokens)."""

    n_templates: int = 6
    template_tokens: LengthDist = LengthDist(3000.0, 0.5, 1000, 8000)
    zipf_exponent: float = 1.1
    suffix_tokens: LengthDist = LengthDist(150.0, 0.9, 8, 4000)
    output_tokens: LengthDist = LengthDist(80.0, 0.9, 1, 1024)


@dataclass(frozen=True, slots=True)
class AgentParams:
    """Coding-agent sessions (tokens, seconds).

    ``think_min_s + Exp(think_mean_s)`` is the closed-loop think time of ``agent`` (after
    the previous turn completes); ``gap_min_s + Exp(gap_mean_s)`` the open-loop step gap
    (arrival to arrival) of the agent share of ``mixed``.
    """

    system_tokens: tuple[int, ...] = (5000, 8000)
    system_weights: tuple[float, ...] = (0.6, 0.4)
    task_tokens: LengthDist = LengthDist(4000.0, 0.7, 200, 30000)
    mean_steps: float = 12.0
    max_steps: int = 60
    output_tokens: LengthDist = LengthDist(180.0, 0.9, 4, 4096)
    tool_tokens: LengthDist = LengthDist(900.0, 1.1, 10, 16000)
    gap_min_s: float = 1.0
    gap_mean_s: float = 6.0
    max_context: int = 96000
    think_min_s: float = 0.2
    think_mean_s: float = 2.5


@dataclass(frozen=True, slots=True)
class SyntheticParams:
    """All generator parameters; ``mix`` is the (chat, api, agent) share of requests."""

    chat: ChatParams = field(default_factory=ChatParams)
    api: ApiParams = field(default_factory=ApiParams)
    agent: AgentParams = field(default_factory=AgentParams)
    mix: tuple[float, float, float] = (0.5, 0.3, 0.2)
    warmup_s: float = 300.0


class _Prompt:
    """A growing prompt: hashes of its full blocks plus the pieces of its partial block."""

    __slots__ = ("bs", "full", "tail", "tail_len", "length")

    def __init__(self, bs: int) -> None:
        self.bs = bs
        self.full: list[int] = []
        self.tail: list[tuple[int, int, int]] = []
        self.tail_len = 0
        self.length = 0

    def copy(self) -> _Prompt:
        p = _Prompt(self.bs)
        p.full = self.full.copy()
        p.tail = self.tail.copy()
        p.tail_len = self.tail_len
        p.length = self.length
        return p

    def _hash(self, pieces: list[tuple[int, int, int]]) -> int:
        h = self.full[-1] if self.full else _ROOT
        for seg, a, b in pieces:
            h = _mix(h * _K1 + seg * _K2 + a * _K3 + b)
        return h

    def extend(self, seg: int, n: int) -> None:
        """Append ``n`` tokens of segment ``seg``."""
        bs = self.bs
        start = 0
        if self.tail_len:  # fill the partial block first
            take = min(n, bs - self.tail_len)
            self.tail.append((seg, 0, take))
            self.tail_len += take
            start = take
            if self.tail_len == bs:
                self.full.append(self._hash(self.tail))
                self.tail = []
                self.tail_len = 0
        full = self.full
        h = full[-1] if full else _ROOT
        seg_part = seg * _K2
        while n - start >= bs:  # whole blocks of this segment: one piece each
            x = (h * _K1 + seg_part + start * _K3 + start + bs) & _M64
            x ^= x >> 30
            x = (x * 0xBF58476D1CE4E5B9) & _M64
            x ^= x >> 27
            x = (x * 0x94D049BB133111EB) & _M64
            h = (x ^ (x >> 31)) & _M63
            full.append(h)
            start += bs
        if start < n:
            self.tail = [(seg, start, n)]
            self.tail_len = n - start
        self.length += n

    def hashes(self) -> list[int]:
        """Block hashes of the prompt as it is now, ``ceil(length / bs)`` of them."""
        if self.tail_len:
            return [*self.full, self._hash(self.tail)]
        return self.full.copy()


# A generated request: (arrival_s, input_tokens, output_tokens, block hashes, session, segments)
_Req = tuple[float, int, int, list[int], int, tuple[tuple[int, int], ...]]


class _Segments:
    """Fresh segment ids within one kind's namespace."""

    def __init__(self, kind_index: int) -> None:
        self.base = (kind_index + 1) << 40
        self.next = 0

    def new(self) -> int:
        self.next += 1
        return self.base + self.next


def _expected_capped_geometric(mean: float, cap: int) -> float:
    """E[min(G, cap)] for G ~ Geometric(1/mean) on {1, 2, ...}."""
    p = 1.0 / mean
    return (1.0 - (1.0 - p) ** cap) / p


def _shared_prompts(tokens: tuple[int, ...], bs: int, segs: _Segments) -> list[tuple[_Prompt, int]]:
    out = []
    for n in tokens:
        p = _Prompt(bs)
        seg = segs.new()
        p.extend(seg, n)
        out.append((p, seg))
    return out


def _sessions(rng, system_tokens, system_weights, session_rate, t0, t1, bs, segs):
    """Session starts of a Poisson process at ``session_rate`` (sessions/s) in ``[t0, t1)``.

    Yields ``(t, sid, prompt, trail)``: start time (s), session id (1, 2, ...), a copy of
    the chosen shared system prompt, and the trail of its segments (for prefix checks).
    """
    systems = _shared_prompts(system_tokens, bs, segs)
    w = np.asarray(system_weights, dtype=float)
    w = w / w.sum()
    t = t0
    sid = 0
    while True:
        t += float(rng.exponential(1.0 / session_rate))
        if t >= t1:
            return
        sid += 1
        k_sys = int(rng.choice(len(systems), p=w))
        yield t, sid, systems[k_sys][0].copy(), [(systems[k_sys][1], system_tokens[k_sys])]


def _grow(prompt: _Prompt, n: int, segs: _Segments, trail: list, track: bool) -> None:
    """Append ``n`` fresh tokens (a new segment) to ``prompt``, recorded in ``trail``."""
    seg = segs.new()
    prompt.extend(seg, n)
    if track:
        trail.append((seg, n))


def _request(ta: float, prompt: _Prompt, o: int, sid: int, trail: list, track: bool) -> _Req:
    """One request row: arrival ``ta`` (s), the prompt as it is now, ``o`` output tokens."""
    return (ta, prompt.length, o, prompt.hashes() if ta >= 0 else [], sid,
            tuple(trail) if track else ())


def _chat(rng, p: ChatParams, rate, t0, t1, bs, segs, track) -> list[_Req]:
    out: list[_Req] = []
    session_rate = rate / _expected_capped_geometric(p.mean_turns, p.max_turns)
    for t, sid, prompt, trail in _sessions(rng, p.system_tokens, p.system_weights,
                                           session_rate, t0, t1, bs, segs):
        turns = min(int(rng.geometric(1.0 / p.mean_turns)), p.max_turns)
        ta = t
        for k in range(turns):
            if k:
                ta += p.think_min_s + float(rng.exponential(p.think_mean_s))
            if ta >= t1:
                break
            u = p.user_tokens.draw(rng)
            o = p.output_tokens.draw(rng)
            if prompt.length + u > p.max_context:
                break
            _grow(prompt, u, segs, trail, track)
            out.append(_request(ta, prompt, o, sid, trail, track))
            _grow(prompt, o, segs, trail, track)
    return out


def _api(rng, p: ApiParams, rate, t0, t1, bs, segs, track) -> list[_Req]:
    out: list[_Req] = []
    lengths = tuple(p.template_tokens.draw(rng) for _ in range(p.n_templates))
    templates = _shared_prompts(lengths, bs, segs)
    w = 1.0 / np.arange(1, p.n_templates + 1, dtype=float) ** p.zipf_exponent
    w = w / w.sum()
    t = t0
    while True:
        t += float(rng.exponential(1.0 / rate))
        if t >= t1:
            return out
        k = int(rng.choice(p.n_templates, p=w))
        s = p.suffix_tokens.draw(rng)
        o = p.output_tokens.draw(rng)
        prompt = templates[k][0].copy()
        seg = segs.new()
        prompt.extend(seg, s)
        trail = ((templates[k][1], lengths[k]), (seg, s)) if track else ()
        out.append((t, prompt.length, o, prompt.hashes() if t >= 0 else [], -1, trail))


def _agent(rng, p: AgentParams, rate, t0, t1, bs, segs, track) -> list[_Req]:
    out: list[_Req] = []
    session_rate = rate / _expected_capped_geometric(p.mean_steps, p.max_steps)
    for t, sid, prompt, trail in _sessions(rng, p.system_tokens, p.system_weights,
                                           session_rate, t0, t1, bs, segs):
        _grow(prompt, p.task_tokens.draw(rng), segs, trail, track)
        steps = min(int(rng.geometric(1.0 / p.mean_steps)), p.max_steps)
        ta = t
        for k in range(steps):
            if k:
                ta += p.gap_min_s + float(rng.exponential(p.gap_mean_s))
                _grow(prompt, p.tool_tokens.draw(rng), segs, trail, track)
            if ta >= t1 or prompt.length > p.max_context:
                break
            o = p.output_tokens.draw(rng)
            out.append(_request(ta, prompt, o, sid, trail, track))
            _grow(prompt, o, segs, trail, track)
    return out


_GENERATORS = {"chat": _chat, "api": _api, "agent": _agent}


def _agent_closed(
    rng: np.random.Generator, p: AgentParams, rate: float, n_requests: int, bs: int,
    track: bool,
) -> tuple[Workload, list[tuple[tuple[int, int], ...]]]:
    """The closed-loop ``agent`` workload: whole sessions, first ``n_requests`` turns by
    nominal arrival (a head selection, so every kept turn's previous turn is kept)."""
    session_rate = rate / _expected_capped_geometric(p.mean_steps, p.max_steps)
    segs = _Segments(2)
    systems = _shared_prompts(p.system_tokens, bs, segs)
    w = np.asarray(p.system_weights, dtype=float)
    w = w / w.sum()
    code: list[int] = []
    seg_len: list[int] = []
    out_len: list[int] = []
    delay: list[float] = []
    start: list[float] = []
    hashes: list[list[int]] = []  # turn 0: its block hashes; later turns: placeholders
    trails: list[list[tuple[int, int]]] = []  # per session: its whole context, when tracking
    t = 0.0
    placeholder = -1
    horizon = 1.25 * n_requests / rate + 60.0
    nominal_ok = 0
    while True:
        t += float(rng.exponential(1.0 / session_rate))
        if t >= horizon and nominal_ok >= n_requests:
            break
        sid = len(start)
        start.append(t)
        k_sys = int(rng.choice(len(systems), p=w))
        prompt = systems[k_sys][0].copy()
        trail = [(systems[k_sys][1], p.system_tokens[k_sys])]
        task = p.task_tokens.draw(rng)
        _grow(prompt, task, segs, trail, True)
        steps = min(int(rng.geometric(1.0 / p.mean_steps)), p.max_steps)
        total = prompt.length
        ta = t
        out_prev = 0
        for k in range(steps):
            if k:
                think = p.think_min_s + float(rng.exponential(p.think_mean_s))
                tool = p.tool_tokens.draw(rng)
                if total + out_prev + tool > p.max_context:
                    break
                trail.append((segs.new(), tool))
                total += out_prev + tool
                ta += think
                seg = tool
                ids = list(range(placeholder, placeholder - -(-tool // bs), -1))
                placeholder -= len(ids)
            else:
                think, seg, ids = 0.0, prompt.length, prompt.hashes()
            o = p.output_tokens.draw(rng)
            code.append(sid)
            seg_len.append(seg)
            out_len.append(o)
            delay.append(think)
            hashes.append(ids)
            if ta < horizon:
                nominal_ok += 1
            trail.append((segs.new(), o))
            out_prev = o
        if track:
            trails.append(trail[:-1])  # the last output is never part of a prompt
        if t >= horizon and nominal_ok >= n_requests:
            break
        if t >= horizon:
            horizon *= 1.5

    codes = np.asarray(code, dtype=np.int64)
    lens = np.fromiter(map(len, hashes), dtype=np.int64, count=len(hashes))
    raw = np.fromiter(chain.from_iterable(hashes), dtype=np.int64, count=int(lens.sum()))
    # turn-0 hashes to small ids first (fresh ids go above them), placeholders stay unique
    pos = raw >= 0
    uniq, inverse = np.unique(raw[pos], return_inverse=True)
    small = raw.copy()
    small[pos] = inverse.reshape(-1)
    small[~pos] = uniq.shape[0] + (-raw[~pos] - 1)
    first_fresh = int(small.max()) + 1
    d = materialise_delta(codes, np.asarray(seg_len, dtype=np.int64),
                          np.asarray(out_len, dtype=np.int64), small, lens, bs, first_fresh)
    prev, turn, group = chain_links(codes)
    starts = np.asarray(start, dtype=np.float64)
    dl = np.asarray(delay, dtype=np.float64)
    nominal = np.empty(codes.shape[0], dtype=np.float64)
    nominal[group] = starts[codes[group]] + segment_cumsum(dl[group], turn[group] == 0)
    order = np.argsort(nominal, kind="stable")[:n_requests].astype(np.int64)
    # a head of the nominal order keeps every kept turn's previous turn (prev[i] < i)
    from lmetric_theory.workload.sessions import subset_sessions, take_csr

    full = Sessions(codes, turn, prev, np.where(prev >= 0, dl, 0.0),
                    group[turn[group] == 0].astype(np.int64), starts, True)
    ses = subset_sessions(full, order, nominal[order])
    p_flat, p_off = take_csr(d.hash_ids, d.hash_offsets, order)
    o_flat, o_off = take_csr(d.output_hash_ids, d.output_hash_offsets, order)
    # dense ids in order of first appearance (prompts, then outputs, request by request)
    both = np.concatenate([p_flat, o_flat])
    u, first_at, inv = np.unique(both, return_index=True, return_inverse=True)
    rank = np.empty(u.shape[0], dtype=np.int64)
    rank[np.argsort(first_at, kind="stable")] = np.arange(u.shape[0], dtype=np.int64)
    dense = rank[inv.reshape(-1)]
    kept_sessions = codes[order][ses.first]
    w_out = make_workload(
        arrival_s=nominal[order],
        input_tokens=d.input_tokens[order],
        output_tokens=np.asarray(out_len, dtype=np.int64)[order],
        hash_ids=dense[: p_flat.shape[0]],
        hash_offsets=p_off,
        block_size=bs,
        session_ids=ses.session,
        meta={},
        sessions=ses,
        output_hash_ids=dense[p_flat.shape[0]:],
        output_hash_offsets=o_off,
    )
    per_request = [tuple(trails[int(s)]) for s in kept_sessions[ses.session]] if track else []
    return w_out, per_request


def _generate(
    kind: str,
    *,
    n_requests: int,
    rate_rps: float,
    seed: int,
    block_size: int,
    params: SyntheticParams,
    track_segments: bool,
) -> tuple[Workload, list[tuple[tuple[int, int], ...]]]:
    """Build the workload; optionally also each request's prompt as (segment, length) runs."""
    if kind not in KINDS:
        raise ValueError(f"unknown workload kind {kind!r}; valid: {', '.join(KINDS)}")
    if isinstance(n_requests, bool) or not isinstance(n_requests, int) or n_requests < 1:
        raise ValueError(f"n_requests must be an integer >= 1, got {n_requests!r}")
    if not (isinstance(rate_rps, int | float) and math.isfinite(rate_rps) and rate_rps > 0):
        raise ValueError(f"rate_rps must be a finite number > 0, got {rate_rps!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an integer >= 1, got {block_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if len(params.mix) != 3 or min(params.mix) < 0 or sum(params.mix) <= 0:
        raise ValueError(f"mix must be three non-negative shares, got {params.mix!r}")
    shares = (
        dict(zip(("chat", "api", "agent"), params.mix, strict=True))
        if kind == "mixed"
        else {kind: 1.0}
    )
    total_share = sum(shares.values())
    sub = {"chat": params.chat, "api": params.api, "agent": params.agent}
    if kind == "agent":
        rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[2])
        w, trails = _agent_closed(rng, params.agent, float(rate_rps), n_requests, block_size,
                                  track_segments)
        meta = _meta(kind, seed, n_requests, rate_rps, block_size, params)
        meta.update(closed_loop=True, n_sessions=w.sessions.n_sessions if w.sessions else 0,
                    trace_format="mooncake-delta")
        return Workload(w.arrival_s, w.input_tokens, w.output_tokens, w.hash_ids,
                        w.hash_offsets, w.block_size, w.session_ids, meta, w.sessions,
                        w.output_hash_ids, w.output_hash_offsets), trails
    horizon = 1.25 * n_requests / rate_rps + 60.0
    while True:
        children = np.random.SeedSequence(seed).spawn(3)
        reqs: list[_Req] = []
        for idx, name in enumerate(("chat", "api", "agent")):
            share = shares.get(name, 0.0)
            if share <= 0:
                continue
            rng = np.random.default_rng(children[idx])
            gen = _GENERATORS[name]
            part = gen(
                rng,
                sub[name],
                rate_rps * share / total_share,
                -float(params.warmup_s),
                horizon,
                block_size,
                _Segments(idx),
                track_segments,
            )
            # sessions of different kinds get distinct ids before renumbering
            reqs.extend(
                (r[0], r[1], r[2], r[3], -1 if r[4] < 0 else (idx << 40) + r[4], r[5])
                for r in part
                if r[0] >= 0.0
            )
        if len(reqs) >= n_requests:
            break
        horizon *= 1.5
    reqs.sort(key=lambda r: r[0])
    reqs = reqs[:n_requests]

    arrival = np.fromiter((r[0] for r in reqs), dtype=np.float64, count=n_requests)
    inp = np.fromiter((r[1] for r in reqs), dtype=np.int64, count=n_requests)
    out = np.fromiter((r[2] for r in reqs), dtype=np.int64, count=n_requests)
    lens = np.fromiter((len(r[3]) for r in reqs), dtype=np.int64, count=n_requests)
    raw = np.fromiter(
        chain.from_iterable(r[3] for r in reqs), dtype=np.int64, count=int(lens.sum())
    )
    # dense ids in order of first appearance
    uniq, first, inverse = np.unique(raw, return_index=True, return_inverse=True)
    rank = np.empty(uniq.shape[0], dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(uniq.shape[0], dtype=np.int64)
    hash_ids = rank[inverse.reshape(-1)]
    offsets = np.zeros(n_requests + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    sess_raw = [r[4] for r in reqs]
    codes: dict[int, int] = {}
    sessions = np.array(
        [-1 if s < 0 else codes.setdefault(s, len(codes)) for s in sess_raw], dtype=np.int64
    )
    meta = _meta(kind, seed, n_requests, rate_rps, block_size, params)
    w = make_workload(
        arrival_s=arrival,
        input_tokens=inp,
        output_tokens=out,
        hash_ids=hash_ids,
        hash_offsets=offsets,
        block_size=block_size,
        session_ids=sessions,
        meta=meta,
    )
    return w, [r[5] for r in reqs]


def _meta(kind: str, seed: int, n_requests: int, rate_rps: float, block_size: int,
          params: SyntheticParams) -> dict[str, Any]:
    return {
        "source": "synthetic",
        "format": "synthetic",
        "kind": kind,
        "seed": seed,
        "n_requests": n_requests,
        "rate_rps": float(rate_rps),
        "block_size": block_size,
        "params": asdict(params),
        "skipped_lines": 0,
        "reordered_lines": 0,
        "rate_scale": 1.0,
        "transforms": [],
    }


def synthetic(
    kind: str = "mixed",
    *,
    n_requests: int = 2000,
    rate_rps: float = 8.0,
    seed: int = 0,
    block_size: int = DEFAULT_BLOCK_SIZE,
    params: SyntheticParams | None = None,
) -> Workload:
    """Generate a seeded synthetic workload (see the module docstring for the model).

    Parameters
    ----------
    kind : {"chat", "api", "agent", "mixed"}
    n_requests : int
        Number of requests, >= 1.
    rate_rps : float
        Long-run mean arrival rate, requests per second.
    seed : int
        Seed (>= 0); equal arguments give an identical workload.
    block_size : int
        Tokens per hash block.
    params : SyntheticParams, optional
        Distribution parameters; the documented defaults when omitted.

    Returns
    -------
    Workload
        ``session_ids`` numbers chat and agent sessions 0, 1, ... by first appearance
        (-1 for API calls); ``meta`` records kind, seed, rate and all parameters.
        ``agent`` also has ``sessions`` (closed loop) and ``output_hash_ids``;
        ``n_requests`` counts turns.
    """
    w, _ = _generate(
        kind,
        n_requests=n_requests,
        rate_rps=rate_rps,
        seed=seed,
        block_size=block_size,
        params=params or SyntheticParams(),
        track_segments=False,
    )
    return w


def default_workload(seed: int = 0) -> Workload:
    """The embedded workload used whenever no trace is given.

    ``synthetic("mixed", n_requests=6000, rate_rps=16.0, seed=seed)`` with 128-token
    blocks: 6,000 requests over about 370 s (seed 0), mean prompt about 8,200 tokens, mean
    output about 260 tokens, about 390,000 blocks. Sized for 8 instances of an 8B model on
    H100s (about 30,000 prefill tokens/s each, 240,000 tokens/s in all): the prompts arrive
    at about 133,000 tokens/s, 55% of the cluster's prefill capacity if nothing were
    cached; with prefix hits (an infinite shared cache would hit about 89% of the blocks)
    far less. So the cluster is busy, bursts queue, and routing for cache affinity pays,
    without overload. 128-token blocks keep the block count (and the simulator's cache
    walk) close to the shared Mooncake trace's.
    """
    return synthetic(
        "mixed",
        n_requests=DEFAULT_N_REQUESTS,
        rate_rps=DEFAULT_RATE_RPS,
        seed=seed,
        block_size=DEFAULT_BLOCK_SIZE,
    )
