"""A page's own controls rerun only their panel (``st.fragment``), seen on the wire in a real browser.

What the server sends is read from the websocket itself (Streamlit's ``BackMsg``/``ForwardMsg``
protobufs): a control inside a fragment asks for a rerun *of that fragment* (``fragment_id`` set),
and the server then sends new elements for the main area only, none for the sidebar, whose widgets
(a 1000-class picker among them) are the bulk of a whole-app rerun. A sidebar change, the control,
does rerun the sidebar: the check can tell the two apart.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

import explain
from tests import server

pytestmark = pytest.mark.browser

STEP_MS = 120_000
FIRST_MS = 180_000
SIDEBAR_ROOT, MAIN_ROOT = 1, 0  # the first index of a delta's path: Streamlit's root containers


@dataclass
class Wire:
    """Every websocket frame of one browser page, decoded."""

    sent: list[BackMsg] = field(default_factory=list)
    received: list[ForwardMsg] = field(default_factory=list)

    def attach(self, page) -> None:
        def on_socket(ws) -> None:
            ws.on("framesent", lambda d: self.sent.append(BackMsg.FromString(_bytes(d))))
            ws.on("framereceived", lambda d: self.received.append(ForwardMsg.FromString(_bytes(d))))

        page.on("websocket", on_socket)

    def clear(self) -> None:
        self.sent.clear()
        self.received.clear()

    def reruns(self) -> list[str]:
        """The fragment id of each rerun the browser asked for ("" for the whole app)."""
        return [m.rerun_script.fragment_id for m in self.sent if m.WhichOneof("type") == "rerun_script"]

    def delta_roots(self) -> list[int]:
        """The root container (main area, sidebar) of every element the server sent."""
        return [m.metadata.delta_path[0] for m in self.received
                if m.WhichOneof("type") == "delta" and len(m.metadata.delta_path)]


def _bytes(data: bytes | str) -> bytes:
    return data if isinstance(data, bytes) else data.encode("latin-1")


async def _wait_images(page, n: int) -> None:
    await page.wait_for_function(
        """n => [...document.querySelectorAll('[data-testid="stMain"] [data-testid="stImage"] img')]
                 .filter(i => i.complete && i.naturalWidth > 0).length === n""",
        arg=n, timeout=STEP_MS,
    )


def _only_the_panel_ran(wire: Wire, what: str) -> None:
    reruns = wire.reruns()
    assert reruns and all(reruns), f"{what}: the browser asked for a whole-app rerun: {reruns}"
    roots = wire.delta_roots()
    assert roots.count(MAIN_ROOT) > 0, f"{what}: nothing new was sent for the panel"
    assert SIDEBAR_ROOT not in roots, f"{what}: the sidebar was rerun ({roots.count(SIDEBAR_ROOT)} elements sent)"


async def _drive(url: str, top5: list[str], grid_methods: list[str]) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await server.launch_chromium(p)
        try:
            page = await (await browser.new_context(viewport=server.VIEWPORT)).new_page()
            wire = Wire()
            wire.attach(page)
            main = page.locator(server.MAIN)

            # ---- Compare classes: removing a class reruns the grid, not the sidebar ----
            await page.goto(url + "/compare_classes", timeout=FIRST_MS)
            await main.get_by_role("heading", name="Compare classes").wait_for(timeout=FIRST_MS)
            await _wait_images(page, len(top5))
            await server.settle(page, STEP_MS)
            wire.clear()
            await main.get_by_role("button", name=f"Remove {top5[-1]}", exact=True).click(timeout=STEP_MS)
            await _wait_images(page, len(top5) - 1)
            await server.settle(page, STEP_MS)
            _only_the_panel_ran(wire, "removing a class on Compare classes")
            captions = [t["caption"] for t in await server.main_images(page)]
            assert not any(c.startswith(top5[-1] + " — ") for c in captions), captions
            assert await server.failures(page) == []

            # The control: a sidebar change reruns the whole app, sidebar included.
            wire.clear()
            await server.choose(page, "Colormap", "viridis", STEP_MS)
            await server.settle(page, STEP_MS)
            assert "" in wire.reruns() and SIDEBAR_ROOT in wire.delta_roots(), wire.reruns()

            # ---- Compare methods & layers: dropping a method reruns the grid alone ----
            await server.open_page(page, "Compare methods", STEP_MS)
            await main.get_by_role("heading", name="Compare methods & layers").wait_for(timeout=STEP_MS)
            await server.settle(page, STEP_MS)
            before = [t["caption"] for t in await server.main_images(page)]
            dropped = [c for c in before if c.startswith(grid_methods[-1] + " · ")]
            assert dropped, before
            wire.clear()
            await main.get_by_role("button", name=f"Remove {grid_methods[-1]}", exact=True).click(timeout=STEP_MS)
            await _wait_images(page, len(before) - len(dropped))
            await server.settle(page, STEP_MS)
            _only_the_panel_ran(wire, "removing a method on Compare methods")
            after = [t["caption"] for t in await server.main_images(page)]
            assert not [c for c in after if c.startswith(grid_methods[-1] + " · ")], after
            assert await server.failures(page) == []

            # ---- Faithfulness: the curves' steps rerun that panel alone ----
            await server.open_page(page, "Faithfulness", STEP_MS)
            await main.get_by_role("heading", name="Deletion and insertion curves").wait_for(timeout=STEP_MS)
            await server.settle(page, STEP_MS)
            cost = main.get_by_text("This runs the model on about")
            first = await cost.inner_text(timeout=STEP_MS)
            wire.clear()
            slider = main.get_by_role("slider")
            await slider.first.focus()
            await page.keyboard.press("ArrowRight")
            await page.wait_for_function(
                """old => { const e = [...document.querySelectorAll('[data-testid="stMain"] p')]
                            .find(p => p.textContent.startsWith('This runs the model on about'));
                            return !!e && e.textContent !== old; }""",
                arg=first, timeout=STEP_MS,
            )
            await server.settle(page, STEP_MS)
            _only_the_panel_ran(wire, "changing the steps on Faithfulness")
            assert await server.failures(page) == []
        finally:
            await browser.close()


def test_page_controls_rerun_only_their_panel(lite0: explain.Model) -> None:
    server.require_chromium()
    from explain.samples import SAMPLES_DIR
    from ui import text, widgets

    preds = explain.explain(lite0, explain.load_image(SAMPLES_DIR / widgets.DEFAULT_SAMPLE)).predictions
    top5 = [text.class_label(lite0.categories, i) for i, _n, _p in preds]
    grid_methods = [explain.get_method(m).title for m in explain.methods.DEFAULT_GRID]
    with server.streamlit_server(timeout=180) as (url, proc):
        asyncio.run(_drive(url, top5, grid_methods))
        assert proc.poll() is None, "the server died during the test"
