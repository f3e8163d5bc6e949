"""The advice report (advice.html) in a real headless Chromium, opened from disk: the verdict
is at the top, every plot draws, nothing is fetched from the network. A screenshot goes to
``docs/img/advice_report.png`` (the README shows it), or to ``$LMETRIC_ARTIFACTS`` when set. Skips,
with the reason, only when no Chromium binary or no Playwright package is available."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_app_browser import CHROMIUM_ARGS, _chromium

from lmetric_theory.io.advise import figures, verdict_headline, write_advice

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]


def test_advice_html_renders_offline(advice_doc, tmp_path) -> None:
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium binary found (install the Debian package 'chromium')")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="the playwright Python package is not installed")
    _, html_path = write_advice(advice_doc, tmp_path / "out")
    out = Path(os.environ.get("LMETRIC_ARTIFACTS") or ROOT / "docs" / "img")
    out.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1300, "height": 1000})
            fetched: list[str] = []
            pg.on("request", lambda r: fetched.append(r.url))
            pg.goto(html_path.as_uri())
            pg.wait_for_selector(".plot .main-svg")
            n_plots = len(figures(advice_doc))
            pg.wait_for_function(f"() => document.querySelectorAll('.plot .main-svg').length >= {n_plots}")
            # the verdict is the first thing under the title
            first = pg.evaluate("() => document.querySelector('h1').nextElementSibling.id")
            assert first == "verdict"
            text = pg.inner_text("#verdict")
            assert verdict_headline(advice_doc) in text
            for a in advice_doc["verdict"]["against"]:
                assert a["text"] in text
            # every plot has its traces drawn (one line or bar group per policy)
            for fid, fig in figures(advice_doc):
                drawn = pg.evaluate(
                    f"() => document.querySelectorAll('#{fid} .scatterlayer .trace, "
                    f"#{fid} .barlayer .trace').length")
                assert drawn == len(fig.data), fid
            assert [u for u in fetched if not u.startswith(("file:", "data:", "blob:"))] == []
            pg.screenshot(path=str(out / "advice_report.png"))
            pg.evaluate("() => document.querySelector('h2 + .plot, .plot').scrollIntoView()")
            pg.wait_for_timeout(300)
            pg.screenshot(path=str(out / "advice_report_plots.png"))
        finally:
            browser.close()
