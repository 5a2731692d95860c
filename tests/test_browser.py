"""The dashboard in a real browser: Debian's Chromium driven by Playwright against ``streamlit run app.py``.

What AppTest cannot see: the page really renders in a browser (pictures load, no exception box), the
sidebar widgets work with a mouse and keyboard, the top navigation switches pages, and KaTeX draws
the formulas. Expected classes come from the engine, never from this file.

Skips only where no Chromium is installed, and fails instead when ``CAM_EXPLORER_REQUIRE_BROWSER=1``
(``.ci/run``). Screenshots go to ``artifacts/browser_*.png``.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlparse

import pytest

import explain
from explain.samples import SAMPLES_DIR, sample_title
from tests import server
from ui import widgets
from ui import text as ui_text

pytestmark = pytest.mark.browser

ARTIFACTS = server.ROOT / "artifacts"
FIRST_LOAD_MS = 180_000  # the first run loads the model: 30+ s on a busy 2-core machine
STEP_MS = 90_000
OTHER_SAMPLE = "coffee.jpg"
LEARN_PATH = "/learn"


@pytest.fixture(scope="module")
def lite0_model(lite0: explain.Model) -> explain.Model:
    return lite0  # the session's shared embedded default model


def predictions_of(m: explain.Model, filename: str) -> list[tuple[int, str, float]]:
    """The engine's top-5 for a sample, as the app computes it by default (squash, Grad-CAM)."""
    return explain.explain(m, explain.load_image(SAMPLES_DIR / filename)).predictions


async def _drive(base_url: str, expected: dict[str, object], console: list[str]) -> dict[str, float]:
    from playwright.async_api import async_playwright

    timings: dict[str, float] = {}
    async with async_playwright() as p:
        browser = await server.launch_chromium(p)
        try:
            page = await (await browser.new_context(viewport={"width": 1400, "height": 1200})).new_page()
            page.on("pageerror", lambda err: console.append(f"pageerror: {err}"))

            # ---- Explain: the default sample renders ----
            t0 = time.monotonic()
            await page.goto(base_url, timeout=FIRST_LOAD_MS)
            first = await server.wait_overlay(page, expected["default_label"], timeout_ms=FIRST_LOAD_MS)
            await server.settle(page, FIRST_LOAD_MS)
            timings["first overlay"] = time.monotonic() - t0
            assert await server.failures(page) == []
            assert await server.selected(page, "Class to explain") == expected["default_label"]
            images = await server.main_images(page)
            # The model's view, the raw map and the overlay, all really decoded by the browser.
            assert len(images) >= 3 and all(i["width"] > 0 for i in images), images
            main_text = await page.locator(server.MAIN).inner_text()
            assert f"{expected['default_title']} · squash" in main_text

            # ---- Explain: another sample from the sidebar ----
            t0 = time.monotonic()
            await server.choose(page, "Sample", expected["other_title"], STEP_MS)
            state = await server.wait_overlay(page, expected["other_label"], first["src"], STEP_MS)
            await server.settle(page, STEP_MS)
            timings["sample change"] = time.monotonic() - t0
            assert await server.failures(page) == []
            assert await server.selected(page, "Sample") == expected["other_title"]
            assert await server.selected(page, "Class to explain") == expected["other_label"]
            main_text = await page.locator(server.MAIN).inner_text()
            assert f"{expected['other_title']} · squash" in main_text
            assert expected["other_top_name"] in main_text  # the plain-language sentence names the top class
            assert expected["default_label"] not in main_text
            # The sidebar's top-5 chart, drawn by the browser (SVG): the new picture's classes, in order.
            chart = page.locator(f'{server.SIDEBAR} [data-testid="stVegaLiteChart"] svg')
            await chart.first.wait_for(timeout=STEP_MS)
            await page.wait_for_function(
                """want => { const t = [...document.querySelectorAll(
                                '[data-testid="stSidebar"] [data-testid="stVegaLiteChart"] svg text')]
                            .map(e => e.textContent.trim());
                            return want.every((name, i) => t[i] === name); }""",
                arg=expected["other_top5_names"], timeout=STEP_MS,
            )
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "browser_explain.png"))

            # ---- Explain: another class (the runner-up) ----
            t0 = time.monotonic()
            await server.choose(page, "Class to explain", expected["second_label"], STEP_MS)
            await server.wait_overlay(page, expected["second_label"], state["src"], STEP_MS)
            await server.settle(page, STEP_MS)
            timings["class change"] = time.monotonic() - t0
            assert await server.failures(page) == []

            # ---- Compare classes via the top navigation ----
            t0 = time.monotonic()
            await server.open_page(page, "Compare classes", STEP_MS)
            # By path: the shareable-link query string follows the page and may or may not be there yet.
            await page.wait_for_url(lambda u: urlparse(u).path.endswith("/compare_classes"), timeout=STEP_MS)
            await page.locator(server.MAIN).get_by_role("heading", name="Compare classes").wait_for(timeout=STEP_MS)
            await page.wait_for_function(
                """n => [...document.querySelectorAll('[data-testid="stMain"] [data-testid="stImage"] img')]
                         .filter(i => i.complete && i.naturalWidth > 0).length >= n""",
                arg=len(expected["other_top5_labels"]),
                timeout=STEP_MS,
            )
            await server.settle(page, STEP_MS)
            timings["compare classes"] = time.monotonic() - t0
            assert await server.failures(page) == []
            tiles = await server.main_images(page)
            assert len(tiles) >= 5 and all(t["width"] > 0 for t in tiles), tiles
            captions = [t["caption"] for t in tiles]
            for label in expected["other_top5_labels"]:  # one tile per class of the image's top-5
                assert any(c.startswith(label + " — ") for c in captions), (label, captions)
            await page.screenshot(path=str(ARTIFACTS / "browser_compare.png"))

            # ---- Learn: formulas typeset by KaTeX ----
            t0 = time.monotonic()
            await page.goto(base_url + LEARN_PATH, timeout=STEP_MS)
            katex = page.locator(f"{server.MAIN} .katex")
            not_found = page.get_by_text("Page not found")  # Streamlit's dialog for an unknown URL path
            await katex.or_(not_found).first.wait_for(state="attached", timeout=STEP_MS)
            await server.settle(page, STEP_MS)
            timings["learn"] = time.monotonic() - t0
            assert await not_found.count() == 0, f"{LEARN_PATH}: Streamlit says 'Page not found'"
            # Not sent back to the default page (the query string carries the shared settings).
            assert urlparse(page.url).path.rstrip("/") == LEARN_PATH, page.url
            assert await server.failures(page) == []
            assert await katex.count() >= 1
            # KaTeX really typeset something: rendered glyphs with a size, not the raw TeX source.
            assert await page.evaluate(
                """() => [...document.querySelectorAll('[data-testid="stMain"] .katex-html')]
                         .some(e => e.getBoundingClientRect().width > 0)"""
            )
            await page.screenshot(path=str(ARTIFACTS / "browser_learn.png"))
        finally:
            await browser.close()
    return timings


def test_dashboard_in_chromium(lite0_model: explain.Model) -> None:
    server.require_chromium()
    default = widgets.DEFAULT_SAMPLE
    assert OTHER_SAMPLE != default
    default_preds = predictions_of(lite0_model, default)
    other_preds = predictions_of(lite0_model, OTHER_SAMPLE)
    cats = lite0_model.categories
    expected = {
        "default_title": sample_title(default),
        "default_label": ui_text.class_label(cats, default_preds[0][0]),
        "other_title": sample_title(OTHER_SAMPLE),
        "other_label": ui_text.class_label(cats, other_preds[0][0]),
        "other_top_name": other_preds[0][1],
        "second_label": ui_text.class_label(cats, other_preds[1][0]),
        "other_top5_labels": [ui_text.class_label(cats, i) for i, _n, _p in other_preds],
        "other_top5_names": [n for _i, n, _p in other_preds],
    }
    # Otherwise the test could not tell whether the page followed the sample change.
    assert expected["other_label"] != expected["default_label"]
    console: list[str] = []
    with server.streamlit_server(timeout=120) as (url, proc):
        timings = asyncio.run(_drive(url, expected, console))
        assert proc.poll() is None, "the server died during the test"
    assert console == []
    print("browser timings (s):", {k: round(v, 2) for k, v in timings.items()})
