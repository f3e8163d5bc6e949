"""Typed simulator events and the kinds of plan an instance can be executing.

The event queue holds ``(time, seq, event)`` entries. ``seq`` is unique, so ties in time
are broken by it and events themselves are never compared. Arrivals carry sequence numbers
from :data:`ARRIVAL_SEQ` upwards (their index in the workload added), so at one instant
every iteration end comes before every arrival, and arrivals keep workload order;
:data:`WAKE_SEQ` numbers the step starts that must follow every arrival of the same instant.
Events are typed named tuples (cheap to create, read by field name).
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

__all__ = ["ARRIVAL_SEQ", "WAKE_SEQ", "Arrival", "Event", "IterationEnd", "PlanKind", "StepStart"]

#: First sequence number of arrivals (iteration ends use smaller numbers).
ARRIVAL_SEQ = 1 << 40
#: First sequence number of step starts (after every arrival of the same instant).
WAKE_SEQ = 1 << 50


class PlanKind(IntEnum):
    """What an instance is doing between two of its events."""

    IDLE = 0
    """Nothing scheduled."""
    MIXED = 1
    """One iteration with prefill chunks (and decodes)."""
    DECODE = 2
    """A stretch of decode-only iterations (one or more, advanced in closed form)."""
    WAKING = 3
    """Idle, with a :class:`StepStart` queued after the arrivals of the current instant."""


class Arrival(NamedTuple):
    """Request ``request`` (index in the workload) reaches the router."""

    request: int


class IterationEnd(NamedTuple):
    """The plan of ``instance`` numbered ``version`` ends (stale if the plan was replaced)."""

    instance: int
    version: int


class StepStart(NamedTuple):
    """An idle ``instance`` starts an iteration (after every arrival of the same instant)."""

    instance: int
    version: int


Event = Arrival | IterationEnd | StepStart
