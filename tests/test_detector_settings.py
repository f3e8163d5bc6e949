"""The detector's settings in one frozen value (``detector/settings.py``) and what takes it:
the messages, the mitigations, the columnar verdicts and the one flags-to-verdict assembly."""

from __future__ import annotations

import ast
import dataclasses
import pickle
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from lmetric_theory.detector import (
    Detector,
    DetectorSettings,
    LinearReference,
    Mitigation,
    MitigationKind,
    Snapshot,
)
from lmetric_theory.detector.messages import EMPTY, build_findings
from lmetric_theory.detector.mitigation import mitigated_choice, mitigated_choices
from lmetric_theory.detector.verdict import assemble

DETECTOR = Path(__file__).resolve().parents[1] / "lmetric_theory" / "detector"


def _same(*verdicts: object) -> bool:
    """Equal verdicts, NaN rates included (the repr shows every field)."""
    return len({repr(v) for v in verdicts}) == 1


def test_settings_module_imports_no_other_detector_module() -> None:
    tree = ast.parse((DETECTOR / "settings.py").read_text(encoding="utf-8"))
    imported: list[str] = []
    for node in ast.walk(tree):  # module level, functions and TYPE_CHECKING blocks alike
        if isinstance(node, ast.Import):
            imported += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in settings.py"
            imported.append(node.module or "")
    assert imported
    assert not [m for m in imported if m.startswith("lmetric_theory")], imported


def test_settings_hold_the_validated_values_and_their_exact_forms() -> None:
    ref = LinearReference.band(0.1, 60.0, 0.3)
    det = Detector(ref, Fraction(2, 4), 2.0, extreme_factor=4.0, tie_break="cache",
                   block_tokens=32, load_cap=8)
    s = det.settings
    assert isinstance(s, DetectorSettings)
    assert s.reference is ref
    assert s.prefill_offset == Fraction(1, 2) and isinstance(s.prefill_offset, Fraction)
    assert s.batch_offset == 2 and type(s.batch_offset) is int
    assert not s.integer_offsets  # a Fraction offset: no pure-integer path
    assert (s.lam, s.lam_lo, s.lam_hi) == (0.3, 0.1, 60.0)
    # the binary values of the floats, exactly
    assert Fraction(*s.lam_nd) == Fraction(0.3) and Fraction(*s.lam_lo_nd) == Fraction(0.1)
    assert s.lam_hi_nd == (60, 1)
    assert s.band
    assert (s.extreme_lo, s.extreme_hi) == (0.1 / 4.0, 60.0 * 4.0)
    assert (s.extreme_factor, s.tie_break, s.block_tokens, s.load_cap) == (4.0, "cache", 32, 8.0)
    assert s.mitigations["zero_prefill"] == Mitigation.prefill_block(32)
    assert s.mitigations["exact_tie"] == Mitigation.tie_break("cache")
    assert s.mitigations["extreme_low"] == Mitigation.load_cap(8)
    # the detector's attributes read the settings
    assert (det.reference, det.prefill_offset, det.batch_offset, det.load_cap) == (
        ref, Fraction(1, 2), 2, 8.0
    )
    assert det.mitigations is s.mitigations
    plain = Detector(40).settings
    assert plain.integer_offsets and not plain.band and plain.lam_nd == (40, 1)


def test_settings_are_frozen_and_the_detector_cannot_drift_from_them() -> None:
    det = Detector(40, 0, 1)
    s = det.settings
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.prefill_offset = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.mitigations["disagreement"] = Mitigation.none()  # type: ignore[index]
    for name in ("settings", "prefill_offset", "batch_offset", "reference", "mitigations"):
        with pytest.raises(AttributeError):
            setattr(det, name, None)
    snap = Snapshot([100, 40], [0, 1])
    assert det.check(snap).product_choice == 1  # (100 + 0)(0 + 1) > (40 + 0)(1 + 1)


def test_settings_compare_hash_and_pickle_by_value() -> None:
    a = Detector(LinearReference.band(20, 60), Fraction(1, 3), 1, load_cap=4).settings
    b = Detector(LinearReference.band(20, 60), Fraction(1, 3), 1, load_cap=4).settings
    c = Detector(LinearReference.band(20, 60), Fraction(1, 3), 1).settings
    assert a == b and hash(a) == hash(b)
    assert a != c
    back = pickle.loads(pickle.dumps(a))
    assert back == a and back.lam_lo_nd == a.lam_lo_nd and back.integer_offsets == a.integer_offsets


def test_pickled_detector_and_verdicts_give_the_same_verdicts() -> None:
    rng = np.random.default_rng(5)
    P = rng.integers(0, 4, (200, 4)) * 10
    B = rng.integers(0, 4, (200, 4))
    det = Detector(LinearReference.band(2, 30), 0, 0, load_cap=2)
    vs = det.check_many(P, B)
    det2 = pickle.loads(pickle.dumps(det))
    vs2 = pickle.loads(pickle.dumps(vs))
    assert vs2.settings == det.settings
    assert vs.flagged.any()
    for k in range(len(vs)):
        snap = Snapshot(P[k], B[k])
        assert _same(det2.check(snap), det.check(snap), vs2[k], vs[k])


def test_verdicts_carry_the_settings_not_the_detector() -> None:
    det = Detector(12.5)
    vs = det.check_many([[0, 10], [30, 0]], [[3, 0], [0, 2]])
    assert vs.settings is det.settings
    assert "detector" not in {f.name for f in dataclasses.fields(vs)}


@pytest.mark.parametrize(
    "P, B, offsets",
    [
        ([100, 40, 5000], [0, 1, 60], (0, 1)),  # disagreement
        ([0, 30, 7], [4, 0, 2], (0, 1)),  # zero_prefill
        ([5, 9, 3], [0, 0, 2], (1, 0)),  # idle_tie
        ([10, 20, 5], [1, 0, 3], (0, 1)),  # exact tie 20 = 20 = 20
        ([10, 20.5, 5], [1, 0, 3], (0, 1)),  # float input: the general path
        ([10, 20, 5], [1, 0, 3], (Fraction(1, 2), 1)),  # Fraction offset: the general path
        ([7, 8], [3, 3], (0, 1)),  # clean
    ],
)
def test_one_assembly_for_check_general_path_and_verdicts(P, B, offsets) -> None:
    det = Detector(LinearReference.band(5, 50, 12.5), *offsets)
    snap = Snapshot(P, B)
    v = det.check(snap)
    vs = det.check_many([P], [B])
    assert _same(vs[0], v)
    flags = tuple(bool(vs.mask(k)[0]) for k in (
        "disagreement", "fragile", "zero_prefill", "idle_tie", "exact_tie",
        "extreme_operating_point",
    ))
    rebuilt = assemble(det.settings, snap, v.product_choice, v.linear_choice, v.rival, flags,
                       v.lam_eff, v.lam_star, v.regret_tokens)
    assert _same(rebuilt, v)
    if not any(flags):
        assert v.findings is EMPTY and rebuilt.findings is EMPTY
    else:
        assert v.findings == build_findings(det.settings, snap, v.product_choice,
                                            v.linear_choice, v.rival, flags, v.lam_eff,
                                            v.regret_tokens)


def test_exact_tie_lists_the_same_instances_on_both_paths() -> None:
    # integer inputs and offsets (exact lists) and the same values as floats (the kernel's
    # exact sign): the tied set is the same
    det = Detector(40, 0, 1)
    ints = det.check(Snapshot([10, 20, 5, 40], [1, 0, 3, 0])).findings
    floats = det.check(Snapshot([10.0, 20.0, 5.0, 40.0], [1.0, 0.0, 3.0, 0.0])).findings
    assert Snapshot([10.0, 20.0], [1.0, 0.0]).integral  # integral floats are stored as int64
    halves = Detector(40, 0.5, 1).check(Snapshot([9.5, 19.5, 4.5], [1, 0, 3])).findings
    tie = [f for f in ints if f.kind == "exact_tie"]
    assert tie and tie[0].instances == (0, 1, 2)
    assert [f for f in floats if f.kind == "exact_tie"] == tie
    assert [f.instances for f in halves if f.kind == "exact_tie"] == [(0, 1, 2)]


def test_mitigations_take_the_settings() -> None:
    det = Detector(12.5, 0, 0, load_cap=2)
    s = det.settings
    snap = Snapshot([0, 30, 7, 7], [4, 0, 2, 2], uncached_tokens=[0, 10, 7, 1])
    for m in (Mitigation.prefill_block(16), Mitigation.batch_offset(1), Mitigation.fallback(),
              Mitigation.tie_break("load"), Mitigation.tie_break("cache"),
              Mitigation.load_cap(3), Mitigation.none()):
        assert mitigated_choice(s, snap, m) == det.mitigated_choice(snap, m)
    assert mitigated_choice(s, snap, Mitigation.fallback()) == 1  # 30 < 0 + 12.5 * 4
    # the verdict's own mitigation is resolved by the detector (zero_prefill is critical)
    assert det.check(snap).mitigation.kind is MitigationKind.PREFILL_BLOCK
    assert det.mitigated_choice(snap) == mitigated_choice(s, snap, Mitigation.prefill_block(16))
    P = np.array([[0, 30, 7], [5, 5, 5]])
    B = np.array([[4, 0, 2], [1, 1, 1]])
    assert mitigated_choices(s, P, B, Mitigation.fallback()).tolist() == [1, 0]


def test_snapshot_public_number_lists() -> None:
    s = Snapshot(np.array([3, 0, 9]), np.array([1, 2, 0]))
    assert s.prefill_list == [3, 0, 9] and s.batch_list == [1, 2, 0]
    assert all(type(x) is int for x in s.prefill_list + s.batch_list)
    assert s.pairs == [(3, 1), (0, 2), (9, 0)]
    assert s.integral
    f = Snapshot([1.5, 2.0], [0, 1])
    assert f.prefill_list == [1.5, 2.0] and not f.integral
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.prefill_list = [0, 0, 0]  # type: ignore[misc]
