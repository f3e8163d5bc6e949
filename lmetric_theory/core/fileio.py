"""The three file helpers every layer shares: strict JSON values, atomic writes, and the
text check of an input file (binary or not UTF-8).

Each lives here once so the simulator, the audit, the reports and the CLI write and read
files the same way. The library proper calls the writers only when asked to save
something (``SnapshotLog.save_*``); it never writes on its own.

Atomic writes: the content goes to a temporary file in the target's directory (mode
``0644``), is flushed to disk, and then replaces the target with :func:`os.replace`; an
interruption leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "TextFileError",
    "atomic_write",
    "atomic_write_text",
    "decode_text",
    "json_safe",
    "read_text",
]


# ===================================================================================== JSON


def json_safe(x: Any) -> Any:
    """A strict-JSON copy of ``x``: non-finite floats become ``None``, numpy values Python
    ones, fractions floats, tuples and arrays lists, mapping keys strings.

    Parameters
    ----------
    x : Any
        A scalar, or dicts, lists, tuples and numpy arrays of them, nested.

    Returns
    -------
    Any
        A value ``json.dumps(..., allow_nan=False)`` accepts when ``x`` holds only
        numbers, strings, booleans, ``None`` and the containers above.
    """
    if isinstance(x, dict):
        return {str(k): json_safe(val) for k, val in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(val) for val in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, Fraction):
        x = float(x)
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# =============================================================================== atomic I/O


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(binary_file)`` on a temporary file next to ``path``, then rename it over
    ``path`` (parent folders are created).

    Parameters
    ----------
    path : str or path-like
        The target file.
    write : callable
        Writes the whole content to the open binary file it is given.

    Returns
    -------
    Path
        The target. On any exception the temporary file is removed and ``path`` is
        untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` as UTF-8, atomically (see :func:`atomic_write`)."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))


# ============================================================================ reading text


class TextFileError(ValueError):
    """An input file that is not UTF-8 text.

    Attributes
    ----------
    line : int
        1-based line of the first offending byte.
    reason : str
        ``"contains a NUL byte: a binary file, not <kind>"`` or
        ``"not valid UTF-8 (<codec reason>)"``; each reader puts its own prefix (file name
        and line) in front.
    """

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


def decode_text(data: bytes, kind: str) -> str:
    """The text of a file's bytes (UTF-8, a byte-order mark tolerated).

    Parameters
    ----------
    data : bytes
        The whole file.
    kind : str
        What the file should be, for the message, e.g. ``"a trace"`` or ``"JSON Lines"``.

    Returns
    -------
    str
        The decoded text (line ends as in the file).

    Raises
    ------
    TextFileError
        The bytes hold a NUL byte (text never does: a binary file, named as such rather
        than as bad UTF-8) or are not valid UTF-8.
    """
    nul = data.find(b"\0")
    if nul >= 0:
        raise TextFileError(
            data.count(b"\n", 0, nul) + 1, f"contains a NUL byte: a binary file, not {kind}"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise TextFileError(line, f"not valid UTF-8 ({exc.reason})") from None


def read_text(path: str | os.PathLike[str], kind: str) -> str:
    """:func:`decode_text` of the file at ``path`` (``OSError`` when it cannot be read)."""
    return decode_text(Path(path).read_bytes(), kind)
