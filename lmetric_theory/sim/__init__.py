"""Discrete-event cluster simulator, iteration-latency model, presets and snapshot logs."""

from lmetric_theory.sim.config import SCHEDULERS, VIEWS, SimConfig, SimResult
from lmetric_theory.sim.engine import Simulator, simulate
from lmetric_theory.sim.latency import (
    FitReport,
    LatencyModel,
    Preset,
    fit_latency,
    list_presets,
    load_preset,
    preset_from_dict,
    roofline_preset,
)
from lmetric_theory.sim.scheduler import RouterCounters, Scheduler
from lmetric_theory.sim.snapshots import SIGNALS, SnapshotLog

__all__ = [
    "FitReport",
    "LatencyModel",
    "Preset",
    "RouterCounters",
    "SCHEDULERS",
    "Scheduler",
    "SIGNALS",
    "SimConfig",
    "SimResult",
    "Simulator",
    "SnapshotLog",
    "VIEWS",
    "fit_latency",
    "list_presets",
    "load_preset",
    "preset_from_dict",
    "roofline_preset",
    "simulate",
]
