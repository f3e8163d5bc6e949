"""Trace loaders: Mooncake JSONL, Alibaba Qwen-Bailian JSONL, generic JSONL and CSV.

Every loader returns a :class:`~lmetric_theory.workload.base.Workload`: arrival times in
seconds since the first request, lengths in tokens, block hashes in CSR layout.

Formats
-------
``mooncake`` (JSON Lines, one request per line; detected by a ``timestamp`` field)
    ``timestamp``      int/float, **milliseconds** since the trace start, >= 0
    ``input_length``   int >= 1, prompt tokens
    ``output_length``  int >= 1, generated tokens
    ``hash_ids``       list of int, one id per **512-token** block of the prompt
    Session traces add ``session_id`` (int or string) and, on a session's later rows,
    ``delay`` / ``delay_ms`` (ms after the previous turn completed) instead of
    ``timestamp``; ``trace_format`` picks the cumulative (``mooncake``) or delta
    (``mooncake-delta``) convention, see :mod:`lmetric_theory.workload.sessions` and
    ``docs/workloads.md``.
``bailian`` (Alibaba Qwen-Bailian JSON Lines; detected by a ``chat_id`` field)
    ``timestamp``      int/float, **seconds**, >= 0
    ``input_length``, ``output_length``  as above
    ``hash_ids``       list of int, one id per **16-token** block
    ``chat_id``        int, id of this request
    ``parent_chat_id`` int, the previous turn's ``chat_id``; negative (``-1``) for a first turn
    ``turn``, ``type`` informational (``type`` is counted in ``meta["request_types"]``)
    The session id of a request is the root of its ``parent_chat_id`` chain: the first
    ancestor whose parent is negative, or the first parent id that does not occur in the
    file (so requests continuing the same unseen conversation still share a session).
``jsonl`` (generic JSON Lines; detected by an ``arrival_s`` field)
    ``arrival_s``      int/float, **seconds**, >= 0
    ``input_tokens``   int >= 1
    ``output_tokens``  int >= 1
    ``hash_ids``       optional list of int, one id per block (default block size **16**)
    ``session_id``     optional int >= 0 or non-empty string
``csv`` (generic CSV; a header row naming the same columns as ``jsonl``; detected when the
    first line is not JSON, or by a ``.csv`` file name)
    ``hash_ids`` is a space-separated list of ints in one cell; an empty ``hash_ids`` or
    ``session_id`` cell means absent. One record per physical line (no quoted newlines).

Unknown extra fields/columns are ignored. Format auto-detection looks at the first
non-blank line only.

Rules applied to every format
-----------------------------
- Blank lines are ignored. Anything else that is not a valid request is an error:
  :class:`TraceError` (a ``ValueError``) naming the file, the 1-based line number, the field
  and the reason. With ``skip_bad_lines=True`` such lines are skipped instead, counted in
  ``meta["skipped_lines"]``, and the first few reasons kept in ``meta["skipped_reasons"]``.
- An empty trace (no request lines, or none left after skipping) is an error.
- Lengths must be JSON integers (``12.0`` is rejected), ``input >= 1`` and ``output >= 1``.
  A request with ``output_length == 0`` is rejected: the request form promises at least one
  generated token, and silently turning 0 into 1 would change the trace.
- ``len(hash_ids)`` must equal ``ceil(input_length / block_size)``. The shared Mooncake
  conversation trace satisfies this exactly on all 12,031 lines (no off-by-one pattern),
  so no tolerance is applied. A request without ``hash_ids`` (generic formats only) gets
  fresh ids shared with no other request.
- Timestamps that go backwards are not rejected: the requests are stable-sorted by time,
  a :class:`TraceOrderWarning` is issued and ``meta["reordered_lines"]`` counts the lines
  that arrived earlier than some line above them.
- Times are rebased so the first request arrives at 0 s; the original clock value of that
  request is kept in ``meta["time_origin_s"]``.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from operator import itemgetter
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from lmetric_theory.core.fileio import TextFileError, read_text
from lmetric_theory.core.gcpause import cyclic_gc_paused
from lmetric_theory.core.limits import ID_MAX, ID_MIN, TIME_MAX_S, TOKENS_MAX
from lmetric_theory.workload.base import Sessions, Workload
from lmetric_theory.workload.errors import TraceError, TraceOrderWarning
from lmetric_theory.workload.sessions import (
    chain_links,
    materialise_delta,
    segment_cumsum,
    take_csr,
)

__all__ = [
    "FORMATS",
    "TRACE_FORMATS",
    "DEFAULT_BLOCK_SIZE",
    "load_trace",
    "parse_trace",
    "detect_format",
]

#: Trace formats understood by :func:`load_trace` (plus ``"auto"``).
FORMATS: tuple[str, ...] = ("mooncake", "bailian", "jsonl", "csv")

#: Conventions of Mooncake session traces (``trace_format``; plus ``"auto"``).
TRACE_FORMATS: tuple[str, ...] = ("mooncake", "mooncake-delta")

#: Tokens per hash block assumed by each format unless overridden.
DEFAULT_BLOCK_SIZE: dict[str, int] = {"mooncake": 512, "bailian": 16, "jsonl": 16, "csv": 16}

#: How many skip reasons are kept in ``meta["skipped_reasons"]``.
MAX_REASONS = 5

_INT64_MAX = ID_MAX
_INT64_MIN = ID_MIN

#: File name suffixes that fix the format family without looking at the content.
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
CSV_SUFFIXES = (".csv",)

#: JSON type names, for messages.
_JSON_TYPE = {dict: "object", list: "array", str: "string", int: "number", float: "number",
              bool: "boolean", type(None): "null"}


class _Missing:
    """Sentinel for an absent field."""

    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()


@dataclass(frozen=True, slots=True)
class _Spec:
    """Field names and units of one format."""

    time_field: str
    time_to_s: float
    time_unit: str
    input_field: str
    output_field: str
    hash_required: bool
    session: str  # "none", "chain" or "field"


_SPECS: dict[str, _Spec] = {
    "mooncake": _Spec("timestamp", 1e-3, "ms", "input_length", "output_length", True, "none"),
    "bailian": _Spec("timestamp", 1.0, "s", "input_length", "output_length", True, "chain"),
    "jsonl": _Spec("arrival_s", 1.0, "s", "input_tokens", "output_tokens", False, "field"),
    "csv": _Spec("arrival_s", 1.0, "s", "input_tokens", "output_tokens", False, "field"),
}


# --------------------------------------------------------------------------- public API


def load_trace(
    path: str | PathLike[str],
    *,
    format: str = "auto",
    block_size: int | None = None,
    skip_bad_lines: bool = False,
    trace_format: str = "auto",
    closed_loop: bool = False,
) -> Workload:
    """Read a trace file into a :class:`Workload`.

    Parameters
    ----------
    path : str or path-like
        The trace file (UTF-8; a byte-order mark is tolerated).
    format : {"auto", "mooncake", "bailian", "jsonl", "csv"}
        Trace format; ``"auto"`` detects it from the first non-blank line (and a ``.csv``
        suffix). See the module docstring for the schemas.
    block_size : int, optional
        Tokens per hash block; defaults to the format's own (512 for Mooncake, 16 otherwise).
    skip_bad_lines : bool
        Skip (and count) invalid lines instead of raising. In a Mooncake session trace a
        bad line drops its whole session (its later turns depend on it).
    trace_format : {"auto", "mooncake", "mooncake-delta"}
        Convention of a Mooncake session trace: ``"mooncake"``, every row holds its full
        prompt; ``"mooncake-delta"``, a later row holds only the segment it adds (see
        :mod:`lmetric_theory.workload.sessions`). ``"auto"`` decides from the hash ids
        when that is unambiguous and records why in ``meta["trace_format_reason"]``.
    closed_loop : bool
        Bailian only: replay child chats closed loop, each waiting for its parent chat
        (delay = child timestamp - parent timestamp). Default False: open loop, unchanged.

    Returns
    -------
    Workload
        Sorted by arrival; ``meta`` holds ``source``, ``format``, ``block_size``,
        ``n_lines``, ``skipped_lines``, ``skipped_reasons``, ``reordered_lines``,
        ``time_origin_s``, ``rate_scale`` and ``transforms``.

    Raises
    ------
    TraceError
        On the first invalid line (file, line, field, reason), or an empty trace.
    """
    p = Path(path)
    source = str(path)
    try:
        text = read_text(p, "a trace")
    except TextFileError as exc:
        raise TraceError(source, exc.line, None, exc.reason) from None
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    # one dict and a few lists per line, no cycles: the collector's passes free nothing
    with cyclic_gc_paused():
        return parse_trace(
            text.split("\n"),
            source=source,
            format=format,
            block_size=block_size,
            skip_bad_lines=skip_bad_lines,
            suffix=p.suffix,
            trace_format=trace_format,
            closed_loop=closed_loop,
        )


def detect_format(
    first_line: str, *, source: str = "<lines>", line: int = 1, suffix: str = ""
) -> str:
    """Name the format of a trace from its file name suffix and its first non-blank line.

    A ``.csv`` suffix means CSV; a ``.jsonl``/``.json``/``.ndjson`` suffix, or a first line
    that is JSON (starts with ``{`` or ``[``, or parses as JSON), means JSON Lines, and the
    keys of the first object name the variant. Anything else is read as CSV.

    Parameters
    ----------
    first_line : str
        The first non-blank line of the trace.
    source, line : str, int
        File name and line number for messages.
    suffix : str
        The file name suffix (``".jsonl"``), or ``""`` for in-memory input.

    Returns
    -------
    str
        One of :data:`FORMATS`.

    Raises
    ------
    TraceError
        The line is JSON but not an object, or has none of the detecting keys; the
        message says why the line was read as JSON.
    """
    return _detect(first_line, source=source, line=line, suffix=suffix)[0]


def _json_type(value: object) -> str:
    return _JSON_TYPE.get(type(value), type(value).__name__)


def _detect(first_line: str, *, source: str, line: int, suffix: str) -> tuple[str, str]:
    """``(format, reason)``: :func:`detect_format` with the reason in words."""
    suffix = suffix.lower()
    if suffix in CSV_SUFFIXES:
        return "csv", f"the file name ends in {suffix}"
    stripped = first_line.strip()
    if suffix in JSON_SUFFIXES:
        why = f"the file name ends in {suffix}"
    elif stripped[:1] in ("{", "["):
        why = f"its first line starts with {stripped[:1]!r}"
    else:
        try:
            json.loads(stripped)
        except (ValueError, RecursionError):
            return "csv", "its first line is not JSON"
        why = "its first line is a JSON value"
    try:
        obj = json.loads(stripped)
    except json.JSONDecodeError as exc:
        raise TraceError(
            source, line, None,
            f"invalid JSON: {exc.msg} (column {exc.colno}); read as JSON Lines because {why}",
        ) from None
    except (ValueError, RecursionError) as exc:
        raise TraceError(source, line, None, f"invalid JSON: {_short_reason(exc)}") from None
    if not isinstance(obj, dict):
        raise TraceError(
            source, line, None,
            f"expected a JSON object, got {_json_type(obj)} (read as JSON Lines because {why})",
        )
    reason = f"read as JSON Lines because {why}"
    if "chat_id" in obj:
        return "bailian", f"{reason}; the first object has a 'chat_id' field"
    if "arrival_s" in obj:
        return "jsonl", f"{reason}; the first object has an 'arrival_s' field"
    if "timestamp" in obj:
        return "mooncake", f"{reason}; the first object has a 'timestamp' field"
    if "session_id" in obj and "input_length" in obj:
        return "mooncake", (f"{reason}; the first object has 'session_id' and "
                            "'input_length' fields")
    raise TraceError(
        source,
        line,
        None,
        "cannot detect the trace format: expected a 'chat_id' (bailian), 'arrival_s' "
        "(jsonl), 'timestamp' or 'session_id' (mooncake) field; found "
        f"{_clip_list(sorted(obj))}",
    )


def _short_reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    text = str(exc).split(";")[0]
    return text if len(text) <= 100 else text[:97] + "..."


def _clip_list(items: list[str], n: int = 8) -> str:
    shown = [_clip(str(x)) for x in items[:n]]
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return f"{shown}{more}"


def _clip(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def parse_trace(
    lines: Sequence[str],
    *,
    source: str = "<lines>",
    format: str = "auto",
    block_size: int | None = None,
    skip_bad_lines: bool = False,
    suffix: str = "",
    trace_format: str = "auto",
    closed_loop: bool = False,
) -> Workload:
    """Parse trace lines (already read into memory) into a :class:`Workload`.

    Same rules as :func:`load_trace`; ``lines[i]`` is reported as line ``i + 1`` of
    ``source``; ``suffix`` (the file name's, e.g. ``".jsonl"``) takes part in format
    detection as in :func:`detect_format`.

    The steps, each a function of its own: keep the request lines
    (:func:`_request_lines`), name the format and block size (:func:`_resolve_format`),
    parse the rows (:func:`_parse_rows`), read and check the columns
    (:func:`_read_columns`), drop or report the bad rows (:func:`_drop_bad_rows`), derive
    sessions and missing hashes, sort by arrival (:func:`_sort_by_arrival`) and build the
    workload. A Mooncake session trace (rows with ``session_id`` or ``delay``) goes
    through :func:`_session_workload` instead of the last steps.
    """
    if format != "auto" and format not in _SPECS:
        raise ValueError(f"unknown trace format {format!r}; valid: auto, {', '.join(FORMATS)}")
    trace_format = _check_trace_format(trace_format)
    if not isinstance(closed_loop, bool):
        raise ValueError(f"closed_loop must be True or False, got {closed_loop!r}")
    body, lineno = _request_lines(lines, source)
    format, format_reason, block_size = _resolve_format(
        format, block_size, body[0], source=source, line=lineno(0), suffix=suffix
    )
    if trace_format != "auto" and format != "mooncake":
        raise TraceError(source, None, None,
                         f"trace_format {trace_format!r} applies to Mooncake traces; this one "
                         f"is {format} ({format_reason})")
    if closed_loop and format != "bailian":
        raise TraceError(source, None, None,
                         "closed_loop applies to Bailian traces (a Mooncake session trace is "
                         f"closed loop by its delays); this one is {format} ({format_reason})")
    errors: dict[int, tuple[str | None, str]] = {}
    rows, lineno = _parse_rows(format, body, source, lineno, errors, format_reason)
    spec = _SPECS[format]
    cols = _Columns(rows, errors)
    fields = _read_columns(cols, spec, block_size)
    n_rows = len(rows)
    skipped_reasons: list[str] = []
    if errors:
        skipped_reasons = _drop_bad_rows(fields, errors, skip_bad_lines, source, lineno)
    meta: dict[str, Any] = {
        "source": source,
        "format": format,
        "format_reason": format_reason,
        "block_size": block_size,
        "n_lines": n_rows,
        "skipped_lines": len(errors),
        "skipped_reasons": skipped_reasons,
        "reordered_lines": 0,
        "time_origin_s": 0.0,
        "rate_scale": 1.0,
        "transforms": [],
    }
    if fields.sess is not None:
        return _session_workload(fields, spec, block_size, trace_format, meta, source, lineno)
    if format == "mooncake":
        if trace_format == "mooncake-delta":
            raise TraceError(source, lineno(0), "session_id",
                             "missing: the mooncake-delta convention needs a session trace, and "
                             "no row has a 'session_id'")
        meta["trace_format"] = "mooncake"
        meta["trace_format_reason"] = ("no row has a 'session_id': every row is an "
                                       "independent request holding its full prompt")

    session_ids: np.ndarray | None = None
    if fields.chat is not None and fields.parent is not None:
        session_ids = _chain_roots(fields.chat, fields.parent)
    elif fields.sess_vals is not None:
        session_ids = _factorize_sessions(fields.sess_vals)
    flat, lens = _fill_missing_hashes(
        fields.flat, fields.lens, fields.has_hash, fields.inp, block_size, source
    )
    t, inp, out = fields.t * spec.time_to_s, fields.inp, fields.out
    file_rows = np.arange(t.shape[0], dtype=np.int64)  # kept row -> position among kept rows
    t, inp, out, session_ids, flat, lens, reordered, order = _sort_by_arrival(
        t, inp, out, session_ids, flat, lens, source
    )
    if order is not None:
        file_rows = file_rows[order]
    origin = float(t[0])
    offsets = np.zeros(lens.shape[0] + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    meta["reordered_lines"] = reordered
    meta["time_origin_s"] = origin
    if format == "bailian":
        meta["request_types"] = cols.type_counts("type", errors)
    sessions = None
    if closed_loop:
        assert fields.chat is not None and fields.parent is not None
        sessions = _bailian_sessions(
            fields.chat[file_rows], fields.parent[file_rows], t - origin, file_rows,
            fields.kept_rows, source, lineno,
        )
        meta["closed_loop"] = True
        meta["n_sessions"] = sessions.n_sessions
    return make_workload(
        arrival_s=t - origin,
        input_tokens=inp,
        output_tokens=out,
        hash_ids=flat,
        hash_offsets=offsets,
        block_size=block_size,
        session_ids=session_ids,
        meta=meta,
        sessions=sessions,
    )


def _check_trace_format(trace_format: str) -> str:
    """The canonical ``trace_format`` name (``mooncake_delta`` is accepted as an alias)."""
    if trace_format == "mooncake_delta":
        return "mooncake-delta"
    if trace_format != "auto" and trace_format not in TRACE_FORMATS:
        raise ValueError(f"unknown trace_format {trace_format!r}; valid: auto, "
                         f"{', '.join(TRACE_FORMATS)}")
    return trace_format


# ------------------------------------------------------------------- parse_trace's steps


def _request_lines(
    lines: Sequence[str], source: str
) -> tuple[list[str], Callable[[int], int]]:
    """The non-blank lines, and the 1-based file line of each (``TraceError`` when none)."""
    if lines and not lines[-1].strip():  # the newline that ends the last line
        lines = lines[:-1]
    if all(map(str.strip, lines)):
        body = list(lines)
        line_nos = None  # line i + 1
    else:
        keep = [i for i, s in enumerate(lines) if s.strip()]
        body = [lines[i] for i in keep]
        line_nos = keep
    if not body:
        raise TraceError(source, None, None, "trace is empty (no request lines)")

    def lineno(i: int) -> int:
        return (i if line_nos is None else line_nos[i]) + 1

    return body, lineno


def _resolve_format(
    format: str, block_size: int | None, first_line: str, *, source: str, line: int,
    suffix: str,
) -> tuple[str, str, int]:
    """The format (detected from the first request line when ``"auto"``), why it was
    chosen, and the block size (the format's default when not given), tokens per block."""
    if format == "auto":
        format, format_reason = _detect(first_line, source=source, line=line, suffix=suffix)
    else:
        format_reason = "format given"
    if block_size is None:
        block_size = DEFAULT_BLOCK_SIZE[format]
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    return format, format_reason, block_size


def _parse_rows(
    format: str,
    body: list[str],
    source: str,
    lineno: Callable[[int], int],
    errors: dict[int, tuple[str | None, str]],
    format_reason: str,
) -> tuple[list[Any], Callable[[int], int]]:
    """One dict per request, and the file line of each row (a CSV's rows follow its
    header, so row ``i`` is body line ``i + 1``)."""
    if format != "csv":
        return _json_rows(body, errors), lineno
    rows = _csv_rows(body, source, lineno(0), errors, format_reason)
    if not rows:
        raise TraceError(source, None, None, "trace is empty (header only, no requests)")
    return rows, lambda i: lineno(i + 1)


@dataclass(slots=True)
class _SessionCols:
    """Session columns of a Mooncake session trace, shape (n,)."""

    codes: np.ndarray  # dense session code by first appearance (a row without id: its own)
    labels: list[Any]  # the session id as given (None for a row without one)
    t_ms: np.ndarray  # timestamp, ms; NaN where absent
    delay_ms: np.ndarray  # explicit or inferred delay after the previous turn, ms (0: first)
    explicit: np.ndarray  # bool: the row gave 'delay' / 'delay_ms'
    restart: np.ndarray  # bool: 'is_restart' is true


@dataclass(slots=True)
class _Fields:
    """The checked columns of every row, shape (n,) unless noted; the hashes in CSR form."""

    t: np.ndarray  # arrival, in the format's time unit, float64
    inp: np.ndarray  # prompt tokens, int64
    out: np.ndarray  # output tokens, int64
    flat: np.ndarray  # every row's block ids, concatenated, int64
    lens: np.ndarray  # block ids per row, int64
    has_hash: np.ndarray  # row gave its hashes, bool
    chat: np.ndarray | None  # bailian chat ids
    parent: np.ndarray | None  # bailian parent chat ids
    sess_vals: list[Any] | None  # generic formats' session ids, as given
    sess: _SessionCols | None = None  # Mooncake session columns
    kept_rows: np.ndarray | None = None  # row index (before dropping) of each kept row


_SESSION_KEYS = ("session_id", "delay", "delay_ms")


def _read_columns(cols: _Columns, spec: _Spec, block_size: int) -> _Fields:
    """Read and check every column the format defines (errors go to ``cols.errors``)."""
    hi = TIME_MAX_S / spec.time_to_s
    session_trace = spec.time_field == "timestamp" and spec.session == "none" and any(
        k in r for r in cols.rows for k in _SESSION_KEYS
    )
    if session_trace:
        t, has_t = cols.optional_number(spec.time_field, hi, spec.time_unit)
    else:
        t = cols.number(spec.time_field, hi, spec.time_unit)
    inp = cols.integer(spec.input_field, 1, TOKENS_MAX)
    out = cols.integer(spec.output_field, 1, TOKENS_MAX)
    flat, lens, has_hash = cols.hashes("hash_ids", spec.hash_required, inp, block_size)
    chat = parent = sess_vals = None
    if spec.session == "chain":
        chat = cols.integer("chat_id", _INT64_MIN)
        parent = cols.integer("parent_chat_id", _INT64_MIN)
    elif spec.session == "field":
        sess_vals = cols.session("session_id")
    f = _Fields(t, inp, out, flat, lens, has_hash, chat, parent, sess_vals)
    f.kept_rows = np.arange(cols.n, dtype=np.int64)
    if session_trace:
        f.sess = _session_columns(cols, t, has_t, hi)
    return f


def _session_columns(cols: _Columns, t: np.ndarray, has_t: np.ndarray, hi: float) -> _SessionCols:
    """Check the session fields of a Mooncake session trace (errors to ``cols.errors``).

    A row without ``session_id`` is an independent request (its own session) and needs a
    ``timestamp``. A session's first row needs a ``timestamp`` (a ``delay`` of 0 is
    tolerated there); a later row gives ``delay`` or ``delay_ms`` (ms after the previous
    turn completed), not both, and not together with a ``timestamp``; a later row with
    only a ``timestamp`` gets the delay ``timestamp - the session's previous timestamp``;
    one with neither, delay 0.
    """
    labels = cols.session("session_id")
    d1, has1 = cols.optional_number("delay", hi, "ms")
    d2, has2 = cols.optional_number("delay_ms", hi, "ms")
    codes = np.empty(cols.n, dtype=np.int64)
    seen: dict[Any, int] = {}
    last_t: dict[int, float] = {}
    delay = np.zeros(cols.n, dtype=np.float64)
    explicit = has1 | has2
    has1_l, has2_l, has_t_l, t_l = has1.tolist(), has2.tolist(), has_t.tolist(), t.tolist()
    d_l = np.where(has1, d1, d2).tolist()
    for i, lab in enumerate(labels):
        if lab is None:
            code = seen.setdefault(("<row>", i), len(seen))
        else:
            code = seen.get(("id", str(lab)) if type(lab) is str else ("id", lab))
            if code is None:
                code = seen.setdefault(("id", str(lab)) if type(lab) is str else ("id", lab),
                                       len(seen))
                first = True
            else:
                first = False
        codes[i] = code
        has_d = has1_l[i] or has2_l[i]
        if has1_l[i] and has2_l[i]:
            cols._err(i, "delay_ms", "give 'delay' or 'delay_ms' (the same field), not both")
        if lab is None:
            if has_d:
                cols._err(i, "delay" if has1_l[i] else "delay_ms",
                          "a delay needs a session, and this row has no 'session_id' (a row "
                          "without one is an independent request at its 'timestamp')")
            elif not has_t_l[i]:
                cols._err(i, "timestamp", "missing (a row without a 'session_id' is an "
                          "independent request and needs one)")
            continue
        name = _clip(str(lab))
        if first:
            if not has_t_l[i]:
                cols._err(i, "timestamp",
                          f"missing: the first row of session {name!r} needs a timestamp (ms)")
            elif has_d and d_l[i] != 0:
                cols._err(i, "delay" if has1_l[i] else "delay_ms",
                          f"set on the first row of session {name!r}; its first turn arrives "
                          "at its 'timestamp'")
            else:
                last_t[code] = t_l[i]
            continue
        if has_d:
            if has_t_l[i]:
                cols._err(i, "delay" if has1_l[i] else "delay_ms",
                          f"a later row of session {name!r} has both 'timestamp' and a delay; "
                          "give only the delay (ms after the previous turn completes)")
            delay[i] = d_l[i]
        elif has_t_l[i]:
            before = last_t.get(code)
            if before is None:
                cols._err(i, "timestamp", f"cannot infer the delay of session {name!r}: no "
                          "earlier row of it has a timestamp")
            elif t_l[i] < before:
                cols._err(i, "timestamp", f"{_num(t_l[i])} ms is earlier than the previous "
                          f"timestamp of session {name!r} ({_num(before)} ms): the inferred "
                          "delay would be negative")
            else:
                delay[i] = t_l[i] - before
        if has_t_l[i]:
            last_t[code] = t_l[i]
    restart = np.fromiter((r.get("is_restart", False) is True for r in cols.rows),
                          dtype=bool, count=cols.n)
    return _SessionCols(codes, labels, t, delay, explicit, restart)


def _drop_bad_rows(
    f: _Fields,
    errors: dict[int, tuple[str | None, str]],
    skip_bad_lines: bool,
    source: str,
    lineno: Callable[[int], int],
) -> list[str]:
    """Raise the first bad row's ``TraceError``, or (``skip_bad_lines``) remove the bad
    rows from ``f`` in place and return the first :data:`MAX_REASONS` reasons. In a
    Mooncake session trace the whole session of a bad row goes (its later turns wait for
    it); ``f.kept_rows`` keeps the original index of every kept row."""
    bad = sorted(errors)
    if not skip_bad_lines:
        i = bad[0]
        field, reason = errors[i]
        raise TraceError(source, lineno(i), field, reason)
    skipped_reasons = []
    for i in bad[:MAX_REASONS]:
        field, reason = errors[i]
        skipped_reasons.append(str(TraceError(source, lineno(i), field, reason)))
    good = np.ones(f.t.shape[0], dtype=bool)
    good[bad] = False
    if f.sess is not None:
        good &= ~np.isin(f.sess.codes, f.sess.codes[bad])
    if not good.any():
        raise TraceError(source, None, None, f"no valid requests ({len(bad)} bad lines skipped)")
    # hashes: drop the blocks of bad rows
    f.flat = f.flat[np.repeat(good, f.lens)]
    f.lens, f.has_hash = f.lens[good], f.has_hash[good]
    f.t, f.inp, f.out = f.t[good], f.inp[good], f.out[good]
    if f.chat is not None and f.parent is not None:
        f.chat, f.parent = f.chat[good], f.parent[good]
    if f.sess_vals is not None:
        f.sess_vals = [v for v, g in zip(f.sess_vals, good.tolist(), strict=True) if g]
    if f.sess is not None:
        sc = f.sess
        _, dense = np.unique(sc.codes[good], return_inverse=True)
        f.sess = _SessionCols(dense.reshape(-1).astype(np.int64),
                              [v for v, g in zip(sc.labels, good.tolist(), strict=True) if g],
                              sc.t_ms[good], sc.delay_ms[good], sc.explicit[good],
                              sc.restart[good])
    assert f.kept_rows is not None
    f.kept_rows = f.kept_rows[good]
    return skipped_reasons


def _sort_by_arrival(
    t: np.ndarray,
    inp: np.ndarray,
    out: np.ndarray,
    session_ids: np.ndarray | None,
    flat: np.ndarray,
    lens: np.ndarray,
    source: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray, int,
           np.ndarray | None]:
    """Stable-sort the requests by arrival ``t`` (seconds) when it goes backwards, with a
    :class:`TraceOrderWarning`; then how many lines arrived earlier than some line above
    them (0: nothing moved) and the permutation applied (None: nothing moved)."""
    if not (t.shape[0] > 1 and bool(np.any(t[1:] < t[:-1]))):
        return t, inp, out, session_ids, flat, lens, 0, None
    reordered = int(np.count_nonzero(t[1:] < np.maximum.accumulate(t)[:-1]))
    order = np.argsort(t, kind="stable")
    t, inp, out = t[order], inp[order], out[order]
    if session_ids is not None:
        session_ids = session_ids[order]
    flat, lens = _reorder_csr(flat, lens, order)
    warnings.warn(
        TraceOrderWarning(
            f"{source}: {reordered} line(s) arrive earlier than a line above them; "
            "requests were stable-sorted by timestamp"
        ),
        stacklevel=4,  # the caller of parse_trace's caller, as when this ran inline
    )
    return t, inp, out, session_ids, flat, lens, reordered, order


def _detect_trace_format(
    codes: np.ndarray, inp: np.ndarray, flat: np.ndarray, lens: np.ndarray, block_size: int,
    source: str,
) -> tuple[str, str]:
    """``(convention, reason)`` of a Mooncake session trace, from its hash ids.

    A later row is *cumulative-like* when its ids start with the full blocks of the
    previous row of its session (``input // block_size`` ids), *delta-like* when they do
    not; rows after a previous row of less than one full block say nothing. All
    cumulative-like: ``mooncake``; all delta-like: ``mooncake-delta``; mixed or no
    evidence: an error asking for ``trace_format``.
    """
    prev, _, _ = chain_links(codes)
    later = np.flatnonzero(prev >= 0)
    if later.size == 0:
        return "mooncake", "no session has a later turn, so every row holds its full prompt"
    p = prev[later]
    m = inp[p] // block_size
    ok = m > 0
    later, p, m = later[ok], p[ok], m[ok]
    if later.size == 0:
        raise TraceError(source, None, "hash_ids",
                         "cannot tell the session convention: no later turn follows a turn of "
                         "a full block; pass trace_format (--trace-format mooncake or "
                         "mooncake-delta)")
    off = np.zeros(lens.shape[0] + 1, dtype=np.int64)
    np.cumsum(lens, out=off[1:])
    fits = lens[later] >= m
    mm = np.where(fits, m, 0)
    from lmetric_theory.workload.sessions import ranges

    a = flat[ranges(off[later], mm)]
    b = flat[ranges(off[p], mm)]
    row = np.repeat(np.arange(later.size), mm)
    mismatch = np.bincount(row[a != b], minlength=later.size) > 0
    cumulative = fits & ~mismatch
    k, n = int(cumulative.sum()), int(later.size)
    if k == n:
        return "mooncake", (f"all {n} later turns' hash_ids start with their previous turn's "
                            "full blocks: every row holds its full prompt")
    if k == 0:
        return "mooncake-delta", (f"none of the {n} later turns' hash_ids start with their "
                                  "previous turn's: every row holds only its new segment")
    raise TraceError(source, None, "hash_ids",
                     f"cannot tell the session convention: {k} of {n} later turns' hash_ids "
                     "start with their previous turn's and the others do not; pass "
                     "trace_format (--trace-format mooncake or mooncake-delta)")


def _session_workload(
    f: _Fields,
    spec: _Spec,
    block_size: int,
    trace_format: str,
    meta: dict[str, Any],
    source: str,
    lineno: Callable[[int], int],
) -> Workload:
    """Build the workload of a Mooncake session trace (rows in file order in ``f``).

    Rows are ordered by (nominal arrival, line): a first turn at its timestamp, a later
    one at its previous turn's nominal arrival plus its delay.
    """
    sc = f.sess
    assert sc is not None and f.kept_rows is not None
    codes, inp, out = sc.codes, f.inp, f.out
    if trace_format == "auto":
        trace_format, why = _detect_trace_format(codes, inp, f.flat, f.lens, block_size, source)
    else:
        why = "given"
    meta["trace_format"] = trace_format
    meta["trace_format_reason"] = why
    prev, turn, group = chain_links(codes)
    n = codes.shape[0]
    if trace_format == "mooncake-delta":
        first_fresh = int(f.flat.max()) + 1 if f.flat.size else 0
        d = materialise_delta(codes, inp, out, f.flat, f.lens, block_size, first_fresh)
        too_long = np.flatnonzero(d.input_tokens > TOKENS_MAX)
        if too_long.size:
            i = int(too_long[0])
            raise TraceError(source, lineno(int(f.kept_rows[i])), spec.input_field,
                             f"the full prompt of this turn is {int(d.input_tokens[i])} tokens, "
                             f"above the limit of {TOKENS_MAX}")
        inp, p_flat, p_off = d.input_tokens, d.hash_ids, d.hash_offsets
        o_flat, o_off = d.output_hash_ids, d.output_hash_offsets
        meta["fresh_ids"] = d.fresh_ids
        meta["first_fresh_id"] = first_fresh
        meta["shared_turn0_tails"] = d.shared_tails
        closed = bool(np.any(prev >= 0))
    else:
        p_off = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(f.lens, out=p_off[1:])
        p_flat, o_flat, o_off = f.flat, None, None
        closed = bool(np.any(sc.explicit & (prev >= 0)))
    first_rows = group[turn[group] == 0]
    start = sc.t_ms[first_rows] * spec.time_to_s
    delay = np.where(prev >= 0, sc.delay_ms * spec.time_to_s, 0.0)
    nominal = np.empty(n, dtype=np.float64)
    starts_g = turn[group] == 0
    nominal[group] = start[codes[group]] + segment_cumsum(delay[group], starts_g)
    order = np.argsort(nominal, kind="stable").astype(np.int64)
    inv = np.empty(n, dtype=np.int64)
    inv[order] = np.arange(n, dtype=np.int64)
    origin = float(nominal[order[0]])
    arrival = nominal[order] - origin
    new_prev = np.where(prev[order] >= 0, inv[np.maximum(prev[order], 0)], -1)
    sessions = Sessions(
        session=codes[order],
        turn=turn[order],
        prev=new_prev,
        delay_s=delay[order],
        first=inv[first_rows],
        start_s=start - origin,
        closed_loop=closed,
    )
    p_flat, p_off = take_csr(p_flat, p_off, order)
    if o_flat is not None and o_off is not None:
        o_flat, o_off = take_csr(o_flat, o_off, order)
    meta["time_origin_s"] = origin
    meta["n_sessions"] = sessions.n_sessions
    meta["restart_sessions"] = int(np.count_nonzero(sc.restart & (prev < 0)))
    meta["closed_loop"] = closed
    return make_workload(
        arrival_s=arrival,
        input_tokens=inp[order],
        output_tokens=out[order],
        hash_ids=p_flat,
        hash_offsets=p_off,
        block_size=block_size,
        session_ids=codes[order],
        meta=meta,
        sessions=sessions,
        output_hash_ids=o_flat,
        output_hash_offsets=o_off,
    )


def _bailian_sessions(
    chat: np.ndarray,
    parent: np.ndarray,
    arrival_s: np.ndarray,
    file_rows: np.ndarray,
    kept_rows: np.ndarray | None,
    source: str,
    lineno: Callable[[int], int],
) -> Sessions:
    """Closed-loop structure of a Bailian trace (rows sorted by arrival): a child chat
    waits for its parent chat (the first row with that ``chat_id``), delay = child
    timestamp - parent timestamp. A child whose parent is not in the file starts a
    session. Sessions are numbered by the file position of their first request."""
    n = chat.shape[0]
    uniq, first_at = np.unique(chat, return_index=True)
    pos = np.searchsorted(uniq, parent)
    pos_c = np.minimum(pos, max(uniq.shape[0] - 1, 0))
    found = (parent >= 0) & (uniq[pos_c] == parent) if n else np.zeros(0, dtype=bool)
    prev = np.where(found, first_at[pos_c], -1).astype(np.int64)
    bad = np.flatnonzero(prev >= np.arange(n))
    if bad.size:
        i = int(bad[0])
        line = lineno(int((kept_rows if kept_rows is not None else file_rows)[file_rows[i]]))
        raise TraceError(source, line, "parent_chat_id",
                         f"parent chat {int(parent[i])} does not arrive before this request, "
                         "so it cannot wait for it (closed loop)")
    depth = np.zeros(n, dtype=np.int64)
    cur = prev.copy()
    while np.any(cur >= 0):
        has = cur >= 0
        depth[has] += 1
        cur = np.where(has, prev[np.maximum(cur, 0)], -1)
    from lmetric_theory.workload.sessions import _roots

    root = _roots(prev)
    roots = np.flatnonzero(prev < 0)
    first = roots[np.argsort(file_rows[roots], kind="stable")].astype(np.int64)
    code = np.empty(n, dtype=np.int64)
    code[first] = np.arange(first.shape[0], dtype=np.int64)
    delay = np.where(prev >= 0, arrival_s - arrival_s[np.maximum(prev, 0)], 0.0)
    return Sessions(
        session=code[root],
        turn=depth,
        prev=prev,
        delay_s=delay,
        first=first,
        start_s=arrival_s[first].astype(np.float64),
        closed_loop=True,
    )


def make_workload(
    *,
    arrival_s: np.ndarray,
    input_tokens: np.ndarray,
    output_tokens: np.ndarray,
    hash_ids: np.ndarray,
    hash_offsets: np.ndarray,
    block_size: int,
    session_ids: np.ndarray | None,
    meta: dict[str, Any],
    sessions: Sessions | None = None,
    output_hash_ids: np.ndarray | None = None,
    output_hash_offsets: np.ndarray | None = None,
) -> Workload:
    """Build a :class:`Workload` with canonical dtypes and read-only arrays.

    The arrays are made read-only so workloads derived by :func:`scale_rate` or
    :func:`select` can share them safely. ``sessions`` is checked
    (:meth:`Sessions.validate`) and the output CSR must be given together and have
    ``n + 1`` offsets.
    """
    arrays = [
        np.ascontiguousarray(arrival_s, dtype=np.float64),
        np.ascontiguousarray(input_tokens, dtype=np.int64),
        np.ascontiguousarray(output_tokens, dtype=np.int64),
        np.ascontiguousarray(hash_ids, dtype=np.int64),
        np.ascontiguousarray(hash_offsets, dtype=np.int64),
    ]
    if session_ids is not None:
        arrays.append(np.ascontiguousarray(session_ids, dtype=np.int64))
    n = arrays[0].shape[0]
    ses = None
    if sessions is not None:
        ses = Sessions(
            session=np.ascontiguousarray(sessions.session, dtype=np.int64),
            turn=np.ascontiguousarray(sessions.turn, dtype=np.int64),
            prev=np.ascontiguousarray(sessions.prev, dtype=np.int64),
            delay_s=np.ascontiguousarray(sessions.delay_s, dtype=np.float64),
            first=np.ascontiguousarray(sessions.first, dtype=np.int64),
            start_s=np.ascontiguousarray(sessions.start_s, dtype=np.float64),
            closed_loop=bool(sessions.closed_loop),
        )
        ses.validate(n)
        arrays.extend([ses.session, ses.turn, ses.prev, ses.delay_s, ses.first, ses.start_s])
    if (output_hash_ids is None) != (output_hash_offsets is None):
        raise ValueError("output_hash_ids and output_hash_offsets go together")
    out_ids = out_off = None
    if output_hash_ids is not None and output_hash_offsets is not None:
        out_ids = np.ascontiguousarray(output_hash_ids, dtype=np.int64)
        out_off = np.ascontiguousarray(output_hash_offsets, dtype=np.int64)
        if out_off.shape != (n + 1,) or out_off[0] != 0 or out_off[-1] != out_ids.shape[0]:
            raise ValueError(f"output_hash_offsets must be CSR offsets of shape ({n + 1},)")
        arrays.extend([out_ids, out_off])
    for a in arrays:
        a.flags.writeable = False
    return Workload(
        arrays[0],
        arrays[1],
        arrays[2],
        arrays[3],
        arrays[4],
        int(block_size),
        arrays[5] if session_ids is not None else None,
        meta,
        ses,
        out_ids,
        out_off,
    )


# --------------------------------------------------------------------------- rows


_SCAN = json.JSONDecoder().scan_once  # the C scanner behind json.loads, without its wrappers


def _json_rows(body: list[str], errors: dict[int, tuple[str | None, str]]) -> list[Any]:
    """Parse every line as JSON; invalid lines become ``{}`` plus an error.

    Fast path: the decoder's scanner on each line (what ``json.loads`` runs, minus its
    per-call wrapping), accepted only when every line parsed to its exact end; otherwise
    each line is re-parsed with ``json.loads`` to name the bad ones.
    """
    try:
        scanned = list(map(_SCAN, body, repeat(0)))
    except (json.JSONDecodeError, RecursionError, ValueError):
        scanned = []
    # a StopIteration from the scanner ends map() early, so the count check catches it
    if len(scanned) == len(body) and list(map(len, body)) == [e for _, e in scanned]:
        rows = [r for r, _ in scanned]
    else:
        rows = []
        for i, s in enumerate(body):
            try:
                rows.append(json.loads(s))
            except json.JSONDecodeError as exc:
                rows.append({})
                errors[i] = (None, f"invalid JSON: {exc.msg} (column {exc.colno})")
            except (ValueError, RecursionError) as exc:  # e.g. an integer of > 4300 digits
                rows.append({})
                errors[i] = (None, f"invalid JSON: {_short_reason(exc)}")
    if set(map(type, rows)) != {dict}:
        for i, r in enumerate(rows):
            if type(r) is not dict:
                errors.setdefault(i, (None, f"expected a JSON object, got {_json_type(r)}"))
                rows[i] = {}
    return rows


def _csv_rows(
    body: list[str],
    source: str,
    header_line: int,
    errors: dict[int, tuple[str | None, str]],
    format_reason: str = "format given",
) -> list[dict[str, Any]]:
    """Turn CSV records into dicts of converted values (unconvertible cells kept as str)."""
    try:
        records = list(csv.reader(body))
    except csv.Error as exc:  # e.g. a field larger than the csv module's limit
        raise TraceError(source, None, None, f"not readable as CSV: {exc}") from None
    header = [h.strip() for h in records[0]]
    why = "the format was given" if format_reason == "format given" else format_reason
    for name in ("arrival_s", "input_tokens", "output_tokens"):
        if name not in header:
            raise TraceError(
                source,
                header_line,
                name,
                f"required CSV column missing; header is {_clip_list(header)} "
                f"(read as CSV because {why})",
            )
    if len(set(header)) != len(header):
        raise TraceError(source, header_line, None, f"duplicate CSV column names in {header}")
    ncol = len(header)
    rows: list[dict[str, Any]] = []
    for j, rec in enumerate(records[1:]):
        if len(rec) != ncol:
            errors[j] = (None, f"expected {ncol} CSV columns, got {len(rec)}")
            rows.append({})
            continue
        row: dict[str, Any] = {}
        for name, cell in zip(header, rec, strict=True):
            cell = cell.strip()
            if name == "arrival_s":
                row[name] = _to_number(cell)
            elif name in ("input_tokens", "output_tokens"):
                row[name] = _to_int(cell)
            elif name == "hash_ids":
                if cell:
                    try:
                        row[name] = [int(x) for x in cell.split()]
                    except ValueError:
                        row[name] = cell
            elif name == "session_id":
                if cell:
                    v = _to_int(cell)
                    row[name] = v
        rows.append(row)
    return rows


def _to_int(cell: str) -> Any:
    try:
        return int(cell)
    except ValueError:
        return cell


def _to_number(cell: str) -> Any:
    try:
        return int(cell)
    except ValueError:
        pass
    try:
        return float(cell)
    except ValueError:
        return cell


# --------------------------------------------------------------------------- columns


def _what(v: Any) -> str:
    """A JSON value in a message: its (clipped) text and JSON type, e.g. ``true (boolean)``."""
    text = _clip(json.dumps(v) if type(v) in (str, bool, type(None)) else repr(v))
    return f"{text} ({_json_type(v)})"


def _num(v: Any) -> str:
    """A number in a message, abbreviated when it has many digits."""
    if type(v) is int and abs(v) >= 10**15:
        return f"{v:.3e}" if v.bit_length() < 1000 else f"an integer of {len(str(abs(v)))} digits"
    return repr(v)



class _Columns:
    """Column extraction with vectorised validation; errors go to ``errors[row]``."""

    def __init__(self, rows: list[dict[str, Any]], errors: dict[int, tuple[str | None, str]]):
        self.rows = rows
        self.errors = errors
        self.n = len(rows)

    def _values(self, name: str) -> list[Any]:
        try:
            return list(map(itemgetter(name), self.rows))
        except KeyError:
            return [r.get(name, _MISSING) for r in self.rows]

    def _err(self, i: int, name: str, reason: str) -> None:
        self.errors.setdefault(int(i), (name, reason))

    def number(self, name: str, hi: float, unit: str) -> np.ndarray:
        """Finite number in ``[0, hi]`` (timestamps, in ``unit``); float64, shape (n,)."""
        values = self._values(name)
        types = set(map(type, values))
        want = f"must be a finite number in [0, {hi:g}] {unit}"
        if types <= {int, float}:
            try:
                arr = np.array(values, dtype=np.float64)
            except OverflowError:
                arr = None
            if arr is not None:
                ok = np.isfinite(arr) & (arr >= 0) & (arr <= hi)
                if not ok.all():
                    for i in np.flatnonzero(~ok):
                        self._err(i, name, f"{want}, got {_num(values[i])}")
                return arr
        arr = np.zeros(self.n, dtype=np.float64)
        for i, v in enumerate(values):
            if v is _MISSING:
                self._err(i, name, "missing")
            else:
                self._one_number(arr, i, v, name, hi, want)
        return arr

    def optional_number(self, name: str, hi: float, unit: str) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`number`, but absence is allowed: ``(values, present)``, float64
        (NaN where absent) and bool, shape (n,)."""
        values = self._values(name)
        present = np.fromiter((v is not _MISSING for v in values), dtype=bool, count=self.n)
        arr = np.full(self.n, np.nan, dtype=np.float64)
        want = f"must be a finite number in [0, {hi:g}] {unit}"
        for i in np.flatnonzero(present).tolist():
            self._one_number(arr, i, values[i], name, hi, want)
        return arr, present

    def _one_number(
        self, arr: np.ndarray, i: int, v: Any, name: str, hi: float, want: str
    ) -> None:
        """Row ``i``'s present value ``v`` into ``arr[i]`` when it is a JSON number in
        ``[0, hi]``; otherwise the row's error (``want``, then what it got)."""
        if type(v) not in (int, float):
            self._err(i, name, f"{want}, got {_what(v)}")
            return
        try:
            x = float(v)
        except OverflowError:
            x = math.inf
        if not (math.isfinite(x) and 0 <= x <= hi):
            self._err(i, name, f"{want}, got {_num(v)}")
        else:
            arr[i] = x

    def integer(self, name: str, lo: int, hi: int = _INT64_MAX) -> np.ndarray:
        """Integer in ``[lo, hi]`` (JSON integers only; booleans and 12.0 rejected);
        int64, shape (n,)."""
        values = self._values(name)
        want = (
            "must be a 64-bit integer"
            if (lo, hi) == (_INT64_MIN, _INT64_MAX)
            else f"must be an integer in [{lo}, {hi}]"
        )
        if set(map(type, values)) == {int}:
            try:
                arr = np.array(values, dtype=np.int64)
            except OverflowError:
                arr = None
            if arr is not None:
                for i in np.flatnonzero((arr < lo) | (arr > hi)):
                    self._err(i, name, f"{want}, got {_num(values[i])}")
                return arr
        arr = np.zeros(self.n, dtype=np.int64)
        for i, v in enumerate(values):
            if v is _MISSING:
                self._err(i, name, "missing")
            elif type(v) is not int:
                self._err(i, name, f"{want}, got {_what(v)}")
            elif not lo <= v <= hi:
                self._err(i, name, f"{want}, got {_num(v)}")
            else:
                arr[i] = v
        return arr

    def hashes(
        self, name: str, required: bool, inp: np.ndarray, block_size: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Block ids: (flat int64, per-row lengths int64, per-row has-hashes bool)."""
        values = self._values(name)
        flat: np.ndarray | None = None
        if set(map(type, values)) == {list}:
            items = list(chain.from_iterable(values))
            if set(map(type, items)) <= {int}:
                try:
                    flat = np.fromiter(items, dtype=np.int64, count=len(items))
                except OverflowError:
                    flat = None
            if flat is not None:
                lens = np.fromiter(map(len, values), dtype=np.int64, count=self.n)
                has = np.ones(self.n, dtype=bool)
        if flat is None:
            pieces: list[list[int]] = []
            has_l: list[bool] = []
            for i, v in enumerate(values):
                keep: list[int] = []
                present = True
                if v is _MISSING or v is None:
                    present = False
                    if required:
                        self._err(i, name, "missing")
                elif type(v) is not list:
                    self._err(i, name, f"must be a list of integers, got {_what(v)}")
                else:
                    bad = next((x for x in v if type(x) is not int), _MISSING)
                    if bad is not _MISSING:
                        self._err(i, name, f"must be a list of integers; contains {_what(bad)}")
                    elif v and (max(v) > _INT64_MAX or min(v) < _INT64_MIN):
                        self._err(i, name, "contains an id out of the 64-bit integer range")
                    else:
                        keep = v
                pieces.append(keep)
                has_l.append(present)
            flat = np.fromiter(chain.from_iterable(pieces), dtype=np.int64)
            lens = np.fromiter(map(len, pieces), dtype=np.int64, count=self.n)
            has = np.array(has_l, dtype=bool)
        need = (inp + (block_size - 1)) // block_size
        mismatch = has & (lens != need)
        if mismatch.any():
            for i in np.flatnonzero(mismatch):
                if int(i) in self.errors:
                    continue
                self._err(
                    i,
                    name,
                    f"has {lens[i]} block ids but the prompt of {inp[i]} tokens needs "
                    f"ceil({inp[i]}/{block_size}) = {need[i]}",
                )
        return flat, lens, has

    def session(self, name: str) -> list[Any]:
        """Optional session id: int >= 0, non-empty str, or absent (returned as None)."""
        values = self._values(name)
        out: list[Any] = []
        for i, v in enumerate(values):
            if v is _MISSING or v is None:
                out.append(None)
            elif type(v) is int and 0 <= v <= _INT64_MAX:
                out.append(v)
            elif type(v) is str and v:
                out.append(v)
            else:
                self._err(
                    i, name, f"must be an integer in [0, 2**63) or a non-empty string, got {_what(v)}"
                )
                out.append(None)
        return out

    def type_counts(self, name: str, errors: dict[int, tuple[str | None, str]]) -> dict[str, int]:
        """Counts of the values of an informational string field over the kept rows."""
        counts: dict[str, int] = {}
        for i, r in enumerate(self.rows):
            if i in errors:
                continue
            v = r.get(name, _MISSING)
            key = "<missing>" if v is _MISSING else str(v)
            counts[key] = counts.get(key, 0) + 1
        return counts


# --------------------------------------------------------------------------- assembly


def _chain_roots(chat: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """Session id per request: the root of its ``parent_chat_id`` chain (int64, shape (n,))."""
    parent_of: dict[int, int] = {}
    for c, p in zip(chat.tolist(), parent.tolist(), strict=True):
        parent_of.setdefault(c, p)
    root_of: dict[int, int] = {}
    out = np.empty(chat.shape[0], dtype=np.int64)
    for k, c in enumerate(chat.tolist()):
        path = []
        node = c
        seen = set()
        while node not in root_of:
            p = parent_of.get(node)
            if p is None:  # unseen ancestor: it names the session
                root_of[node] = node
                break
            if p < 0:
                root_of[node] = node
                break
            if node in seen:  # a cycle: take the smallest id on it as the root
                root_of[node] = min(seen)
                break
            seen.add(node)
            path.append(node)
            node = p
        r = root_of[node]
        for x in path:
            root_of[x] = r
        out[k] = r
    return out


def _factorize_sessions(values: list[Any]) -> np.ndarray:
    """Session ids as int64: ints kept, strings numbered by first appearance, absent -1."""
    if all(v is None or type(v) is int for v in values):
        return np.array([-1 if v is None else v for v in values], dtype=np.int64)
    codes: dict[Any, int] = {}
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        if v is None:
            out[i] = -1
        else:
            out[i] = codes.setdefault(str(v), len(codes))
    return out


def _fill_missing_hashes(
    flat: np.ndarray,
    lens: np.ndarray,
    has: np.ndarray,
    inp: np.ndarray,
    block_size: int,
    source: str = "<lines>",
) -> tuple[np.ndarray, np.ndarray]:
    """Give requests without hash ids fresh ids that no other request uses
    (above the largest given id, or below the smallest when that would overflow int64)."""
    if has.all():
        return flat, lens
    need = (inp + (block_size - 1)) // block_size
    new_lens = np.where(has, lens, need)
    total = int(new_lens.sum())
    out = np.empty(total, dtype=np.int64)
    given = np.repeat(has, new_lens)
    out[given] = flat
    n_new = total - int(flat.size)
    start = int(flat.max()) + 1 if flat.size else 0
    if start + n_new - 1 > _INT64_MAX:
        start = int(flat.min()) - n_new
        if start < _INT64_MIN:
            raise TraceError(
                source, None, "hash_ids", "no 64-bit ids left for the requests without hash_ids"
            )
    out[~given] = np.arange(start, start + n_new, dtype=np.int64)
    return out, new_lens


def _reorder_csr(
    flat: np.ndarray, lens: np.ndarray, order: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Permute the rows of a CSR array: row ``k`` of the result is row ``order[k]``."""
    offsets = np.zeros(lens.shape[0] + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    new_lens = lens[order]
    new_off = np.zeros_like(offsets)
    np.cumsum(new_lens, out=new_off[1:])
    idx = np.repeat(offsets[:-1][order] - new_off[:-1], new_lens) + np.arange(
        int(new_off[-1]), dtype=np.int64
    )
    return flat[idx], new_lens
