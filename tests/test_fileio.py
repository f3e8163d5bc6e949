"""``core.fileio``: strict JSON values, atomic writes and the text check of input files,
the one copy of each that the readers and writers of every layer share."""

from __future__ import annotations

import json
import math
import os
import stat
from fractions import Fraction

import numpy as np
import pytest

from lmetric_theory.core.fileio import (
    TextFileError,
    atomic_write,
    atomic_write_text,
    decode_text,
    json_safe,
    read_text,
)

# ------------------------------------------------------------------------------- json_safe


def test_json_safe_makes_strict_json():
    doc = {
        "nan": math.nan, "inf": -math.inf, "np_nan": np.float64("nan"), "ok": 1.5,
        "i64": np.int64(7), "f32": np.float32(0.5), "flag": np.bool_(True),
        "frac": Fraction(1, 4), "arr": np.array([1.0, np.inf]), "tup": (1, math.nan),
        3: "int key", "nested": [{"x": math.inf}],
    }
    out = json_safe(doc)
    assert out == {
        "nan": None, "inf": None, "np_nan": None, "ok": 1.5, "i64": 7, "f32": 0.5,
        "flag": True, "frac": 0.25, "arr": [1.0, None], "tup": [1, None], "3": "int key",
        "nested": [{"x": None}],
    }
    assert type(out["i64"]) is int and type(out["flag"]) is bool
    json.dumps(out, allow_nan=False)  # raises on any NaN or numpy value left


def test_json_safe_keeps_plain_values():
    for v in (None, True, 0, -3, 2.5, "text"):
        assert json_safe(v) == v and type(json_safe(v)) is type(v)


# ---------------------------------------------------------------------------- atomic writes


def test_atomic_write_text_replaces_and_creates_parents(tmp_path):
    target = tmp_path / "a" / "b" / "out.json"
    assert atomic_write_text(target, "é\n") == target
    assert target.read_bytes() == "é\n".encode()
    atomic_write_text(target, "second")
    assert target.read_text(encoding="utf-8") == "second"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]  # no temporary left


def test_atomic_write_failure_leaves_the_old_file(tmp_path):
    target = tmp_path / "out.bin"
    atomic_write(target, lambda f: f.write(b"old"))

    def half(f):
        f.write(b"ne")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        atomic_write(target, half)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


# ----------------------------------------------------------------------------- text check


def test_decode_text_names_nul_byte_line():
    with pytest.raises(TextFileError) as ei:
        decode_text(b"a\nb\nc\0d\n", "a trace")
    assert (ei.value.line, ei.value.reason) == (3, "contains a NUL byte: a binary file, not a trace")
    assert isinstance(ei.value, ValueError)


def test_decode_text_names_invalid_utf8_line():
    with pytest.raises(TextFileError) as ei:
        decode_text(b"ok\n\xff\n", "a CSV")
    assert ei.value.line == 2
    assert ei.value.reason == "not valid UTF-8 (invalid start byte)"


def test_decode_text_strips_bom_and_keeps_line_ends():
    assert decode_text("\ufeffx\r\ny".encode(), "JSON Lines") == "x\r\ny"


def test_read_text_reads_the_file(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes(b"\xef\xbb\xbfhello\n")
    assert read_text(p, "a preset") == "hello\n"
    with pytest.raises(OSError):
        read_text(tmp_path / "missing.txt", "a preset")
