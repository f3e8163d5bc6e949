"""The ``hotspot`` synthetic workload: shares, prefix-consistent hashes, seeding, errors."""

from __future__ import annotations

import numpy as np
import pytest

from lmetric_theory.workload.hotspot import HOTSPOT_KEYS, HotspotParams, hotspot, hotspot_from_spec


def _first_blocks(w):
    return np.array([int(w.blocks(i)[0]) for i in range(len(w))])


def test_hot_class_share_and_shared_prefix():
    w = hotspot(HotspotParams(share=0.6, prefix=1024, count=2000, block=128))
    assert len(w) == 2000 and w.meta["kind"] == "hotspot"
    hot = w.session_ids == 0
    assert abs(hot.mean() - 0.6) < 0.03
    # every hot request shares the 8 full prefix blocks, nothing else shares block 0
    blocks = [w.blocks(i) for i in np.flatnonzero(hot)]
    assert all(np.array_equal(b[:8], blocks[0][:8]) for b in blocks)
    firsts = _first_blocks(w)
    assert set(firsts[hot]) == {firsts[np.flatnonzero(hot)[0]]}
    assert np.unique(firsts[~hot]).size == (~hot).sum()  # unrelated prompts share nothing
    # the suffix makes each hot prompt unique after the prefix
    assert len({int(b[8]) for b in blocks}) == len(blocks)
    assert (w.input_tokens[hot] > 1024).all()
    assert np.all(np.diff(w.arrival_s) >= 0)


def test_block_count_and_classes():
    w = hotspot(HotspotParams(share=0.5, classes=3, prefix=300, count=600, block=64))
    n_blocks = np.diff(w.hash_offsets)
    assert np.array_equal(n_blocks, -(-w.input_tokens // 64))
    assert set(np.unique(w.session_ids)) == {0, 1, 2}
    firsts = _first_blocks(w)
    assert np.unique(firsts).size == 3  # one leading block per class
    # equal hash at position k iff equal prefix through block k: the partial 5th block
    # (300 = 4*64 + 44) of two class-0 prompts differs (different suffixes follow)
    c0 = np.flatnonzero(w.session_ids == 0)[:2]
    a, b = w.blocks(int(c0[0])), w.blocks(int(c0[1]))
    assert np.array_equal(a[:4], b[:4]) and a[4] != b[4]


def test_seeded_and_warm_start():
    a, b = hotspot(HotspotParams(seed=3, count=200)), hotspot(HotspotParams(seed=3, count=200))
    assert np.array_equal(a.hash_ids, b.hash_ids) and np.array_equal(a.arrival_s, b.arrival_s)
    c = hotspot(HotspotParams(seed=4, count=200))
    assert not np.array_equal(a.arrival_s, c.arrival_s)
    # warm-up: request 0 is hot and alone for `warm` seconds
    assert a.session_ids[0] == 0 and a.arrival_s[0] == 0 and a.arrival_s[1] >= 1.0
    z = hotspot(HotspotParams(seed=3, count=200, warm=0.0))
    assert z.meta["params"]["warm"] == 0.0


def test_spec_params_and_defaults():
    w = hotspot_from_spec({"share": "0.25", "prefix": "512", "count": "50"}, seed=7)
    assert w.meta["params"]["share"] == 0.25 and w.meta["params"]["seed"] == 7
    assert w.meta["params"]["prefix"] == 512 and len(w) == 50
    assert set(HOTSPOT_KEYS) == set(HotspotParams.__dataclass_fields__)


@pytest.mark.parametrize(
    ("pairs", "text"),
    [
        ({"share": "1.5"}, "share must be a number in (0, 1], got 1.5"),
        ({"share": "0"}, "share must be a number in (0, 1]"),
        ({"prefix": "-1"}, "prefix must be an integer in [1, 1048576] (tokens), got -1"),
        ({"rate": "nan"}, "rate must be a number in (0, 1e6]"),
        ({"count": "2.5"}, "count must be an integer"),
        ({"warm": "-1"}, "warm must be a number in [0, 1e6] (s)"),
        ({"bogus": "1"}, "unknown key 'bogus'; valid keys: share, prefix"),
    ],
)
def test_bad_params_one_line(pairs, text):
    with pytest.raises(ValueError) as e:
        hotspot_from_spec(pairs)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("synthetic:hotspot: ") and text in msg


# ------------------------------------------------------------- synthetic:KIND specs


def test_synthetic_specs_name_every_kind():
    from lmetric_theory.workload.spec import SYNTHETIC_KINDS, synthetic_from_spec

    w = synthetic_from_spec("synthetic:hotspot:share=0.3,prefix=512,count=40", seed=2)
    assert w.meta["kind"] == "hotspot" and w.meta["params"]["seed"] == 2 and len(w) == 40
    for kind in ("chat", "api", "agent", "mixed"):
        v = synthetic_from_spec(f"synthetic:{kind}:count=30,rate=4", seed=1)
        assert v.meta["kind"] == kind and len(v) == 30 and v.meta["rate_rps"] == 4.0
    assert set(SYNTHETIC_KINDS) == {"chat", "api", "agent", "mixed", "hotspot"}


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        ("synthetic:hotspot:share=1.5", "synthetic:hotspot: share must be a number in (0, 1]"),
        ("synthetic:hotspot:prefix=-1", "synthetic:hotspot: prefix must be an integer in [1,"),
        ("synthetic:hotspot:sharex=1", "unknown key 'sharex'; valid keys: share"),
        ("synthetic:nope", "unknown synthetic kind 'nope'; valid kinds: chat, api, agent"),
        ("synthetic:chat:rate=0", "synthetic:chat: rate must be a number in (0, 1e6]"),
        ("synthetic:chat:share=0.5", "synthetic:chat: unknown key 'share'; valid keys: count"),
        ("synthetic:api:count", "expected key=value"),
    ],
)
def test_bad_specs_exit_2_with_one_line(capsys, spec, text):
    from lmetric_theory import cli

    for command in ("simulate", "audit"):
        try:
            code = cli.main([command, spec, "--instances", "8"])
        except SystemExit as e:
            code = e.code
        err = capsys.readouterr().err.strip()
        assert code == 2 and text in err and len(err.splitlines()) == 1, (command, err)
