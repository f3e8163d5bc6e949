"""DynoSim (Dynamo's own offline simulator) as a third engine: ``--engine dynosim``.

DynoSim ships in the ``ai-dynamo-runtime`` wheel (the ``dynamo`` extra, pinned to 1.6.1);
:func:`simulate_dynosim` hands it a workload as a trace file and reads its per-request report
back into a :class:`~lmetric_theory.sim.config.SimResult`. It runs what DynoSim can run
itself: ``round-robin`` (its ``round_robin`` router) and ``dynamo-kv`` (its ``kv_router``,
built from the same ``KvRouterConfig`` JSON with the wheel's ``KvRouterConfig.from_json``).

The engines are made comparable (:func:`engine_args`): DynoSim's vLLM-shaped mocker gets the
same engine block size, KV blocks (the fast engine's usable blocks,
``capacity // block_size - 1``), ``max_num_seqs`` (``max_batch``), ``max_num_batched_tokens``
(``token_budget``), prefix caching and chunked prefill. The timing model cannot be made the
same in general: 1.6.1's offline replay offers ``polynomial`` (its own uncalibrated
baseline), ``fixed`` (a constant time per prefill pass and per decode pass) and AIC-backed
timing, none of which is our step-time formula. A latency model with only ``c0`` (every other
coefficient 0) is DynoSim's ``fixed`` model with ``prefill_ms = decode_ms = 1000 * c0``, and
is passed as such; any other model runs on DynoSim's ``polynomial`` timing, and the result's
``config["dynosim_timing"]`` says which was used. DynoSim's profile-derived tables cannot be
used from the 1.6.1 wheel alone (its replay refuses ``planner_profile_data``; the
forward-pass tables need the unshipped ``aisimulate_core``), and a pass mixing prefill and
decode is charged both its prefill and its decode time there. ``docs/simulator.md``
("DynoSim") gives the measured differences.

This is the only module that imports ``dynamo`` (lazily).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from lmetric_theory.sim.config import SimConfig, SimResult, tpot_s

__all__ = ["DYNOSIM_POLICIES", "DYNOSIM_VERSION", "DynoSimUnavailable", "engine_args",
           "require_dynosim", "simulate_dynosim", "timing_model"]

#: The ``ai-dynamo-runtime`` version the engine is written against (the ``dynamo`` extra).
DYNOSIM_VERSION = "1.6.1"
#: Policies DynoSim runs with its own routers: our name -> its ``router_mode``.
DYNOSIM_POLICIES: dict[str, str] = {"round-robin": "round_robin", "dynamo-kv": "kv_router"}


class DynoSimUnavailable(RuntimeError):
    """The ``dynamo`` extra is not installed (or is another version)."""


def require_dynosim() -> str:
    """The installed ``ai-dynamo-runtime`` version.

    Raises
    ------
    DynoSimUnavailable
        One line saying to install the ``dynamo`` extra.
    """
    from importlib import metadata

    os.environ.setdefault("DYN_LOG", "warn")  # read when the module loads
    try:
        import dynamo._core  # noqa: F401
        version = metadata.version("ai-dynamo-runtime")
    except (ImportError, metadata.PackageNotFoundError):
        raise DynoSimUnavailable(
            "--engine dynosim needs the dynamo extra: pip install -e \".[dynamo]\" "
            f"(ai-dynamo-runtime=={DYNOSIM_VERSION})") from None
    if version != DYNOSIM_VERSION:
        raise DynoSimUnavailable(
            f"--engine dynosim is written against ai-dynamo-runtime {DYNOSIM_VERSION}, found "
            f"{version}: pip install -e \".[dynamo]\"")
    return version


def timing_model(config: SimConfig) -> tuple[dict[str, Any] | None, str]:
    """DynoSim's timing model for ``config.latency`` and a one-line description.

    Returns
    -------
    (dict or None, str)
        ``{"type": "fixed", ...}`` for a ``c0``-only model (the same model), else ``None``
        (DynoSim's default ``polynomial`` timing, a different model).
    """
    lat = config.latency
    if lat.c_pf == 0 and lat.c_dec == 0 and lat.c_kv == 0 and lat.c_att == 0:
        ms = 1000.0 * lat.c0
        return ({"type": "fixed", "prefill_ms": ms, "decode_ms": ms},
                f"fixed {ms:g} ms per pass (the same model as ours: c0 only)")
    return None, "polynomial (DynoSim's own baseline; not our latency model)"


def engine_args(config: SimConfig, workload_block_size: int) -> dict[str, Any]:
    """``extra_engine_args`` of DynoSim's mocker matching ``config`` (see the module docstring)."""
    bs = config.block_size
    cap = (config.kv_capacity_tokens if config.kv_capacity_blocks is None
           else config.kv_capacity_blocks * workload_block_size)
    engine: dict[str, Any] = {
        "block_size": bs,
        "num_gpu_blocks": cap // bs - 1,
        "max_num_seqs": config.max_batch,
        "max_num_batched_tokens": config.token_budget,
        "enable_prefix_caching": True,
        "enable_chunked_prefill": True,
    }
    tm, _ = timing_model(config)
    if tm is not None:
        engine["timing_model"] = tm
    return {"engine": engine}


def _write_trace(workload: Any, path: Path) -> None:
    """The workload as a Mooncake JSONL trace (timestamps in ms, full-prompt hash ids)."""
    offs = np.asarray(workload.hash_offsets, dtype=np.int64)
    ids = np.asarray(workload.hash_ids, dtype=np.int64)
    t0 = float(workload.arrival_s[0]) if len(workload) else 0.0
    with path.open("w", encoding="utf-8") as f:
        for i in range(len(workload)):
            row = {"timestamp": round((float(workload.arrival_s[i]) - t0) * 1000.0, 6),
                   "input_length": int(workload.input_tokens[i]),
                   "output_length": int(workload.output_tokens[i]),
                   "hash_ids": ids[offs[i]:offs[i + 1]].tolist()}
            f.write(json.dumps(row) + "\n")


def _session_keys(path: str) -> list[tuple[str, int]]:
    """``(session_id, turn)`` of every line of a session trace, in file order."""
    keys: list[tuple[str, int]] = []
    turns: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            sid = str(json.loads(line)["session_id"])
            k = turns.get(sid, 0)
            turns[sid] = k + 1
            keys.append((sid, k))
    return keys


def _closed_loop_source(workload: Any) -> str:
    """The session trace file the workload is, whole and unchanged (DynoSim replays files)."""
    meta = workload.meta
    src = meta.get("source")
    whole = (src is not None and os.path.isfile(src)
             and int(meta.get("n_lines", -1)) - int(meta.get("skipped_lines", 0)) == len(workload)
             and not meta.get("transforms") and float(meta.get("rate_scale", 1.0)) == 1.0
             and meta.get("trace_format") == "mooncake-delta"
             and int(meta.get("reordered_lines", 0)) == 0)
    if not whole:
        raise ValueError("--engine dynosim replays a closed-loop session trace only as the whole "
                         "mooncake-delta file (no --count, rate scaling or skipped lines)")
    return str(src)


def simulate_dynosim(workload: Any, config: SimConfig, spec: Any, seed: int = 0) -> SimResult:
    """Replay ``workload`` on DynoSim with its own router for ``spec``.

    Parameters
    ----------
    workload : Workload
        Open loop (any trace or synthetic workload), or a closed-loop mooncake-delta session
        trace loaded whole (``config.concurrency`` sessions at a time).
    config : SimConfig
        Cluster settings (see :func:`engine_args`); ``view`` and ``signal_delay_s`` do not
        apply (DynoSim's router reads its own indexer and load tracking).
    spec : PolicySpec
        ``round-robin`` or ``dynamo-kv`` (its ``config`` file becomes DynoSim's
        ``KvRouterConfig``).
    seed : int
        Recorded only (DynoSim's replay takes no seed; its tie draws are its own).

    Returns
    -------
    SimResult
        Per request: arrival, worker, cached tokens, TTFT, TPOT, E2E and preemptions (its
        ``readmission_count``) from DynoSim's report; counters it does not report
        (iterations, events, per-instance KV peaks) are 0. DynoSim 1.6.1 reports each
        request's mean inter-token gap only (``itl_ms``, equal to the TPOT), not the gaps,
        so ``itl_gap_s`` stays ``None``; ``config["dynosim_itl_vs_tpot_max_abs_s"]`` is the
        largest difference between its mean gap and our TPOT.

    Raises
    ------
    ValueError
        A policy DynoSim cannot run, or a closed-loop workload that is not a whole trace file.
    DynoSimUnavailable
        Without the ``dynamo`` extra.
    """
    if spec.name not in DYNOSIM_POLICIES:
        raise ValueError(f"--engine dynosim runs only {', '.join(DYNOSIM_POLICIES)} (DynoSim's "
                         f"own routers), not {spec.name!r}")
    os.environ.setdefault("DYN_LOG", "warn")  # its router logs every decision at INFO
    version = require_dynosim()
    import dynamo._core as dc

    kwargs: dict[str, Any] = dict(
        num_workers=config.n_instances, router_mode=DYNOSIM_POLICIES[spec.name],
        trace_block_size=int(workload.block_size),
        extra_engine_args=engine_args(config, int(workload.block_size)),
        capture_per_request=True)
    if spec.name == "dynamo-kv":
        settings = spec.params.settings()
        kwargs["router_config"] = dc.KvRouterConfig.from_json(settings.json_text)
    n = len(workload)
    closed = workload.sessions is not None and workload.sessions.closed_loop
    with tempfile.TemporaryDirectory(prefix="lmetric-dynosim-") as tmp:
        if closed:
            path = _closed_loop_source(workload)
            kwargs["trace_format"] = "mooncake-delta"
            if config.concurrency is not None:
                kwargs["replay_concurrency"] = int(config.concurrency)
        else:
            path = str(Path(tmp) / "trace.jsonl")
            _write_trace(workload, Path(path))
            if config.concurrency is not None:
                kwargs["replay_concurrency"] = int(config.concurrency)
        report = dc.run_mocker_trace_replay([path], **kwargs)
        rows = report.per_request or []
        order = _match(rows, workload, path if closed else None)
    t0 = float(workload.arrival_s[0]) if n else 0.0
    arrival = np.full(n, np.nan)
    instance = np.full(n, -1, dtype=np.int32)
    cached = np.full(n, -1, dtype=np.int64)
    ttft = np.full(n, np.nan)
    first = np.full(n, np.nan)
    finish = np.full(n, np.nan)
    pre = np.zeros(n, dtype=np.int64)
    itl_mean = np.full(n, np.nan)
    out_tok = np.asarray(workload.output_tokens, dtype=np.int64)
    for row, i in zip(rows, order, strict=True):
        if row.get("terminal_status") != "completed":
            continue
        arrival[i] = t0 + float(row["arrival_time_ms"]) / 1000.0
        w = row.get("decode_worker_idx")
        instance[i] = -1 if w is None else int(w)
        cached[i] = int(row.get("reused_input_tokens") or 0)
        ttft[i] = float(row["ttft_ms"]) / 1000.0
        first[i] = t0 + float(row["first_token_ms"]) / 1000.0
        finish[i] = t0 + float(row["last_token_ms"]) / 1000.0
        # a preempted request is re-admitted (recompute): its readmissions are its preemptions
        pre[i] = int(row.get("readmission_count") or 0)
        if row.get("itl_ms") is not None:
            itl_mean[i] = float(row["itl_ms"]) / 1000.0
    e2e = finish - arrival
    tpot = tpot_s(first, finish, out_tok)
    nwk = config.n_instances
    inp = np.asarray(workload.input_tokens, dtype=np.int64)
    ok = instance >= 0
    pf = np.bincount(instance[ok], weights=(inp - cached)[ok], minlength=nwk).astype(np.int64)
    prod = np.bincount(instance[ok], weights=out_tok[ok], minlength=nwk).astype(np.int64)
    _, timing = timing_model(config)
    summary = report.summary
    cfg = config.to_dict() | {
        "seed": seed, "engine": "dynosim", "dynosim_version": version,
        "dynosim_timing": timing, "dynosim_engine_args": engine_args(config, int(workload.block_size)),
        "dynosim_wall_time_ms": float(summary.get("wall_time_ms", math.nan)),
        "dynosim_prefix_cache_reused_ratio": float(summary.get("prefix_cache_reused_ratio", math.nan)),
        # DynoSim reports each request's mean inter-token gap only (no per-token series):
        # the largest difference from our TPOT ((last - first) / (output - 1)), seconds
        "dynosim_itl_vs_tpot_max_abs_s": _max_abs(itl_mean, tpot),
    }
    return SimResult(
        arrival_s=arrival, instance=instance, input_tokens=inp, output_tokens=out_tok,
        cached_tokens=cached, ttft_s=ttft, tpot_s=tpot, e2e_s=e2e, snapshots=None,
        iterations=0, events=0, peak_kv_tokens=np.zeros(nwk, dtype=np.int64),
        prefill_tokens_computed=pf, output_tokens_produced=prod,
        end_time_s=float(np.nanmax(finish)) if np.isfinite(finish).any() else 0.0,
        policy=str(spec), config=cfg, first_token_s=first, finish_s=finish,
        preemptions=pre,
        preemptions_per_instance=np.bincount(instance[ok], weights=pre[ok],
                                             minlength=nwk).astype(np.int64))


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    """Largest ``|a - b|`` where both are finite (NaN when nowhere)."""
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.max(np.abs(a[ok] - b[ok]))) if ok.any() else math.nan


def _match(rows: list[dict[str, Any]], workload: Any, session_path: str | None) -> list[int]:
    """The workload row of each DynoSim report row.

    Session traces match on ``(session_id, turn_index)`` against the file's lines; open-loop
    traces on ``(arrival ms, input length, output length)``, equal keys in order.
    """
    n = len(workload)
    if len(rows) != n:
        raise RuntimeError(f"DynoSim reported {len(rows)} requests for a workload of {n}")
    if session_path is not None:
        where = {k: i for i, k in enumerate(_session_keys(session_path))}
        try:
            return [where[(str(r["session_id"]), int(r["turn_index"]))] for r in rows]
        except KeyError as exc:
            raise RuntimeError(f"DynoSim reported a request not in the trace: {exc}") from None
    t0 = float(workload.arrival_s[0]) if n else 0.0
    ours = sorted(range(n), key=lambda i: (round((float(workload.arrival_s[i]) - t0) * 1000.0, 3),
                                           int(workload.input_tokens[i]),
                                           int(workload.output_tokens[i]), i))
    theirs = sorted(range(n), key=lambda j: (round(float(rows[j]["arrival_time_ms"]), 3),
                                             int(rows[j]["input_length"]),
                                             int(rows[j]["requested_output_length"]), j))
    order = [0] * n
    for i, j in zip(ours, theirs, strict=True):
        order[j] = i
    return order
