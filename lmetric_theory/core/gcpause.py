"""Pausing Python's cyclic garbage collector around allocation-heavy phases.

The collector runs a pass every 700 net container allocations and, every so often, rescans
everything that survived. Phases that build many long-lived objects and few reference
cycles (imports, a trace's rows, a simulator's per-request tables, the event loop) pay for
passes that free nothing: their garbage is freed by reference counting. Pausing it there
changes no value, only when cycles are collected (at the next pass after the phase).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["cyclic_gc_paused"]


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Disable the cyclic collector inside the ``with`` block; re-enable it after (if it
    was enabled), also on an exception. Nested uses are fine."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()
