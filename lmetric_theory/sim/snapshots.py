"""What the router saw at every routing decision, as columnar numpy arrays.

A :class:`SnapshotLog` holds, for ``D`` decisions over ``N`` instances, the per-instance
signals the policy was given (the request's uncached tokens, queued prefill tokens,
running batch size, waiting count, KV usage, prefix hit in blocks and the router's own
queued / in-flight / all-token / in-flight-new-token counters) plus, per decision, the
request index, the decision time and the chosen instance. 16 instances cost
10 x 4 x 16 + 4 + 8 + 4 + 4 = 660 bytes per decision, about 660 MB per million decisions.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from lmetric_theory.core.fileio import atomic_write

__all__ = ["SnapshotLog", "SIGNALS"]

#: Per-instance signal columns, in order, with their dtypes.
SIGNALS: tuple[tuple[str, type], ...] = (
    ("uncached", np.int32),
    ("queued", np.int32),
    ("running", np.int32),
    ("waiting", np.int32),
    ("kv_usage", np.float32),
    ("hit_blocks", np.int32),
    ("router_queued", np.int32),
    ("router_inflight", np.int32),
    ("router_all_tokens", np.int32),
    ("router_inflight_new_tokens", np.int32),
)

#: Router-state columns (docs/router_state.md), present when recorded: the deciding replica
#: (D,) and the engine-side true counters (D, N).
OPTIONAL: tuple[str, ...] = ("replica", "true_batch", "true_queued_tokens")

#: Columns added after the first release: logs written without them load with the
#: defaults of :class:`~lmetric_theory.policies.base.DecisionView`.
_LATER = ("hit_blocks", "router_queued", "router_inflight", "router_all_tokens",
          "router_inflight_new_tokens")


@dataclass(frozen=True, slots=True)
class SnapshotLog:
    """Router views of ``D`` decisions over ``N`` instances.

    Attributes
    ----------
    request : np.ndarray, shape (D,), int32
        Index of the routed request in the workload.
    time_s : np.ndarray, shape (D,), float64
        Decision (arrival) time, seconds.
    chosen : np.ndarray, shape (D,), int32
        Instance the request was sent to.
    input_tokens : np.ndarray, shape (D,), int32
        Prompt length of the routed request, tokens.
    uncached : np.ndarray, shape (D, N), int32
        The request's uncached prompt tokens on each instance as the router saw them, tokens.
    queued : np.ndarray, shape (D, N), int32
        Prefill tokens queued (admitted or waiting, not yet computed) per instance, tokens.
    running : np.ndarray, shape (D, N), int32
        Running (prefilling or decoding) requests per instance.
    waiting : np.ndarray, shape (D, N), int32
        Requests waiting for admission per instance.
    kv_usage : np.ndarray, shape (D, N), float32
        Fraction of KV capacity held by running requests (cached-but-free blocks excluded).
    hit_blocks : np.ndarray, shape (D, N), int32
        The request's prefix hit per instance in the router's cache view, engine blocks of
        ``meta["block_size"]`` tokens.
    router_queued, router_inflight, router_all_tokens : np.ndarray, shape (D, N), int32
        The router's own counters: queued prefill tokens, in-flight requests, tokens of
        in-flight requests (see :class:`~lmetric_theory.policies.base.DecisionView`).
    router_inflight_new_tokens : np.ndarray, shape (D, N), int32
        Predicted new (uncached) tokens of the router's in-flight requests, released at
        completion, tokens (logs written before the column existed load it as
        ``router_queued``, the closest counter they hold).
    meta : dict
        Settings the log was recorded under (view, signal delay, ...).
    replica : np.ndarray, shape (D,), int32, or None
        Router replica that took each decision (docs/router_state.md).
    true_batch, true_queued_tokens : np.ndarray, shape (D, N), int32, or None
        The counters of one router that sees every dispatch and every engine event (the
        engine-side truth next to ``router_inflight`` / ``router_queued``, which are the
        deciding replica's own): in-flight requests and queued prefill tokens. With one
        router they equal the router view.
    """

    request: np.ndarray
    time_s: np.ndarray
    chosen: np.ndarray
    input_tokens: np.ndarray
    uncached: np.ndarray
    queued: np.ndarray
    running: np.ndarray
    waiting: np.ndarray
    kv_usage: np.ndarray
    hit_blocks: np.ndarray
    router_queued: np.ndarray
    router_inflight: np.ndarray
    router_all_tokens: np.ndarray
    router_inflight_new_tokens: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    replica: np.ndarray | None = None
    true_batch: np.ndarray | None = None
    true_queued_tokens: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.request.shape[0])

    @property
    def n_instances(self) -> int:
        """Number of instances ``N``."""
        return int(self.uncached.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays."""
        return sum(int(getattr(self, n).nbytes) for n in self._columns())

    @staticmethod
    def _columns() -> tuple[str, ...]:
        return ("request", "time_s", "chosen", "input_tokens") + tuple(n for n, _ in SIGNALS)

    @classmethod
    def empty(cls, n_decisions: int, n_instances: int, meta: dict[str, Any] | None = None) -> SnapshotLog:
        """A zero-filled log of shape ``(n_decisions, n_instances)`` (to be filled in place)."""
        d, n = int(n_decisions), int(n_instances)
        return cls(
            request=np.zeros(d, np.int32),
            time_s=np.zeros(d, np.float64),
            chosen=np.zeros(d, np.int32),
            input_tokens=np.zeros(d, np.int32),
            **{name: np.zeros((d, n), dt) for name, dt in SIGNALS},
            meta=dict(meta or {}),
        )

    def optional_columns(self) -> dict[str, np.ndarray]:
        """The router-state columns this log holds (``replica``, ``true_batch``,
        ``true_queued_tokens``; none for logs recorded without them)."""
        return {c: getattr(self, c) for c in OPTIONAL if getattr(self, c) is not None}

    def with_router_state(self) -> SnapshotLog:
        """This log with the router-state columns (one router: replica 0, and the true
        counters equal to the router's own), when it lacks them."""
        if self.true_batch is not None:
            return self
        return replace(self, replica=np.zeros(len(self), np.int32),
                       true_batch=np.array(self.router_inflight, np.int32),
                       true_queued_tokens=np.array(self.router_queued, np.int32))

    def head(self, d: int) -> SnapshotLog:
        """The first ``d`` decisions (views, no copy)."""
        cols = {c: getattr(self, c)[:d] for c in self._columns()}
        cols.update({c: a[:d] for c, a in self.optional_columns().items()})
        return SnapshotLog(**cols, meta=dict(self.meta))

    def copy(self) -> SnapshotLog:
        """Independent copy of every column."""
        cols = {c: np.array(getattr(self, c)) for c in self._columns()}
        cols.update({c: np.array(a) for c, a in self.optional_columns().items()})
        return SnapshotLog(**cols, meta=dict(self.meta))

    # ------------------------------------------------------------------ persistence

    def save_npz(self, path: str | os.PathLike[str]) -> None:
        """Write an uncompressed ``.npz`` atomically (temporary file, then rename)."""
        arrays = {c: getattr(self, c) for c in self._columns()}
        arrays.update(self.optional_columns())
        arrays["meta_json"] = np.frombuffer(json.dumps(self.meta).encode(), dtype=np.uint8)
        atomic_write(path, lambda f: np.savez(f, **arrays))

    @classmethod
    def load_npz(cls, path: str | os.PathLike[str]) -> SnapshotLog:
        """Read a log written by :meth:`save_npz`; ``ValueError`` naming a missing array."""
        with np.load(Path(path)) as z:
            missing = [c for c in cls._columns() if c not in z.files and c not in _LATER]
            if missing:
                raise ValueError(f"{path}: not a snapshot log, missing arrays {missing}")
            cols = {c: z[c] for c in cls._columns() + OPTIONAL if c in z.files}
            meta = json.loads(bytes(z["meta_json"]).decode()) if "meta_json" in z.files else {}
        return cls(**_fill_later(cols, meta), meta=meta)

    def save_parquet(self, path: str | os.PathLike[str]) -> None:
        """Write a Parquet file (one row per decision, per-instance signals as fixed-size lists;
        the router-state columns ``replica``, ``true_batch``, ``true_queued_tokens`` when the
        log holds them)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        n = self.n_instances
        cols: dict[str, Any] = {c: pa.array(getattr(self, c)) for c in ("request", "time_s", "chosen", "input_tokens")}
        for name, _ in SIGNALS:
            flat = pa.array(np.ascontiguousarray(getattr(self, name)).reshape(-1))
            cols[name] = pa.FixedSizeListArray.from_arrays(flat, n)
        for name, arr in self.optional_columns().items():  # router state, when recorded
            if arr.ndim == 1:
                cols[name] = pa.array(np.asarray(arr, np.int32))
            else:
                flat = pa.array(np.ascontiguousarray(arr, np.int32).reshape(-1))
                cols[name] = pa.FixedSizeListArray.from_arrays(flat, n)
        table = pa.table(cols).replace_schema_metadata(
            {"lmetric_snapshot_meta": json.dumps(self.meta), "n_instances": str(n)}
        )
        atomic_write(path, lambda f: pq.write_table(table, f))

    @classmethod
    def load_parquet(cls, path: str | os.PathLike[str]) -> SnapshotLog:
        """Read a log written by :meth:`save_parquet`."""
        import pyarrow.parquet as pq

        table = pq.read_table(Path(path))
        md = table.schema.metadata or {}
        if b"n_instances" not in md:
            raise ValueError(f"{path}: not a snapshot log (no n_instances metadata)")
        n = int(md[b"n_instances"])
        meta = json.loads(md.get(b"lmetric_snapshot_meta", b"{}"))
        cols: dict[str, Any] = {}
        for c in ("request", "time_s", "chosen", "input_tokens"):
            cols[c] = table.column(c).to_numpy()
        for name, dt in SIGNALS:
            if name in _LATER and name not in table.column_names:
                continue
            flat = table.column(name).combine_chunks().flatten().to_numpy()
            cols[name] = np.asarray(flat, dtype=dt).reshape(-1, n)
        for name in OPTIONAL:
            if name not in table.column_names:
                continue
            col = table.column(name).combine_chunks()
            if name == "replica":
                cols[name] = np.asarray(col.to_numpy(), np.int32)
            else:
                cols[name] = np.asarray(col.flatten().to_numpy(), np.int32).reshape(-1, n)
        return cls(**_fill_later(cols, meta), meta=meta)


def _fill_later(cols: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """Derive the columns a log written before they existed lacks."""
    if "hit_blocks" not in cols:
        bs = max(int(meta.get("block_size", 1)), 1)
        hit = (cols["input_tokens"].astype(np.int64)[:, None] - cols["uncached"]) // bs
        cols["hit_blocks"] = hit.astype(np.int32)
    if "router_queued" not in cols:
        cols["router_queued"] = np.asarray(cols["queued"], np.int32)
    if "router_inflight" not in cols:
        cols["router_inflight"] = (cols["running"] + cols["waiting"]).astype(np.int32)
    if "router_all_tokens" not in cols:
        cols["router_all_tokens"] = np.zeros_like(cols["uncached"], dtype=np.int32)
    if "router_inflight_new_tokens" not in cols:
        cols["router_inflight_new_tokens"] = np.asarray(cols["router_queued"], np.int32)
    return cols
