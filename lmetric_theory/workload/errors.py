"""Errors and warnings raised while reading traces."""

from __future__ import annotations


class TraceError(ValueError):
    """A trace cannot be read: names the file, the line, the field and the reason.

    Parameters
    ----------
    source : str
        File name (or ``"<lines>"`` for in-memory input).
    line : int or None
        1-based physical line number, or None when the problem concerns the whole file.
    field : str or None
        The offending field (JSON key or CSV column), or None for whole-line problems
        such as invalid JSON.
    reason : str
        What is wrong, in words.
    """

    def __init__(self, source: str, line: int | None, field: str | None, reason: str) -> None:
        self.source = source
        self.line = line
        self.field = field
        self.reason = reason
        where = source if line is None else f"{source}, line {line}"
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}: {what}{reason}")


class TraceOrderWarning(UserWarning):
    """Timestamps were not non-decreasing; the requests were stable-sorted by arrival."""
