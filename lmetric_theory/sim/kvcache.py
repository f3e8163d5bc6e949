"""KV cache of one instance with its prefix cache (reserved-KV engine).

Blocks of the workload's block size are keyed by block hash (a hash names its whole prefix
chain). A cached block is pinned while running requests reference it; unreferenced blocks
sit on an LRU list and are evicted oldest first. Occupancy counts cached blocks plus each
running request's private reservation (partial prompt block, duplicate blocks and output).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from itertools import islice
from typing import Any

__all__ = ["Admission", "BlockPool", "KVCache"]

#: What an admission pins and reserves: (hit blocks, referenced hashes, new hashes, private tokens).
Admission = tuple[int, list[int], list[int], int]


class KVCache:
    """Prefix cache and occupancy of one instance.

    Parameters
    ----------
    capacity : int
        KV capacity, tokens.
    block : int
        Block size, tokens.
    """

    __slots__ = ("cap", "bs", "cache", "ready", "lru", "used", "peak")

    def __init__(self, capacity: int, block: int) -> None:
        self.cap = int(capacity)
        self.bs = int(block)
        self.cache: dict[int, int] = {}  # block hash -> reference count (running requests)
        self.ready: set[int] = set()  # hashes of computed blocks (the lookup set)
        self.lru: OrderedDict[int, None] = OrderedDict()  # unreferenced ready blocks, oldest first
        self.used = 0  # KV tokens held: cache entries + private reservations
        self.peak = 0  # highest KV tokens held, tokens

    def clone(self) -> KVCache:
        """Independent copy (hashes are immutable)."""
        c = KVCache.__new__(KVCache)
        c.cap, c.bs, c.used, c.peak = self.cap, self.bs, self.used, self.peak
        c.cache = self.cache.copy()
        c.ready = self.ready.copy()
        c.lru = self.lru.copy()
        return c

    def hit_blocks(self, blocks: list[int]) -> int:
        """Leading blocks of ``blocks`` that are computed and cached."""
        a = self.ready
        k = 0
        for h in blocks:
            if h not in a:
                break
            k += 1
        return k

    def hit(self, keys: list[int], ratio: int, limit: int) -> int:
        """Leading blocks of ``keys`` that are computed and cached, at most ``limit`` (the
        :class:`~lmetric_theory.sim.scheduler.PrefixCache` lookup; ``ratio`` is 1 here)."""
        a = self.ready
        k = 0
        for h in keys:
            if h not in a:
                break
            k += 1
        k *= ratio
        return k if k < limit else limit

    def in_use_tokens(self) -> int:
        """Tokens held by running requests (cached-but-free blocks excluded), tokens."""
        return self.used - len(self.lru) * self.bs

    def admit(self, full: list[int], maxhit: int, inp: int, out: int) -> Admission | None:
        """Pin the hit, evict LRU blocks and reserve the rest, or ``None`` if it does not fit.

        Parameters
        ----------
        full : list of int
            Hashes of the prompt's full blocks.
        maxhit : int
            Most blocks that may be hits (at least one prompt token is recomputed).
        inp, out : int
            Prompt and output lengths, tokens.
        """
        bs = self.bs
        cache = self.cache
        hit = self.hit_blocks(full[:maxhit])
        nfull = len(full)
        new = [h for h in full[hit:] if h not in cache]
        if len(set(new)) != len(new):  # a hash repeated inside one prompt: keep the first
            new = list(dict.fromkeys(new))
        dup = nfull - hit - len(new)
        priv = inp - nfull * bs + dup * bs + out
        need = len(new) * bs + priv
        hits = full[:hit]
        lru = self.lru
        pinned_free = sum(map(lru.__contains__, hits))
        free = self.cap - self.used
        if need > free + (len(lru) - pinned_free) * bs:
            return None
        for h in hits:
            c = cache[h]
            if not c:
                del lru[h]
            cache[h] = c + 1
        short = need - (self.cap - self.used)
        if short > 0:
            k = -(-short // bs)
            victims = list(islice(lru, k))  # least recently used first
            for h in victims:
                del lru[h]
                del cache[h]
            self.ready.difference_update(victims)
            self.used -= k * bs
        for h in new:
            cache[h] = 1
        self.used += need
        if self.used > self.peak:
            self.peak = self.used
        return hit, hits + new, new, priv

    def release(self, refs: list[int], priv: int) -> None:
        """Unpin ``refs`` (tail blocks become eviction candidates first), free ``priv`` tokens."""
        cache, lru = self.cache, self.lru
        for h in reversed(refs):
            c = cache[h] - 1
            cache[h] = c
            if not c:
                lru[h] = None
        self.used -= priv

    def check(self, holders_refs: list[list[int]], holders_priv: int) -> None:
        """Assert the bookkeeping against the running requests' references and reservations."""
        counts: dict[int, int] = {}
        for refs in holders_refs:
            for h in refs:
                counts[h] = counts.get(h, 0) + 1
        assert self.used == len(self.cache) * self.bs + holders_priv, self.used
        assert self.used <= self.cap, (self.used, self.cap)
        for h, c in self.cache.items():
            assert c == counts.get(h, 0), (h, c, counts.get(h, 0))
            assert (c == 0) == (h in self.lru), h
        assert all(h in self.cache for h in counts)
        assert set(self.lru) <= self.ready <= set(self.cache)


class _Group:
    """Cache state of one chain of engine blocks sharing a key (positions 0, 1, ...).

    ``k`` positions ``[0, k)`` are cached. ``refs`` maps each request holding blocks of the
    chain to its extent (it holds positions ``[0, extent)``); the reference count of
    position ``j`` is the number of extents above ``j``, so it never increases with ``j``
    and the unreferenced cached positions form the suffix ``[max(extents), k)``. That
    suffix sits on the pool's LRU list as ``runs``, highest positions (freed earliest)
    first.
    """

    __slots__ = ("k", "refs", "runs")

    def __init__(self, k: int = 0, refs: dict[int, int] | None = None) -> None:
        self.k = k
        self.refs: dict[int, int] = {} if refs is None else refs
        self.runs: list[list] = []


class BlockPool:
    """Paged KV cache of one instance, with vLLM v1's prefix cache and eviction order.

    The pool has ``blocks`` usable blocks. A free block is either hashless (never filled,
    or freed while partial or duplicate) or cached (full, with a hash, reusable by a prefix
    hit). As in vLLM's free-block queue, hashless free blocks are handed out first and
    cached free blocks are evicted least recently freed first; a request frees its blocks
    tail first.

    Cached blocks are kept as chains (:class:`_Group`): the engine blocks of one trace
    hash block (``ratio`` of them), or the full blocks a request adds beyond its full
    trace blocks (key ``~request``, reachable only by that request when it resumes after a
    preemption). Free cached blocks sit on the LRU list as runs ``[key, lo, hi]`` of
    consecutive positions of one chain (``[key, lo, hi, chain]``), so the cost is per run,
    not per block; blocks nobody can look up again (a request's chains no other unfinished
    request shares) leave as anonymous runs (``[None, 0, count, None]``).

    Parameters
    ----------
    blocks : int
        Usable blocks.
    ratio : int
        Engine blocks per trace block (the size of each block of a private ``range`` segment,
        see :meth:`cache_blocks`).
    """

    __slots__ = ("blocks", "ratio", "hfree", "lru", "lru_n", "groups", "peak_used")

    def __init__(self, blocks: int, ratio: int = 1) -> None:
        self.blocks = int(blocks)
        self.ratio = int(ratio)
        self.hfree = self.blocks  # hashless free blocks
        self.lru: deque[list] = deque()  # runs [key, lo, hi, chain]; empty runs are skipped
        self.lru_n = 0  # cached free blocks
        self.groups: dict[int, _Group] = {}
        self.peak_used = 0

    def clone(self) -> BlockPool:
        """Independent copy."""
        c = BlockPool.__new__(BlockPool)
        c.blocks, c.hfree, c.lru_n, c.peak_used = self.blocks, self.hfree, self.lru_n, self.peak_used
        c.ratio = self.ratio
        c.groups = {}
        new_g: dict[int, _Group] = {}
        for key, g in self.groups.items():
            ng = _Group()
            ng.k = g.k
            ng.refs = dict(g.refs)
            c.groups[key] = new_g[id(g)] = ng
        runs: dict[int, list] = {}
        c.lru = deque()
        for r in self.lru:
            # a dead run may name a chain that is gone: give it a detached one
            nr = [r[0], r[1], r[2], None if r[3] is None else new_g.get(id(r[3])) or _Group()]
            runs[id(r)] = nr
            c.lru.append(nr)
        for key, g in self.groups.items():
            c.groups[key].runs = [runs[id(r)] for r in g.runs]
        return c

    # ------------------------------------------------------------------ queries

    def free(self) -> int:
        """Free blocks (hashless + cached evictable)."""
        return self.hfree + self.lru_n

    def used(self) -> int:
        """Blocks held by requests."""
        return self.blocks - self.hfree - self.lru_n

    def cached(self, key: int) -> int:
        """Cached prefix length of chain ``key``, blocks."""
        g = self.groups.get(key)
        return g.k if g is not None else 0

    def hit(self, keys: list[int], ratio: int, limit: int) -> int:
        """Longest cached prefix of the trace blocks ``keys`` (``ratio`` engine blocks each),
        at most ``limit`` blocks."""
        get = self.groups.get
        hit = 0
        for key in keys:  # once per trace block per instance per routing decision
            g = get(key)
            if g is None:
                break
            k = g.k
            hit += k
            if k < ratio:
                break
        return hit if hit < limit else limit

    def lookup(self, keys: list[int], ratio: int, limit: int, own: int | None = None) -> tuple[int, int]:
        """Longest cached prefix of a request and how much of it is free (evictable).

        Parameters
        ----------
        keys : list of int
            Keys of the request's full trace blocks, in order (``ratio`` engine blocks each).
        ratio : int
            Engine blocks per trace block.
        limit : int
            Most blocks the hit may cover.
        own : int, optional
            Key of the request's own chain (its blocks beyond the trace blocks).

        Returns
        -------
        (hit, evictable) : tuple of int
            Hit blocks, and how many of them have no holder (they leave the free pool when
            the request takes them).
        """
        groups = self.groups
        get = groups.get
        hit = 0
        ev = 0
        for key in keys:
            if hit >= limit:
                return limit, ev
            g = get(key)
            if g is None:
                return hit, ev
            k = g.k
            e = limit - hit
            if k < e:
                e = k
            if e:
                refs = g.refs
                f = max(refs.values()) if refs else 0
                if e > f:
                    ev += e - f
            hit += e
            if k < ratio:
                return hit, ev
        if own is not None and hit < limit:
            g = groups.get(own)
            if g is not None:
                e = min(g.k, limit - hit)
                if e:
                    f = max(g.refs.values()) if g.refs else 0
                    if e > f:
                        ev += e - f
                hit += e
        return hit, ev

    # ------------------------------------------------------------------ changes

    def alloc(self, n: int) -> None:
        """Take ``n`` blocks (hashless first, then evict least recently freed cached ones)."""
        if n <= 0:
            return
        take = n if n < self.hfree else self.hfree
        self.hfree -= take
        n -= take
        if n:
            self._evict(n)
        u = self.blocks - self.hfree - self.lru_n
        if u > self.peak_used:
            self.peak_used = u

    def _evict(self, n: int) -> None:
        if n > self.lru_n:
            raise RuntimeError(f"block pool exhausted: {n} more blocks than free")
        self.lru_n -= n
        lru = self.lru
        popleft = lru.popleft
        groups = self.groups
        # Once per eviction of every allocation of a full pool: each run's fields are read
        # once, and the anonymous and chain runs share the path (a chain run also shortens
        # its chain).
        while n:
            run = lru[0]
            lo = run[1]
            hi = run[2]
            if hi <= lo:  # dead (taken back by a hit)
                popleft()
                continue
            g = run[3]
            if n < hi - lo:
                run[2] = hi - n
                if g is not None:
                    g.k -= n
                return
            n -= hi - lo
            run[2] = lo
            popleft()
            if g is not None:  # None: an anonymous run (blocks nobody will look up again)
                g.k -= hi - lo
                del g.runs[0]
                if not g.k and not g.refs:
                    del groups[run[0]]

    def take(self, key: int, extent: int, rid: int) -> None:
        """Request ``rid`` takes positions ``[0, extent)`` of chain ``key`` (a prefix hit)."""
        g = self.groups[key]
        f = max(g.refs.values()) if g.refs else 0
        if extent > f:
            runs = g.runs
            while runs and runs[-1][1] < extent:
                run = runs[-1]
                if run[2] <= extent:
                    self.lru_n -= run[2] - run[1]
                    run[1] = run[2]  # dead; dropped from the LRU list lazily
                    runs.pop()
                else:
                    self.lru_n -= extent - run[1]
                    run[1] = extent
                    break
        g.refs[rid] = extent

    def extend(self, key: int, pos: int, count: int, rid: int) -> bool:
        """Cache ``count`` full blocks of ``rid`` at positions ``pos...`` of chain ``key``.

        Succeeds when ``rid`` holds exactly ``[0, pos)`` of the chain and nobody has cached
        beyond ``pos``; otherwise the blocks are duplicates of cached ones and stay
        hashless (returns False).
        """
        g = self.groups.get(key)
        if g is None:
            if pos:
                return False
            g = self.groups[key] = _Group()
        if g.k != pos or g.refs.get(rid, 0) != pos:
            return False
        g.k = pos + count
        g.refs[rid] = pos + count
        return True

    def drop(self, key: int, rid: int) -> None:
        """``rid`` releases its positions of chain ``key``; those nobody else holds are freed."""
        g = self.groups[key]
        e = g.refs.pop(rid)
        f = max(g.refs.values()) if g.refs else 0
        if e > f:
            run = [key, f, e, g]
            self.lru.append(run)
            g.runs.append(run)
            self.lru_n += e - f
        elif g.k == 0 and not g.refs:
            del self.groups[key]

    # ------------------------------------------------------------------ per request

    def cache_blocks(self, rid: int, held: list[Any], first: int, upto: int, tfull: int,
                     ratio: int, hashes: list[int], h0: int, pending: dict[int, int]
                     ) -> tuple[int, int]:
        """Enter request ``rid``'s full blocks ``[first, upto)`` into the prefix cache.

        Blocks inside the request's hashed trace blocks (``tfull`` of them, ``ratio`` per
        trace block, trace hash ``hashes[h0 + k]``) join the chain of their trace hash;
        blocks past them join the request's own chain (key ``~rid``). A block whose chain
        someone else cached further (two requests computing one prefix at once) stays
        hashless, as :meth:`extend` says. Blocks of a chain no other unfinished request
        shares (``pending[key] == 1``, or the own chain) that continue what ``rid`` holds
        are kept out of the index as private segments in ``held``: ``(key, pos, count)``, or,
        for consecutive whole trace blocks, one ``range`` of their indices in ``hashes``
        (``ratio`` blocks each, the pool's :attr:`ratio`). Nobody else will look them up, so
        they cost no chain bookkeeping until the request is preempted
        (:meth:`register_blocks`) or finishes (:meth:`release_blocks`).

        Parameters
        ----------
        rid : int
            The request.
        held : list
            What ``rid`` holds, in block order (chain keys and private segments); appended to.
        first, upto : int
            Blocks already examined, and blocks to examine up to (exclusive).
        tfull : int
            Engine blocks of ``rid`` inside its hashed trace blocks.
        ratio : int
            Engine blocks per trace block.
        hashes : list of int
            The workload's hash list; ``rid``'s trace hashes start at ``h0``.
        h0 : int
            Offset of ``rid``'s hashes in ``hashes``.
        pending : dict
            Unfinished requests whose hash list holds each key (occurrences).

        Returns
        -------
        (ext, private) : tuple of int
            Blocks added as chain positions, and blocks added in private segments.
        """
        groups = self.groups
        get = groups.get
        append = held.append
        b = first
        ext = 0
        priv = 0
        lim = upto if upto < tfull else tfull
        while b < upto:
            if b < lim and not b % ratio and b + ratio <= lim:
                # Whole trace blocks from a trace-block boundary (the common case): position 0
                # of each chain, ``ratio`` blocks each; the same steps as the general case
                # below. Consecutive private ones are held as one ``range`` of hash indices.
                j = h0 + b // ratio
                j_end = h0 + lim // ratio
                run0 = -1  # first hash index of the current run of private whole blocks
                for key in hashes[j:j_end]:  # trace hashes, >= 0
                    g = get(key)
                    if g is None and pending[key] == 1:  # nobody else will look this chain up
                        if run0 < 0:
                            run0 = j
                        j += 1
                        continue
                    if run0 >= 0:
                        append(range(run0, j))
                        priv += (j - run0) * ratio
                        run0 = -1
                    if g is None:
                        groups[key] = _Group(ratio, {rid: ratio})
                        append(key)
                        ext += ratio
                    elif not g.k and not g.refs.get(rid, 0):
                        g.k = ratio
                        g.refs[rid] = ratio
                        append(key)
                        ext += ratio
                    j += 1
                if run0 >= 0:
                    append(range(run0, j))
                    priv += (j - run0) * ratio
                b = (lim // ratio) * ratio
                continue
            if b < tfull:
                gi = b // ratio
                pos = b - gi * ratio
                end = (gi + 1) * ratio
                cnt = (upto if upto < end else end) - b
                key = hashes[h0 + gi]
            else:
                pos = b - tfull
                cnt = upto - b
                key = ~rid
            b += cnt
            # extend(), inlined: a partial trace block, or the request's own chain
            g = get(key)
            if g is None:
                if (key < 0 or pending[key] == 1) and (not pos or (held and type(held[-1]) is tuple and held[-1][0] == key
                                          and held[-1][1] + held[-1][2] == pos)):
                    append((key, pos, cnt))  # nobody else will look this chain up
                    priv += cnt
                    continue
                if pos:
                    continue
                groups[key] = _Group(cnt, {rid: cnt})
                append(key)
                ext += cnt
            elif g.k == pos and g.refs.get(rid, 0) == pos:
                g.k = pos + cnt
                g.refs[rid] = pos + cnt
                if not pos:
                    append(key)
                ext += cnt
        return ext, priv

    def release_blocks(self, rid: int, held: list[Any], hashless: int) -> None:
        """Free every block request ``rid`` holds: tail first (its own chain, then its trace
        blocks backwards), private segments as anonymous runs, and ``hashless`` blocks.

        Parameters
        ----------
        rid : int
            The request.
        held : list
            What ``rid`` holds (chain keys and private segments), in block order.
        hashless : int
            Blocks ``rid`` holds outside any chain or segment.
        """
        groups = self.groups
        lru = self.lru
        append = lru.append
        freed = 0
        anon = 0
        tup = tuple
        ratio = self.ratio
        for key in reversed(held):  # drop(), inlined (once per held chain of every request)
            if type(key) is not int:  # private cached blocks: one anonymous run
                anon += key[2] if type(key) is tup else len(key) * ratio
                continue
            if anon:
                append([None, 0, anon, None])
                freed += anon
                anon = 0
            g = groups[key]
            refs = g.refs
            e = refs.pop(rid)
            f = max(refs.values()) if refs else 0
            if e > f:
                run = [key, f, e, g]
                append(run)
                g.runs.append(run)
                freed += e - f
            elif not g.k and not refs:
                del groups[key]
        if anon:
            lru.append([None, 0, anon, None])
            freed += anon
        self.lru_n += freed
        self.hfree += hashless

    def register_blocks(self, rid: int, held: list[Any], hashes: list[int]) -> tuple[list[Any], int]:
        """Enter ``rid``'s private segments into the index (before a preemption, so that the
        request finds them when it comes back); ``hashes``: the workload's hash list (what a
        ``range`` segment indexes).

        Returns
        -------
        (held, ext) : tuple
            The new holdings (chain keys only), and the blocks that became chain positions.
        """
        groups = self.groups
        out: list[Any] = []
        ext = 0
        ratio = self.ratio
        for item in held:
            if type(item) is int:
                out.append(item)
                continue
            if type(item) is range:  # whole trace blocks, as (hashes[j], 0, ratio) each
                for j in item:
                    key = hashes[j]
                    g = groups.get(key)
                    if g is None:
                        groups[key] = _Group(ratio, {rid: ratio})
                        out.append(key)
                    else:
                        g.k = ratio
                        g.refs[rid] = ratio
                    ext += ratio
                continue
            key, pos, cnt = item
            g = groups.get(key)
            if g is None:
                groups[key] = _Group(cnt, {rid: cnt})
                out.append(key)
            else:  # continues the chain registered by the previous segment
                g.k = pos + cnt
                g.refs[rid] = pos + cnt
            ext += cnt
        return out, ext

    def free_hashless(self, n: int) -> None:
        """Return ``n`` hashless blocks."""
        self.hfree += n

    def check(self, held: dict[int, dict[int, int]], hashless: int) -> None:
        """Assert the bookkeeping.

        Parameters
        ----------
        held : dict
            ``{key: {request: extent}}`` of every running request's chain holdings.
        hashless : int
            Hashless blocks held by running requests.
        """
        refd = 0
        for key, g in self.groups.items():
            assert g.refs == held.get(key, {}), (key, g.refs, held.get(key))
            f = max(g.refs.values()) if g.refs else 0
            assert 0 <= f <= g.k, (key, f, g.k)
            free = sum(r[2] - r[1] for r in g.runs)
            assert free == g.k - f, (key, free, g.k, f)
            pos = g.k
            for r in g.runs:  # contiguous, highest first
                assert r[2] == pos and r[1] < r[2], (key, r, pos)
                pos = r[1]
            refd += f
        assert all(k in self.groups for k in held if held[k]), "held chain missing"
        assert self.lru_n == sum(max(r[2] - r[1], 0) for r in self.lru)
        assert self.hfree >= 0 and self.lru_n >= 0
        assert self.blocks == self.hfree + self.lru_n + refd + hashless, (
            self.blocks, self.hfree, self.lru_n, refd, hashless)
