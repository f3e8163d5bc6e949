"""The request form every workload source produces.

A :class:`Workload` is columnar: one numpy array per field, one row per request,
sorted by arrival time. Prompt prefix identity is carried by block hashes in a
flattened (CSR) layout so the simulator can walk them without Python objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class Workload:
    """A sequence of requests, sorted by arrival.

    Attributes
    ----------
    arrival_s : np.ndarray, shape (n,), float64
        Arrival time of each request, seconds since the workload start, non-decreasing.
    input_tokens : np.ndarray, shape (n,), int64
        Prompt length, tokens.
    output_tokens : np.ndarray, shape (n,), int64
        Number of tokens to generate (>= 1), tokens.
    hash_ids : np.ndarray, shape (total_blocks,), int64
        Block hashes of all prompts, concatenated. Request ``i`` owns
        ``hash_ids[hash_offsets[i]:hash_offsets[i + 1]]``; equal hashes at the same
        position mean an equal prefix up to and including that block.
    hash_offsets : np.ndarray, shape (n + 1,), int64
        CSR offsets into ``hash_ids``.
    block_size : int
        Tokens per hash block. A prompt of ``L`` tokens has ``ceil(L / block_size)``
        blocks; the last one may be partial.
    session_ids : np.ndarray or None, shape (n,), int64
        Optional conversation/session id per request (-1 when unknown).
    meta : dict
        Provenance: source file, format, rate scale, selection, ``skipped_lines``.
    """

    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    hash_ids: np.ndarray
    hash_offsets: np.ndarray
    block_size: int
    session_ids: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.arrival_s.shape[0])

    def blocks(self, i: int) -> np.ndarray:
        """Block hashes of request ``i`` (view, shape (k,), int64)."""
        return self.hash_ids[self.hash_offsets[i] : self.hash_offsets[i + 1]]
