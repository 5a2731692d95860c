"""Several browser sessions at once on one server: each ends with its own result, none sees another's.

The sessions share one cached model (``st.cache_resource``); each picks a different sample, method
and class in the sidebar (``bench/load.py`` with fewer sessions). Every session must end with its
own sample, method and class in the sidebar, its own class over the overlay and in the sentence,
no exception or error box, and an overlay picture byte-identical to the engine's overlay for its own
selection, computed with the same number of CPU threads (and nearer to it than to any other
session's). Afterwards the server still serves a fresh session.

Skips only where no Chromium is installed; fails instead when ``CAM_EXPLORER_REQUIRE_BROWSER=1``.
"""

from __future__ import annotations

import asyncio

import pytest
import torch

import explain
from bench import load
from explain.samples import SAMPLES_DIR
from tests import server
from ui import widgets

pytestmark = pytest.mark.browser

SESSIONS = 3
CHANGES = 2


async def _fresh_session(url: str, default_label: str) -> tuple[str, list[str]]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await server.launch_chromium(p)
        try:
            page = await (await browser.new_context(viewport=server.VIEWPORT)).new_page()
            await page.goto(url, timeout=load.FIRST_MS)
            state = await server.wait_overlay(page, default_label, timeout_ms=load.STEP_MS)
            await server.settle(page, load.STEP_MS)
            return str(state["label"]), await server.failures(page)
        finally:
            await browser.close()


def test_concurrent_sessions_keep_their_own_results() -> None:
    server.require_chromium()
    m = explain.load_model(explain.DEFAULT_MODEL)
    default_label = load.label(
        m, explain.explain(m, explain.load_image(SAMPLES_DIR / widgets.DEFAULT_SAMPLE)).predictions[0][0]
    )
    plans = load.make_plans(m, SESSIONS, CHANGES)
    # Distinct selections, or a session showing another's result could go unnoticed.
    assert len({(p.sample, p.method, p.final_class) for p in plans}) == SESSIONS
    assert len({p.classes[-1] for p in plans}) == SESSIONS
    # The server computes with as many CPU threads as this process: a different thread count sums
    # in another order and moves about one pixel of an overlay by one level (measured: 1 of 50 176).
    threads = {"OMP_NUM_THREADS": str(torch.get_num_threads())}
    with server.streamlit_server(timeout=120, extra_env=threads) as (url, proc):
        results, _wall = asyncio.run(load.concurrent(url, plans, default_label))
        load.crosstalk(results, plans)
        problems = {r.index: r.problems for r in results if r.problems}
        assert problems == {}
        for r, plan in zip(results, plans):
            assert r.shown_label.endswith(" " + plan.classes[-1]), (r.shown_label, plan.classes[-1])
            assert len(r.changes) == len(plan.classes)
        shown, boxes = asyncio.run(_fresh_session(url, default_label))
        assert shown.endswith(" " + default_label) and boxes == []
        assert proc.poll() is None, "the server died under load"
