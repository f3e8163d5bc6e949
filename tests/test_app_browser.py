"""Real-browser test of ``app.py``: ``streamlit run`` headless on a free localhost port,
driven by the system's Chromium through Playwright at 1400x1000; screenshots of every page.

Screenshots of the six pages go to ``docs/img/`` (the README shows them), or to
``$LMETRIC_ARTIFACTS`` when set; the extra interaction shots go to the same folder's
``more/`` part only when ``$LMETRIC_ARTIFACTS`` is set. Every page's short URL must resolve,
and no metric, plot title or formula may be clipped. The test skips, with the reason, only
when no Chromium binary or no Playwright package is available.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
STARTUP_TIMEOUT_S = 60.0
PAGE_TIMEOUT_MS = 60_000


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return next((p for p in CHROMIUM_CANDIDATES if os.access(p, os.X_OK)), None)


def _stop(proc: subprocess.Popen) -> None:
    """Terminate the server and everything it started (its own process group)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
        "--server.headless", "true",
        "--server.port", str(port),
        "--server.address", "127.0.0.1",
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited early ({proc.returncode}):\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit did not answer within {STARTUP_TIMEOUT_S} s:\n"
                            f"{log.read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def page(server: str):  # noqa: ANN201 - playwright Page
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium binary found (install the Debian package 'chromium')")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="the playwright Python package is not installed")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1400, "height": 1000})
            pg.set_default_timeout(PAGE_TIMEOUT_MS)
            yield pg
        finally:
            browser.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the page screenshots go: ``$LMETRIC_ARTIFACTS``, else ``docs/img``."""
    env = os.environ.get("LMETRIC_ARTIFACTS")
    out = Path(env) if env else ROOT / "docs" / "img"
    out.mkdir(parents=True, exist_ok=True)
    print(f"screenshots in {out}")
    return out


@pytest.fixture(scope="module")
def more(artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the interaction screenshots go (not committed)."""
    if os.environ.get("LMETRIC_ARTIFACTS"):
        out = artifacts / "more"
        out.mkdir(exist_ok=True)
        return out
    return tmp_path_factory.mktemp("more")


#: JavaScript: descriptions of clipped text — metric labels/values, markdown, captions and
#: KaTeX wider or taller than their box (beyond a pixel), and plotly titles outside the plot.
CLIPPED_JS = """() => {
  const out = [];
  const sel = ['[data-testid="stMetricValue"]', '[data-testid="stMetricLabel"]',
               '[data-testid="stCaptionContainer"]', '[data-testid="stMarkdownContainer"]',
               '.katex-display', '[data-testid="stHeading"]'];
  for (const s of sel) {
    for (const e of document.querySelectorAll(s)) {
      const st = getComputedStyle(e);
      const hides = (v) => v === 'hidden' || v === 'clip';
      const tooWide = e.scrollWidth > e.clientWidth + 1 && (hides(st.overflowX) ||
                      st.textOverflow === 'ellipsis');
      const tooTall = e.scrollHeight > e.clientHeight + 1 && hides(st.overflowY);
      const inner = [...e.querySelectorAll('*')].some(c => {
        const cs = getComputedStyle(c);
        return cs.textOverflow === 'ellipsis' && c.scrollWidth > c.clientWidth + 1;
      });
      if (tooWide || tooTall || inner) out.push(s + ': ' + e.innerText.slice(0, 60));
    }
  }
  for (const svg of document.querySelectorAll('.main-svg')) {
    const box = svg.getBoundingClientRect();
    for (const t of svg.querySelectorAll('.gtitle')) {
      const r = t.getBoundingClientRect();
      if (r.width && (r.left < box.left - 1 || r.right > box.right + 1 || r.top < box.top - 1))
        out.push('plot title: ' + t.textContent.slice(0, 60));
    }
  }
  return out;
}"""


def _not_clipped(pg) -> None:  # noqa: ANN001
    clipped = pg.evaluate(CLIPPED_JS)
    assert clipped == [], clipped


def _settle(pg) -> None:  # noqa: ANN001
    """Wait until the script run finished (no running indicator) and the page is drawn."""
    pg.wait_for_selector('[data-testid="stApp"]')
    pg.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText"
        ".includes('Running')"
    )


def _no_exception(pg) -> None:  # noqa: ANN001
    assert pg.locator('[data-testid="stException"]').count() == 0, pg.content()[:2000]
    assert pg.get_by_text("Page not found").count() == 0


def test_overview_page(server, page, artifacts):
    page.goto(f"{server}/")  # the landing page
    _settle(page)
    page.get_by_role("heading", name="lmetric-theory").wait_for()
    for title in ("Decision regions", "Snapshot checker", "Trace audit", "Simulate"):
        assert page.get_by_role("link", name=title).count() >= 1
    _no_exception(page)
    _not_clipped(page)
    page.screenshot(path=str(artifacts / "overview.png"))


@pytest.mark.parametrize(("url", "title"), [("regions", "Decision regions"),
                                            ("snapshot", "Snapshot checker"),
                                            ("audit", "Trace audit"),
                                            ("simulate", "Simulate"),
                                            ("advice", "Advice report")])
def test_every_short_url_resolves(server, page, url, title):
    page.goto(f"{server}/{url}")
    _settle(page)
    page.get_by_role("heading", name=title).first.wait_for()
    page.wait_for_timeout(500)  # "Page not found" appears after the first render
    _no_exception(page)


def test_decision_regions_page(server, page, artifacts, more):
    page.goto(f"{server}/regions")
    _settle(page)
    page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg')
    page.get_by_text("Disagreement share of the plotted area").wait_for()
    _no_exception(page)
    # The heatmap and the curves are drawn (plotly renders traces as SVG/canvas).
    assert page.locator('[data-testid="stPlotlyChart"] .main-svg').count() >= 1
    _not_clipped(page)
    page.screenshot(path=str(artifacts / "decision_regions.png"))
    # Open the formulas: KaTeX must render whole (numerators included).
    page.get_by_text("Formulas (derived by the theory module)").click()
    page.wait_for_selector(".katex-display")
    page.wait_for_timeout(500)
    _not_clipped(page)
    page.get_by_text("Formulas (derived by the theory module)").scroll_into_view_if_needed()
    page.locator('[data-testid="stExpander"]').first.evaluate("e => e.scrollIntoView()")
    page.wait_for_timeout(300)
    page.screenshot(path=str(artifacts / "decision_regions_formulas.png"))

    # The log P axis works with the default range (starts at 1 token, says so).
    page.get_by_text("log P axis", exact=True).click()
    page.get_by_text("log P axis starts at 1").wait_for()
    _settle(page)
    assert page.locator('[data-testid="stAlert"]').count() == 0
    _no_exception(page)
    page.get_by_text("log P axis", exact=True).click()
    page.get_by_text("log P axis starts at 1").wait_for(state="detached")

    # Typing a new rate redraws with the library's numbers.
    from lmetric_theory.experiments.regions import compute_regions

    want = compute_regions(1024.0, 8.0, lam=50.0, p_range=(0.0, 4096.0), b_range=(0.0, 32.0))
    box = page.get_by_label("λ: tokens per batch slot")
    box.fill("50")
    box.press("Enter")
    page.get_by_text(f"{want.disagreement_share:.4%}").wait_for()
    _no_exception(page)
    page.screenshot(path=str(more / "decision_regions_lam50.png"))


def test_snapshot_checker_page(server, page, artifacts):
    page.goto(f"{server}/")
    _settle(page)
    # Navigate as a user does: the sidebar link of st.navigation.
    page.get_by_test_id("stSidebarNavItems").get_by_role("link", name="Snapshot checker").click()
    page.wait_for_url(f"{server}/snapshot")
    _settle(page)
    page.get_by_text("Verdict: DISAGREE").wait_for()
    page.get_by_text("Findings and mitigations").wait_for()
    page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg')
    _no_exception(page)
    _not_clipped(page)
    page.screenshot(path=str(artifacts / "snapshot_checker.png"))


def test_trace_audit_page(server, page, artifacts, more, tmp_path):
    page.goto(f"{server}/audit")
    _settle(page)
    page.get_by_text("Disagreement rate over time").first.wait_for()
    page.get_by_text("Worst decisions").wait_for()
    page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg')
    _no_exception(page)
    assert page.locator('[data-testid="stPlotlyChart"]').count() >= 4  # 3 plots + worst
    _not_clipped(page)
    page.screenshot(path=str(artifacts / "trace_audit.png"))
    page.get_by_text("Worst decisions").evaluate("e => e.scrollIntoView()")
    page.wait_for_timeout(300)
    page.screenshot(path=str(artifacts / "trace_audit_worst.png"))

    # Upload mode: a file that is not JSON Lines gets a message, never a traceback.
    page.get_by_text("Upload a JSONL trace").click()
    page.get_by_text("Upload a trace to audit it.").wait_for()
    bad = tmp_path / "trace.jsonl"
    bad.write_text("arrival_s,input_tokens,output_tokens\n0,10,1\n")
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(bad))
    page.get_by_text("Cannot read this trace").wait_for()
    page.get_by_text("not JSON Lines").wait_for()
    _no_exception(page)
    page.screenshot(path=str(more / "trace_audit_bad_upload.png"))

    # A small valid Mooncake trace is audited.
    good = tmp_path / "good.jsonl"
    lines = [
        f'{{"timestamp": {100 * k}, "input_length": {600 + 37 * (k % 11)}, '
        f'"output_length": {5 + k % 7}, "hash_ids": [{k % 3}, {1000 + k}]}}'
        for k in range(300)
    ]
    good.write_text("\n".join(lines) + "\n")
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(good))
    page.get_by_text("Worst decisions").wait_for()
    _settle(page)
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=\"stMetricValue\"]')]"
        ".some(e => e.innerText.trim() === '300')"
    )
    assert page.get_by_text("Cannot read this trace").count() == 0
    _no_exception(page)
    page.screenshot(path=str(more / "trace_audit_upload.png"))


def test_simulate_page(server, page, artifacts, more):
    page.goto(f"{server}/simulate")
    _settle(page)
    page.get_by_role("heading", name="Simulate").first.wait_for()
    page.get_by_text("Deployers' metrics").wait_for()
    page.get_by_text("Per instance").wait_for()
    page.wait_for_selector('[data-testid="stDataFrame"]')
    _no_exception(page)
    assert page.locator('[data-testid="stDataFrame"]').count() == 2
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=\"stMetricValue\"]')]"
        ".some(e => e.innerText.trim() === '1,000')"
    )
    _not_clipped(page)
    page.screenshot(path=str(artifacts / "simulate.png"))

    # A bad SLO is a one-line message, never a traceback.
    box = page.get_by_label("SLO (seconds; any of ttft, itl, e2e; empty: none)")
    box.fill("ttft=2,tpot=1")
    box.press("Enter")
    page.get_by_text("unknown key 'tpot'").wait_for()
    _no_exception(page)
    page.screenshot(path=str(more / "simulate_bad_slo.png"))


def test_advice_page(server, page, artifacts, more, tmp_path, advice_doc):
    from lmetric_theory.io.advise import figures, verdict_headline, write_advice

    page.goto(f"{server}/advice")
    _settle(page)
    page.get_by_text("Upload an advice.json to see its report.").wait_for()
    _no_exception(page)
    # a JSON that is not an advice report gets one message, never a traceback
    bad = tmp_path / "results.json"
    bad.write_text('{"workloads": []}')
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(bad))
    page.get_by_text("Cannot read this report").wait_for()
    page.get_by_text("not an advice document").wait_for()
    _no_exception(page)
    j, _ = write_advice(advice_doc, tmp_path / "out")
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(j))
    page.get_by_text(verdict_headline(advice_doc)).wait_for()
    _settle(page)
    n = len(figures(advice_doc))
    page.wait_for_function(
        f"() => document.querySelectorAll('[data-testid=\"stPlotlyChart\"] .main-svg').length >= {n}")
    for a in advice_doc["verdict"]["against"]:
        page.get_by_text(a["text"]).wait_for()
    assert page.get_by_text("Cannot read this report").count() == 0
    _no_exception(page)
    _not_clipped(page)
    page.screenshot(path=str(artifacts / "advice.png"), full_page=True)


def test_simulate_page_router_state_settings(server, page, more):
    """The router-state settings: four replicas replay without an error; a bad index is
    one line, never a traceback."""
    page.goto(f"{server}/simulate")
    _settle(page)
    page.get_by_text("Deployers' metrics").wait_for()
    box = page.get_by_label("router replicas")
    box.fill("4")
    box.press("Enter")
    _settle(page)
    page.get_by_text("Deployers' metrics").wait_for()
    assert page.get_by_text("Cannot simulate").count() == 0
    _no_exception(page)
    idx = page.get_by_label("index (precise, approximate[:ttl=S|:lru=N])")
    idx.fill("approximate:ttl=0")
    idx.press("Enter")
    page.get_by_text("ttl must be a finite number > 0").wait_for()
    _no_exception(page)
    page.screenshot(path=str(more / "simulate_router_state.png"))


#: JavaScript: the Router state table as drawn (the data grid's accessible DOM): its column
#: headers and its cells row by row; null while no table with those headers is on the page.
ROUTER_STATE_CELLS_JS = """() => {
  for (const t of document.querySelectorAll('[data-testid="stDataFrame"]')) {
    const head = [...t.querySelectorAll('[role="columnheader"]')].map(c => c.innerText.trim());
    if (head[0] !== 'finding') continue;
    const rows = [...t.querySelectorAll('tr')].map(
        r => [...r.querySelectorAll('[role="gridcell"]')].map(c => c.innerText.trim()))
      .filter(r => r.length);
    return {head, rows};
  }
  return null;
}"""


def _set_number(pg, label: str, value: str) -> None:  # noqa: ANN001
    box = pg.get_by_label(label, exact=True)
    box.fill(value)
    box.press("Enter")


def test_trace_audit_page_router_state_findings(server, page, more, tmp_path, capsys):
    """The planted burst trace of the end-to-end test, uploaded on the trace-audit page with
    4 instances: one router with exact state says it has no finding; one router with a
    0.5 s KV event lag shows ``stale_index``; two replicas with that lag show all three
    kinds. Every row on screen is the audit's own JSON (``lmetric-theory audit --json``,
    the page's defaults) passed through ``router_state_rows``."""
    from test_router_state_e2e import _trace

    from lmetric_theory.app.support import router_state_rows
    from lmetric_theory.cli import main
    from lmetric_theory.experiments.router_state_log import RouterStateEntry

    trace = _trace(tmp_path / "burst.jsonl")

    def expected(replicas: int, lag_s: float) -> dict[str, list] | None:
        assert main(["audit", str(trace), "--instances", "4", "--json",
                     "--router-replicas", str(replicas), "--kv-event-lag", str(lag_s)]) == 0
        doc = json.loads(capsys.readouterr().out)
        rows = router_state_rows([RouterStateEntry(**e) for e in doc["router_state"]])
        assert [r["finding"] for r in rows] == [e["kind"].replace("_", " ")
                                                 for e in doc["router_state"]]
        if not rows:
            return None
        return {"head": list(rows[0]), "rows": [[str(v) for v in r.values()] for r in rows]}

    page.goto(f"{server}/audit")
    _settle(page)
    page.get_by_text("Worst decisions").wait_for()
    page.get_by_text("Upload a JSONL trace").click()
    page.get_by_text("Upload a trace to audit it.").wait_for()
    _set_number(page, "instances", "4")
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(trace))

    # R = 1, lag 0: the section is there and says there is nothing to report.
    assert expected(1, 0.0) is None
    page.get_by_text("No router-state finding").wait_for()
    _settle(page)
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=\"stMetricValue\"]')]"
        ".some(e => e.innerText.trim() === '640')"
    )
    assert page.evaluate(ROUTER_STATE_CELLS_JS) is None
    _no_exception(page)

    for replicas, lag, kinds in ((1, 0.5, ["stale index"]),
                                 (2, 0.5, ["replica skew", "herding", "stale index"])):
        want = expected(replicas, lag)
        assert want is not None and [r[0] for r in want["rows"]] == kinds
        _set_number(page, "router replicas", str(replicas))
        _set_number(page, "KV event lag (s)", str(lag))
        page.wait_for_function(f"(want) => JSON.stringify(({ROUTER_STATE_CELLS_JS})()) === "
                               "JSON.stringify(want)", arg=want)
        _settle(page)
        assert page.evaluate(ROUTER_STATE_CELLS_JS) == want
        assert page.get_by_text("No router-state finding").count() == 0
        assert page.get_by_text("Cannot audit").count() == 0
        _no_exception(page)
    page.get_by_role("heading", name="Router state").evaluate("e => e.scrollIntoView()")
    page.wait_for_timeout(300)
    page.screenshot(path=str(more / "trace_audit_router_state.png"))
