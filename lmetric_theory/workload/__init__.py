"""Workloads: trace loaders, the synthetic generator, replay and selection."""

from lmetric_theory.workload.base import Workload

__all__ = ["Workload"]
