"""The search page in a real headless Chromium (Debian's chromium, driven by Playwright).

Search, see results with photos, open an explanation, click a result (a click event
reaches the service). A screenshot is saved to ``test-artifacts/search-page.png``.
``make test`` installs Chromium and sets FUSIONRANK_REQUIRE_BROWSER=1, so there a
missing browser fails the test instead of skipping it.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from fusionrank.serving.app import create_app

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = os.environ.get("FUSIONRANK_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        msg = f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install chromium) or set FUSIONRANK_CHROMIUM"
        if os.environ.get("FUSIONRANK_REQUIRE_BROWSER") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


def test_search_page_end_to_end(service_factory, live_server, browser, tmp_path):
    svc = service_factory("browser")
    app = create_app(svc, "admin", "page-events-key")
    console_errors = []
    with live_server(app) as srv:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
        page.goto(srv.url + "/")
        page.wait_for_function("document.querySelectorAll('#category option').length > 1")
        page.fill("#q", "red shirt")
        page.click("#go")
        page.wait_for_selector(".card")
        cards = page.locator(".card")
        assert cards.count() >= 10
        # photos really load (decoded, non-zero size)
        page.wait_for_function("[...document.querySelectorAll('.card img.photo')].slice(0, 6).every(i => i.complete && i.naturalWidth > 0)")
        n_img = page.evaluate("[...document.querySelectorAll('.card img.photo')].filter(i => i.naturalWidth > 0).length")
        assert n_img >= 6
        assert "results for" in page.inner_text("#status") and "ms" in page.inner_text("#status")
        # voice description play control on products that have one
        assert page.locator(".card audio.voice").count() >= 1
        # open the explanation of the first result
        first = cards.nth(0)
        assert not first.locator(".why").is_visible()
        first.locator(".why-btn").click()
        why = first.locator(".why")
        assert why.is_visible()
        text = why.inner_text()
        for m in ("text", "image", "audio"):
            assert m in text
        assert "Fusion weights" in text and "Matched query terms" in text and "Learned weights" in text
        assert first.locator(".bar-row").count() == 3
        contrib = [float(x) for x in first.locator(".contrib").all_inner_texts()]
        api = svc.search("red shirt", k=24)["results"][0]
        assert contrib == pytest.approx([round(api["contributions"][m], 3) for m in ("text", "image", "audio")], abs=2e-3)
        assert first.locator(".terms code").count() >= 1
        # a click on a result is posted as an event
        pid = first.get_attribute("data-product-id")
        first.locator("img.photo, .title").first.click()
        t0 = time.time()
        while time.time() - t0 < 10:
            evs = list(svc.events.iter_events())
            if any(e["action_name"] == "click" for e in evs):
                break
            time.sleep(0.1)
        clicks = [e for e in evs if e["action_name"] == "click"]
        assert clicks and clicks[-1]["object_id"] == pid and clicks[-1]["position"] == 1
        assert (clicks[-1]["grid_row"], clicks[-1]["grid_col"]) == (1, 1)
        assert sum(e["action_name"] == "impression" for e in evs) == cards.count()
        # the page's anonymous browser and visit ids arrive, stored only as keyed hashes
        assert clicks[-1]["client_id"] and clicks[-1]["session_id"] and len(clicks[-1]["client_id"]) == 32
        q = [r for r in svc.events.iter_queries() if r["query_id"] == clicks[-1]["query_id"]]
        assert q and q[0]["client_id"] == clicks[-1]["client_id"] and q[0]["session_id"] == clicks[-1]["session_id"]
        # a bad query shows the API's message, not a broken page
        page.goto(srv.url + "/?q=shirt&category=Spaceships")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('Error')")
        assert "unknown category" in page.inner_text("#status")
        page.goto(srv.url + "/?q=red%20shirt")
        page.wait_for_selector(".card img.photo")
        page.locator(".card .why-btn").first.click()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "search-page.png"), full_page=False)
        page.close()
    assert (ARTIFACTS / "search-page.png").stat().st_size > 10_000
    assert not [e for e in console_errors if "422" not in e and "Unprocessable" not in e], console_errors
