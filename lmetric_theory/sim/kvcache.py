"""KV cache of one instance with its prefix cache (reserved-KV engine).

Blocks of the workload's block size are keyed by block hash (a hash names its whole prefix
chain). A cached block is pinned while running requests reference it; unreferenced blocks
sit on an LRU list and are evicted oldest first. Occupancy counts cached blocks plus each
running request's private reservation (partial prompt block, duplicate blocks and output).
"""

from __future__ import annotations

from collections import OrderedDict
from itertools import islice

__all__ = ["Admission", "KVCache"]

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
