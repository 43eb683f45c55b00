"""The HTML leaderboard in a real headless Chromium: no console errors, a header click sorts, every image loads.

Optional: needs Playwright for Python (``pip install -e '.[browser]'``) and a Chromium executable (Debian's
``apt-get install chromium``, or CBBENCH_CHROMIUM=/path); Playwright's own browser download is never used.
"""
from __future__ import annotations

import os
import shutil

import pytest

from cbbench.report.html import render_html
from cbbench.report.leaderboard import render_suite
from tests.test_report import fixed_store

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed "
                                                              "(pip install -e '.[browser]')")

# Without the background-networking flags Chromium keeps trying to reach Google's hosts from a closed network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str | None:
    candidates = [os.environ.get("CBBENCH_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"]
    return next((shutil.which(c) for c in candidates if c and shutil.which(c)), None)


@pytest.fixture
def page(tmp_path):
    executable = chromium()
    if executable is None:
        pytest.skip("no Chromium executable found (apt-get install chromium, or set CBBENCH_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1000})
        finally:
            browser.close()


def test_page_loads_sorts_and_shows_every_image(tmp_path, page):
    with fixed_store(tmp_path) as store:
        report = render_suite(store, "fixture", tmp_path / "plots")
    path = tmp_path / "fixture.html"
    path.write_text(render_html(report), encoding="utf-8")

    errors = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("requestfailed", lambda req: errors.append(f"request failed: {req.url}"))
    page.goto(path.as_uri(), wait_until="load")

    images = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete && i.naturalWidth)")
    assert len(images) == 2 and all(w and w > 0 for w in images), images

    # The per-seed leaderboard: sort by clean top-1, descending on the second click; Δ rows stay with their model.
    table = page.locator("section", has_text="Per training seed").locator("table")
    column = [h.strip() for h in table.locator("thead th").all_inner_texts()].index("clean top-1 ↑")

    def rows():
        return [[c.strip() for c in r.split("\t")] for r in table.locator("tbody tr").all_inner_texts()]

    before = rows()
    header = table.locator("thead th").nth(column)
    header.click()
    assert header.get_attribute("aria-sort") == "ascending"
    header.click()
    assert header.get_attribute("aria-sort") == "descending"
    after = rows()
    assert after != before and sorted(map(tuple, after)) == sorted(map(tuple, before))
    models = [r for r in after if not r[0].startswith("Δ")]
    values = [float(r[column]) for r in models]
    assert values == sorted(values, reverse=True), values
    for i, r in enumerate(after):
        if r[0].startswith("Δ"):  # a Δ row stays under the CB model it compares
            assert i > 0 and after[i - 1][0].endswith("(CB)"), after
    assert not errors, errors
