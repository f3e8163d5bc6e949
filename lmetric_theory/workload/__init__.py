"""Workloads: trace loaders, the synthetic generator, replay and selection."""

from lmetric_theory.workload.base import Sessions, Workload
from lmetric_theory.workload.errors import TraceError, TraceOrderWarning
from lmetric_theory.workload.loaders import (
    DEFAULT_BLOCK_SIZE,
    FORMATS,
    TRACE_FORMATS,
    detect_format,
    load_trace,
    make_workload,
    parse_trace,
)
from lmetric_theory.workload.synthetic import (
    KINDS,
    AgentParams,
    ApiParams,
    ChatParams,
    LengthDist,
    SyntheticParams,
    default_workload,
    synthetic,
)
from lmetric_theory.workload.transform import open_loop_at, scale_rate, select

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "FORMATS",
    "KINDS",
    "AgentParams",
    "ApiParams",
    "ChatParams",
    "LengthDist",
    "Sessions",
    "SyntheticParams",
    "TRACE_FORMATS",
    "TraceError",
    "TraceOrderWarning",
    "Workload",
    "default_workload",
    "detect_format",
    "load_trace",
    "make_workload",
    "parse_trace",
    "open_loop_at",
    "scale_rate",
    "select",
    "synthetic",
]
