"""A real checkpoint over 20 MB uploaded through Chromium on the *Your model* page, and loaded.

Streamlit's server refuses any upload over ``server.maxUploadSize`` with HTTP 413, whatever the
widget's own ``max_upload_size`` says, and AppTest never goes through that server: only a real
upload shows the limit holds. The file is a random-weight ResNet-18 ``state_dict`` (44.7 MB).
"""

from __future__ import annotations

import asyncio
import pathlib

import pytest
import torch
import torchvision

from explain import custom
from tests import server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PAGE_PATH = "/own_model"
LOAD_MS = 300_000  # first run loads the default model, then 45 MB go up and ResNet-18 is built


@pytest.fixture(scope="module")
def resnet18_pth(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("weights") / "my_resnet18.pth"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


async def _upload(base_url: str, weights: pathlib.Path, console: list[str]) -> dict[str, object]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await server.launch_chromium(p)
        try:
            page = await (await browser.new_context(viewport=server.VIEWPORT)).new_page()
            page.on("pageerror", lambda err: console.append(f"pageerror: {err}"))
            # Only the uploads: Streamlit itself probes a few paths relative to the page (404s).
            page.on("response", lambda r: console.append(f"HTTP {r.status} {r.url}")
                    if r.status >= 400 and "upload_file" in r.url else None)
            await page.goto(base_url + PAGE_PATH, timeout=LOAD_MS)
            main = page.locator(server.MAIN)
            await main.get_by_role("heading", name="Your model").wait_for(timeout=LOAD_MS)
            await server.wait_idle(page, LOAD_MS)
            arch = main.get_by_role("combobox", name="Architecture", exact=True)
            await arch.click()
            await arch.fill("resnet18")
            await page.get_by_role("option", name="resnet18", exact=True).click()
            await server.wait_idle(page, LOAD_MS)
            await main.locator('input[type="file"]').first.set_input_files(str(weights))
            button = main.get_by_role("button", name="Load my model")
            # Either the button comes alive, or the upload fails (413 from the server): stop at either.
            state = await page.wait_for_function(
                """() => {
                    const up = document.querySelector('[data-testid="stMain"] [data-testid="stFileUploader"]');
                    if (up && /error|413/i.test(up.innerText)) return 'failed: ' + up.innerText;
                    const ok = [...document.querySelectorAll('[data-testid="stMain"] button')]
                        .some(b => b.textContent.trim() === 'Load my model' && !b.disabled);
                    return ok ? 'ready' : false;
                }""",
                timeout=LOAD_MS,
            )
            outcome = await state.json_value()
            if outcome != "ready":
                return {"failures": [outcome], "loaded": 0, "text": "", "model": ""}
            await server.wait_idle(page, LOAD_MS)
            await button.click()
            done = main.get_by_text(f"Your model is loaded from {weights.name}.")
            await done.or_(page.locator(server.FAILURE_BOXES)).first.wait_for(timeout=LOAD_MS)
            await server.wait_idle(page, LOAD_MS)
            result = {
                "failures": await server.failures(page),
                "loaded": await done.count(),
                "text": await main.inner_text(),
                "model": await server.selected(page, "Model"),
            }
            await page.screenshot(path=str(server.ROOT / "artifacts" / "browser_own_model.png")) if (
                server.ROOT / "artifacts"
            ).is_dir() else None
            return result
        finally:
            await browser.close()


def test_a_45_mb_resnet18_state_dict_uploads_and_loads(resnet18_pth: pathlib.Path) -> None:
    server.require_chromium()
    size_mb = resnet18_pth.stat().st_size / 2**20
    assert size_mb > 40, size_mb  # well over the old 20 MB limit
    expected = custom.build_custom("resnet18", custom.read_state_dict(resnet18_pth.read_bytes(), resnet18_pth.name))
    console: list[str] = []
    with server.streamlit_server(timeout=120) as (url, proc):
        result = asyncio.run(_upload(url, resnet18_pth, console))
        assert proc.poll() is None, "the server died during the upload"
    assert result["failures"] == [], result["failures"]
    assert result["loaded"] == 1, result["text"][:500]
    text = str(result["text"])
    assert f"Classes: {expected.num_classes}" in text and f"recommended {expected.default_layer}" in text
    assert "(uploaded)" in str(result["model"])  # the sidebar picker now uses it
    assert console == [], console  # no 413 for the upload, no page error
