"""Shared fixtures and helpers: paths to the shared real-data folder (skip with a reason when
absent), a workload from request tuples, a free local port.

Test modules import the helpers with ``from conftest import ...`` (the tests folder is on
``sys.path`` under pytest's default import mode).
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from lmetric_theory.workload.base import Workload

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


def requests_workload(reqs: list[tuple[float, int, int, list[int]]], block: int) -> Workload:
    """A workload from ``(arrival s, input tokens, output tokens, block hashes)`` tuples,
    ``block`` tokens per hash block (each request lists ``ceil(input / block)`` hashes)."""
    hashes: list[int] = []
    offs = [0]
    for _, inp, _, hs in reqs:
        assert len(hs) == -(-inp // block)
        hashes.extend(hs)
        offs.append(len(hashes))
    return Workload(
        arrival_s=np.array([r[0] for r in reqs], dtype=np.float64),
        input_tokens=np.array([r[1] for r in reqs], dtype=np.int64),
        output_tokens=np.array([r[2] for r in reqs], dtype=np.int64),
        hash_ids=np.array(hashes, dtype=np.int64),
        hash_offsets=np.array(offs, dtype=np.int64),
        block_size=block,
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def vllm_availability() -> tuple[bool, str]:
    """Whether vLLM's own scheduler can run here, and why not (``""`` when it can).

    Called at module level by the vLLM engine's test modules only: it imports vLLM (tens of
    seconds), which no other test module should pay for.
    """
    from lmetric_theory.sim.vllm_adapter import VllmUnavailable, require_vllm

    try:
        require_vllm()
        import vllm  # noqa: F401
    except (VllmUnavailable, ImportError) as exc:  # pragma: no cover - depends on the install
        return False, f"vLLM engine unavailable: {exc}"
    return True, ""


def _advice_workload(seed: int) -> Workload:
    from lmetric_theory.workload.spec import synthetic_from_spec

    return synthetic_from_spec("synthetic:api:count=240", seed=seed)


@pytest.fixture(scope="session")
def advice_doc() -> dict:
    """A small advice document: 240 synthetic API requests regenerated per seed, 4 instances,
    current policies round-robin and vllm-v1, loads 0.5 and 1 of saturation, 2 seeds, an SLO
    of TTFT <= 1 s; ``_stages`` lists the progress stages reported."""
    from lmetric_theory import audit as AU
    from lmetric_theory.experiments import advise as A
    from lmetric_theory.policies import parse_spec
    from lmetric_theory.sim import SimConfig, load_preset
    from lmetric_theory.sim.metrics import Slo

    preset = load_preset("h100-llama3-8b-calibrated")
    cfg = SimConfig.from_preset(preset, 4, record_snapshots=False)
    s = A.AdviseSettings(current=(parse_spec("round-robin"), parse_spec("vllm-v1")),
                         reference=AU.default_reference(preset, _advice_workload(0)),
                         loads=(0.5, 1.0), focus=0.5, seeds=2, slo=Slo(ttft_s=1.0), points=2,
                         cf_samples=2, cf_horizon_s=2.0)
    stages: list[str] = []
    doc = A.advise(_advice_workload, cfg, s, source="api-240", workers=1,
                   progress=lambda st, d, t: stages.append(st))
    doc["_stages"] = stages
    return doc
