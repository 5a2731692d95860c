"""The Audit page in a real browser: open it, pick the digit model, run scikit-learn's digits.

Expected figures come from the engine. Skips only where no Chromium is installed (fails instead
under ``CAM_EXPLORER_REQUIRE_BROWSER=1``). Screenshot: ``artifacts/browser_audit.png``.
"""

from __future__ import annotations

import asyncio

import pytest

import explain
from explain import demo
from tests import server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ARTIFACTS = server.ROOT / "artifacts"
FIRST_LOAD_MS = 180_000
RUN_MS = 240_000


async def _drive(base_url: str, accuracy: str, console: list[str]) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await server.launch_chromium(p)
        try:
            page = await (await browser.new_context(viewport={"width": 1400, "height": 1400})).new_page()
            page.on("pageerror", lambda err: console.append(f"pageerror: {err}"))
            await page.goto(base_url + "/audit", timeout=FIRST_LOAD_MS)
            await server.wait_idle(page, FIRST_LOAD_MS)
            await server.choose(page, "Model", "digits_lenet (embedded)")
            await server.wait_idle(page, FIRST_LOAD_MS)
            digits = page.get_by_text("scikit-learn digits (1,797 labelled)")
            await digits.wait_for(timeout=FIRST_LOAD_MS)
            # Pick the set explicitly and let that rerun finish: on a loaded machine a click on Run
            # could otherwise land while the page still shows the previous model's default set.
            await digits.click()
            await server.wait_idle(page, FIRST_LOAD_MS)
            await page.get_by_role("button", name="Run the audit").click()
            await page.get_by_text("Possible shortcuts").wait_for(timeout=RUN_MS)
            await server.settle(page, RUN_MS)
            assert await server.failures(page) == []
            metrics = await page.locator('[data-testid="stMetric"]').all_inner_texts()
            assert any("Accuracy" in m and accuracy in m for m in metrics), metrics
            assert any("1,797" in m for m in metrics), metrics
            assert await page.get_by_text("No shortcut found").count() == 1
            images = await server.main_images(page)
            assert len(images) >= 10 and all(i["complete"] and i["width"] > 0 for i in images)
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "browser_audit.png"), full_page=True)
        finally:
            await browser.close()


def test_audit_page_runs_the_digits_set_in_chromium() -> None:
    server.require_chromium()
    m = explain.load_model("digits_lenet")
    expected = explain.audit(m, demo.digits_set(), batch_size=64).summary["accuracy"]
    console: list[str] = []
    with server.streamlit_server(timeout=120) as (url, proc):
        asyncio.run(_drive(url, f"{expected:.1%}", console))
        assert proc.poll() is None, "the server died during the test"
    assert console == []
