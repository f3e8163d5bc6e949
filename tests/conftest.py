"""Shared fixtures: paths to the shared real-data folder (skip with a reason when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MOONCAKE = SHARED / "traces" / "mooncake_conversation_trace.jsonl"
CALIBRATION = SHARED / "calibration" / "h100_llama3_8b_iterations.csv"


@pytest.fixture(scope="session")
def mooncake_path() -> Path:
    """The shared Mooncake conversation trace; skips the test when ../shared is absent."""
    if not MOONCAKE.is_file():
        pytest.skip(f"shared Mooncake trace not found at ../shared/traces/{MOONCAKE.name}")
    return MOONCAKE


@pytest.fixture(scope="session")
def calibration_path() -> Path:
    """The shared H100 iteration-latency CSV; skips the test when ../shared is absent."""
    if not CALIBRATION.is_file():
        pytest.skip(f"shared calibration CSV not found at ../shared/calibration/{CALIBRATION.name}")
    return CALIBRATION


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true",
                     help="also run tests marked slow (on by default when CI is set)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow tests run in CI (``CI`` set) or with ``--slow``; elsewhere they skip, saying so."""
    import os

    if config.getoption("--slow") or os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow (CI runs them)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
