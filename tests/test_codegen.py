"""Generated C and Rust code: compile it, run it on random cases, compare with the Python
predicates (and exact brute force beyond the predicates' int64 range)."""

from __future__ import annotations

import math
import shutil
import subprocess
from fractions import Fraction as F
from pathlib import Path

import numpy as np
import pytest

from lmetric_theory.core import kernel as pr
from lmetric_theory.theory.codegen import LANGUAGES, emit, emit_c, emit_rust

N_CASES = 3000

C_MAIN = r"""
#include <stdio.h>
int main(void) {
    long long v[8];
    while (scanf("%lld %lld %lld %lld %lld %lld %lld %lld",
                 &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) == 8) {
        printf("%.17g %.17g %d %d %d\n",
               lmetric_lam_eff(v[0], v[1], v[2], v[3], v[6], v[7]),
               lmetric_lam_star(v[0], v[1], v[2], v[3]),
               lmetric_product_sign(v[0], v[1], v[2], v[3], v[6], v[7]),
               lmetric_linear_sign(v[0], v[1], v[2], v[3], v[4], v[5]),
               lmetric_disagrees(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]));
    }
    return 0;
}
"""

RUST_MAIN = r"""
use std::io::{self, BufRead, Write};
fn main() {
    let stdin = io::stdin();
    let mut out = String::new();
    for line in stdin.lock().lines() {
        let v: Vec<i64> = line.unwrap().split_whitespace().map(|x| x.parse().unwrap()).collect();
        out.push_str(&format!(
            "{:?} {:?} {} {} {}\n",
            lmetric_lam_eff(v[0], v[1], v[2], v[3], v[6], v[7]),
            lmetric_lam_star(v[0], v[1], v[2], v[3]),
            lmetric_product_sign(v[0], v[1], v[2], v[3], v[6], v[7]),
            lmetric_linear_sign(v[0], v[1], v[2], v[3], v[4], v[5]),
            lmetric_disagrees(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]) as i32
        ));
    }
    io::stdout().write_all(out.as_bytes()).unwrap();
}
"""


def cases(seed: int, n: int, big: bool = False) -> np.ndarray:
    """Rows (P1, B1, P2, B2, lam_num, lam_den, p0, b0), int64, with zeros and ties."""
    rng = np.random.default_rng(seed)
    hiP, hiB = (2**50, 2**24) if big else (20_000, 300)
    tiny = rng.random(n) < 0.3
    P1 = np.where(tiny, rng.integers(0, 4, n), rng.integers(0, hiP, n))
    P2 = np.where(tiny, rng.integers(0, 4, n), rng.integers(0, hiP, n))
    B1 = np.where(tiny, rng.integers(0, 3, n), rng.integers(0, hiB, n))
    B2 = np.where(tiny, rng.integers(0, 3, n), rng.integers(0, hiB, n))
    num = rng.integers(0, 3000, n)
    den = rng.integers(1, 8, n)
    # exact linear ties: B2 = B1 - den*k, P2 = P1 + num*k
    k = rng.integers(-2, 3, n)
    tie = (rng.random(n) < 0.15) & (B1 - den * k >= 0) & (P1 + num * k >= 0)
    B2 = np.where(tie, B1 - den * k, B2)
    P2 = np.where(tie, P1 + num * k, P2)
    p0 = rng.integers(0, 2, n)
    b0 = rng.integers(0, 2, n)
    return np.stack([P1, B1, P2, B2, num, den, p0, b0], axis=1).astype(np.int64)


def run(binary: Path, rows: np.ndarray) -> list[list[str]]:
    text = "\n".join(" ".join(str(int(x)) for x in r) for r in rows) + "\n"
    proc = subprocess.run([str(binary)], input=text, capture_output=True, text=True,
                          timeout=60, check=True)
    out = [line.split() for line in proc.stdout.splitlines()]
    assert len(out) == len(rows)
    return out


def same_float(a: float, b: float) -> bool:
    if math.isnan(b):
        return math.isnan(a)
    return a == pytest.approx(b, rel=1e-12, abs=0)


def check_against_predicates(rows: np.ndarray, out: list[list[str]]) -> None:
    P1, B1, P2, B2, num, den, p0, b0 = rows.T
    for i, r in enumerate(rows):
        lam = F(int(num[i]), int(den[i]))
        a, b = int(p0[i]), int(b0[i])
        le, ls, ps, lsg, dis = out[i]
        assert same_float(float(le), float(pr.lambda_eff(P1[i], B1[i], P2[i], B2[i], a, b)))
        assert same_float(float(ls), float(pr.lambda_star(P1[i], B1[i], P2[i], B2[i])))
        # 1-element arrays (0-d inputs with a Fraction rate hit a predicates issue)
        s1 = slice(i, i + 1)
        assert int(ps) == int(pr.product_sign(P1[s1], B1[s1], P2[s1], B2[s1], a, b)[0]), r
        assert int(lsg) == int(pr.linear_sign(P1[s1], B1[s1], P2[s1], B2[s1], lam)[0]), r
        assert bool(int(dis)) == bool(
            pr.disagrees(P1[s1], B1[s1], P2[s1], B2[s1], lam, a, b)[0]
        ), r


def check_against_brute_force(rows: np.ndarray, out: list[list[str]]) -> None:
    for r, (_le, _ls, ps, lsg, dis) in zip(rows.tolist(), out, strict=True):
        P1, B1, P2, B2, num, den, p0, b0 = r
        s = (P1 + p0) * (B1 + b0) - (P2 + p0) * (B2 + b0)
        c = F(P1 - P2) + F(num, den) * (B1 - B2)
        sg = lambda x: (x > 0) - (x < 0)  # noqa: E731
        assert int(ps) == sg(s) and int(lsg) == sg(c), r
        assert bool(int(dis)) == (sg(s) * sg(c) == -1), r


@pytest.fixture(scope="module")
def c_binary(tmp_path_factory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler (cc/gcc/clang) on PATH")
    d = tmp_path_factory.mktemp("c")
    src = d / "main.c"
    src.write_text(emit_c() + C_MAIN)
    exe = d / "main"
    subprocess.run([cc, "-std=c11", "-O1", "-Wall", "-Wextra", "-Werror", str(src), "-o",
                    str(exe), "-lm"], check=True, capture_output=True, timeout=120)
    return exe


def test_c_matches_predicates(c_binary):
    rows = cases(1, N_CASES)
    check_against_predicates(rows, run(c_binary, rows))


def test_c_is_exact_beyond_int64_products(c_binary):
    """P up to 2^50, B up to 2^24: (P + p0)(B + b0) overflows int64 and needs __int128;
    compare with exact brute force."""
    rows = cases(2, N_CASES, big=True)
    check_against_brute_force(rows, run(c_binary, rows))


def test_c_int64_fallback(tmp_path):
    """Without __int128 the code falls back to int64: exact within |inputs| < 2^31."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc/gcc) on PATH")
    src = tmp_path / "main.c"
    src.write_text("#undef __SIZEOF_INT128__\n" + emit_c() + C_MAIN)
    exe = tmp_path / "main"
    proc = subprocess.run([cc, "-std=c11", "-O1", "-fwrapv", str(src), "-o", str(exe), "-lm"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    rows = cases(3, N_CASES)
    check_against_predicates(rows, run(exe, rows))
    # the fallback really is in effect: beyond its range the products overflow
    big = cases(2, N_CASES, big=True)
    with pytest.raises(AssertionError):
        check_against_brute_force(big, run(exe, big))


@pytest.fixture(scope="module")
def rust_binary(tmp_path_factory) -> Path:
    rustc = shutil.which("rustc")
    if rustc is None:
        pytest.skip("rustc not on PATH; the Rust output is not compiled in this environment")
    d = tmp_path_factory.mktemp("rust")
    src = d / "main.rs"
    src.write_text(emit_rust() + RUST_MAIN)
    exe = d / "main"
    proc = subprocess.run([rustc, "--edition", "2021", "-O", "-D", "warnings", str(src),
                           "-o", str(exe)], capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return exe


def test_rust_matches_predicates(rust_binary):
    rows = cases(4, N_CASES)
    check_against_predicates(rows, run(rust_binary, rows))


def test_rust_is_exact_on_large_inputs(rust_binary):
    rows = cases(5, N_CASES, big=True)
    check_against_brute_force(rows, run(rust_binary, rows))


def test_emit_dispatch():
    assert LANGUAGES == ("c", "rust")
    assert emit("c") == emit_c() and emit("rust") == emit_rust()
    with pytest.raises(ValueError, match="unknown language 'go'; valid: c, rust"):
        emit("go")
    # the arithmetic comes from the derivation, e.g. the product difference
    assert "(w_B_1 + w_b_0)*(w_P_1 + w_p_0) - (w_B_2 + w_b_0)*(w_P_2 + w_p_0)" in emit_c()
    assert "(B_1 + b_0)*(P_1 + p_0) - (B_2 + b_0)*(P_2 + p_0)" in emit_rust()
