"""Packaging: what embedding the detector imports, the ``lmetric-theory app`` sub-command,
and the reference-rate flags' spelling (``--lam``/``--lam-band``, old ``--lambda`` aliases)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from conftest import free_port

from lmetric_theory import cli

HEAVY = ("sympy", "scipy", "streamlit", "plotly", "rich", "pyarrow", "pandas")


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)


def test_embedding_imports_numpy_and_little_else():
    """``from lmetric_theory import Detector, Guard, Snapshot`` loads none of the CLI's or
    the app's dependencies (a router needs numpy only)."""
    code = ("import sys\nfrom lmetric_theory import Detector, Guard, Snapshot\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = _fresh(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_detector_checks_without_the_heavy_dependencies():
    """A detector check works with sympy, streamlit and plotly unimportable."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('sympy', 'streamlit', 'plotly'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from lmetric_theory import Detector, LinearReference, Snapshot\n"
        "v = Detector(LinearReference.fixed(1000), prefill_offset=0, batch_offset=1).check(\n"
        "    Snapshot(prefill_tokens=[0, 300, 2000], batch_size=[60, 1, 0]))\n"
        "print(v.product_choice, v.linear_choice)\n"
    )
    out = _fresh(code)
    assert out.returncode == 0, out.stderr
    # Product: scores 61, 600, 2000 -> 0; linear(1000): 60000, 1300, 2000 -> 1.
    assert out.stdout.split() == ["0", "1"]


def test_app_command_without_streamlit_says_which_extra():
    code = (
        "import importlib.util\n"
        "import sys\n"
        "real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda n, p=None: None if n == 'streamlit' else real(n, p)\n"
        "from lmetric_theory import cli\n"
        "sys.exit(cli.main(['app']))\n"
    )
    out = _fresh(code)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "streamlit not installed" in lines[0] and "lmetric-theory[app]" in lines[0]


def test_app_command_serves_the_app():
    """``lmetric-theory app`` starts Streamlit on the package's entry script; its health
    endpoint answers."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmetric_theory", "app", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true",
         "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        body = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health",
                                            timeout=2) as r:
                    body = r.read().decode()
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        assert body == "ok"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)


def test_app_entry_script_is_inside_the_package():
    from lmetric_theory.cli.app import entry_script

    path = entry_script()
    assert path.name == "main.py" and path.parent.name == "app"
    assert (path.parent / "pages" / "decision_regions.py").is_file()


# ------------------------------------------------------------------ --lam / --lam-band


@pytest.mark.parametrize("band", ["-1,5", "0,5", "-1e3,5"])
def test_lam_band_negative_or_zero_low_end_is_one_clear_line(capsys, band):
    assert cli.main(["audit", "--lam-band", band]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "lam band: LO must be > 0" in err[0]
    assert "expected one argument" not in err[0]


@pytest.mark.parametrize(("band", "needle"), [
    ("5", "expected LO,HI"), ("a,5", "must be numbers"), ("10,5", "HI must be >= LO"),
    ("1,inf", "finite"),
])
def test_lam_band_bad_values(capsys, band, needle):
    assert cli.main(["audit", "--lam-band", band]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def _audit_ref(capsys, *flags: str) -> dict:
    assert cli.main(["audit", "--count", "200", "--json", *flags]) == 0
    rep = json.loads(capsys.readouterr().out)
    return rep.get("lam_reference", rep.get("lambda_reference"))


def test_lam_band_is_centred_geometrically_like_the_default(capsys):
    ref = _audit_ref(capsys, "--lam-band", "100,400")
    assert (ref["lam_lo"], ref["lam_hi"]) == (100, 400)
    assert ref["lam"] == pytest.approx(200.0)  # sqrt(100 * 400), not the midpoint 250
    default = _audit_ref(capsys)
    assert default["lam"] == pytest.approx(math.sqrt(default["lam_lo"] * default["lam_hi"]))


def test_old_lambda_flags_are_hidden_aliases(capsys):
    assert _audit_ref(capsys, "--lambda", "512")["lam"] == 512
    assert _audit_ref(capsys, "--lam", "512")["lam"] == 512
    assert _audit_ref(capsys, "--lambda-band", "100,400")["lam"] == pytest.approx(200.0)
    with pytest.raises(SystemExit):
        cli.main(["audit", "--help"])
    help_text = capsys.readouterr().out
    assert "--lam-band" in help_text and "--lambda" not in help_text


@pytest.mark.slow
def test_wheel_installs_the_app_pages(tmp_path):
    """The built wheel carries the app's entry script and every page, so an installed
    package (not only a checkout) can run ``lmetric-theory app``."""
    import shutil
    import zipfile
    from pathlib import Path

    from lmetric_theory.app.main import PAGES

    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"  # a copy, so the build leaves no build/ folder in the checkout
    shutil.copytree(root / "lmetric_theory", src / "lmetric_theory",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q",
                          "-w", str(tmp_path)], capture_output=True, text=True, timeout=600,
                         check=False)
    if out.returncode != 0 and "Could not" in out.stderr:
        pytest.skip(f"cannot build a wheel here (no build backend reachable): {out.stderr[-200:]}")
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("lmetric_theory-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "lmetric_theory/app/main.py" in names
    for script, _title, _url in PAGES:
        assert f"lmetric_theory/app/pages/{script}" in names


def test_audit_out_without_plotly_names_the_extra(tmp_path):
    """The HTML report needs plotly (app extra): without it, one line and exit 2, and
    nothing is written."""
    code = (
        "import importlib.util, sys\n"
        "real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda n, p=None: None if n == 'plotly' else real(n, p)\n"
        "from lmetric_theory import cli\n"
        f"sys.exit(cli.main(['audit', '--count', '50', '--out', {str(tmp_path / 'o')!r}]))\n"
    )
    out = _fresh(code)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "lmetric-theory[app]" in lines[0]
    assert not (tmp_path / "o").exists()
