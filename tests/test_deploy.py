"""A lecture hall: ``deploy/serve.sh 2`` (two Streamlit replicas behind HAProxy) in a real browser.

Four browser sessions (Playwright contexts: separate cookies, like four students) go through the
balancer. Checked:

* the sessions spread over both replicas (HAProxy's affinity cookie names the replica; killing a
  replica below shows that the cookie tells the truth);
* each session keeps its own state across reruns (sample, class), page switches and an upload (the
  upload and the pictures are HTTP requests beside the websocket: without affinity they reach the
  other replica and fail with 400 / 404);
* killing one replica (SIGKILL, like a crash) leaves the other replica's sessions working, and a
  new session goes to the survivor;
* each replica loads the model once (its log line from ``ui.resources``), however many sessions
  it serves;
* SIGTERM to serve.sh stops the replicas and HAProxy: no orphans.

Skips only where HAProxy or Chromium is missing; fails instead when ``CAM_EXPLORER_REQUIRE_BROWSER=1``
(``.ci/run`` installs both). Expected classes come from the engine, never from this file.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import ImageOps

import explain
from explain.samples import SAMPLES_DIR, sample_title
from tests import balancer, server
from ui import text as ui_text
from ui import widgets

pytestmark = [pytest.mark.browser, pytest.mark.slow]

FIRST_MS = 240_000  # each replica loads the model on its first session; 2 cores shared with 4 tabs
STEP_MS = 150_000
SESSIONS = 4
SAMPLES = ("coffee.jpg", "rocket.jpg", "flower.jpg", "astronaut.jpg")
UPLOAD_FROM = ("china.jpg", "cat_and_coffee.jpg", "coffee.jpg", "rocket.jpg")
LOADED = re.compile(r"loaded model (\S+) \(replica (\S+), pid (\d+)\)")


@dataclass
class Plan:
    """What session ``i`` does, and what the engine says it must see."""

    index: int
    title: str  # sample title in the picker
    top1: str  # "967 · espresso": right after picking the sample
    second: str  # the class it then picks
    upload: Path  # a picture no other session uploads
    upload_top1: str
    upload_second: str


def _labels(m: explain.Model, image) -> list[str]:
    return [ui_text.class_label(m.categories, c) for c, _n, _p in explain.explain(m, image).predictions]


def make_plans(m: explain.Model, tmp: Path) -> list[Plan]:
    plans = []
    for i in range(SESSIONS):
        labels = _labels(m, explain.load_image(SAMPLES_DIR / SAMPLES[i]))
        # A picture the server has never seen, different per session: mirrored and cropped.
        src = explain.load_image(SAMPLES_DIR / UPLOAD_FROM[i])
        pic = ImageOps.mirror(src).crop((3 + 2 * i, 5, src.width - 4, src.height - 2 - i))
        path = tmp / f"upload_{i}.png"
        pic.save(path)
        up = _labels(m, explain.load_image(path))
        plans.append(Plan(i, sample_title(SAMPLES[i]), labels[0], labels[1], path, up[0], up[1]))
    return plans


async def replica_of(ctx, url: str) -> str:
    """The replica HAProxy pinned this browser context to (its affinity cookie), or ''."""
    return next((c["value"] for c in await ctx.cookies(url) if c["name"] == balancer.COOKIE), "")


async def expect_explain(page, title: str, cls: str, old: str = "") -> dict:
    """The Explain page shows ``cls`` over a freshly loaded overlay, ``title`` in the sample picker
    (unless empty), and no error box."""
    state = await server.wait_overlay(page, cls, old, STEP_MS)
    await server.settle(page, STEP_MS)
    assert await server.failures(page) == []
    assert await server.selected(page, "Class to explain") == cls
    if title:
        assert await server.selected(page, "Sample") == title
    return state


async def switch_pages_and_back(page) -> None:
    await server.open_page(page, "Compare classes", STEP_MS)
    await page.locator(server.MAIN).get_by_role("heading", name="Compare classes").wait_for(timeout=STEP_MS)
    await server.settle(page, STEP_MS)
    assert await server.failures(page) == []
    await server.open_page(page, "Explain", STEP_MS)


async def session_work(page, plan: Plan) -> None:
    """Reruns, a page switch and an upload; the session's own state after each."""
    old = (await server.overlay_state(page))["src"]
    await server.choose(page, "Sample", plan.title, STEP_MS)
    state = await expect_explain(page, plan.title, plan.top1, old)
    await server.choose(page, "Class to explain", plan.second, STEP_MS)
    state = await expect_explain(page, plan.title, plan.second, state["src"])
    await switch_pages_and_back(page)
    state = await expect_explain(page, plan.title, plan.second)
    await server.choose_image_source(page, "Upload", STEP_MS)
    await server.settle(page, STEP_MS)
    await server.upload(page, plan.upload, STEP_MS)
    state = await expect_explain(page, "", plan.upload_top1, state["src"])
    await server.choose(page, "Class to explain", plan.upload_second, STEP_MS)
    state = await expect_explain(page, "", plan.upload_second, state["src"])
    await switch_pages_and_back(page)
    await expect_explain(page, "", plan.upload_second)
    assert plan.upload.name in await page.locator(server.MAIN).inner_text()  # still the uploaded picture


async def _drive(dep: balancer.Deployment, plans: list[Plan], default: tuple[str, str, str]) -> dict:
    from playwright.async_api import async_playwright

    default_title, default_label, default_second = default
    out: dict = {}
    async with async_playwright() as p:
        browser = await server.launch_chromium(p)
        try:
            contexts, pages = [], []
            # One after the other, as students arrive: the balancer sends each new session to the
            # replica with the fewest connections.
            for _plan in plans:
                ctx = await browser.new_context(viewport=server.VIEWPORT)
                page = await ctx.new_page()
                await page.goto(dep.url, timeout=FIRST_MS)
                await server.wait_overlay(page, default_label, timeout_ms=FIRST_MS)
                await server.settle(page, FIRST_MS)
                contexts.append(ctx)
                pages.append(page)
            out["replicas"] = [await replica_of(c, dep.url) for c in contexts]
            await asyncio.gather(*(session_work(pg, pl) for pg, pl in zip(pages, plans)))
            out["replicas_after"] = [await replica_of(c, dep.url) for c in contexts]
            out["loads_before_kill"] = {n: r.log_text() for n, r in dep.replicas.items()}

            # ---- a replica crashes ----
            victim = out["replicas"][0]
            os.kill(dep.replicas[victim].pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while balancer.alive(dep.replicas[victim].pid) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            out["victim"] = victim
            survivors = [(pg, pl) for pg, pl, r in zip(pages, plans, out["replicas"]) if r != victim]
            # The survivor's sessions still work: a rerun with a new class, their own upload kept.
            for pg, pl in survivors:
                old = (await server.overlay_state(pg))["src"]
                await server.choose(pg, "Class to explain", pl.upload_top1, STEP_MS)
                await expect_explain(pg, "", pl.upload_top1, old)
                assert pl.upload.name in await pg.locator(server.MAIN).inner_text()
            out["survivors_after_kill"] = [await replica_of(contexts[pl.index], dep.url) for _pg, pl in survivors]
            # A new student arrives: the survivor serves the whole session.
            ctx = await browser.new_context(viewport=server.VIEWPORT)
            page = await ctx.new_page()
            await page.goto(dep.url, timeout=FIRST_MS)
            await expect_explain(page, default_title, default_label)
            await server.choose(page, "Class to explain", default_second, STEP_MS)
            await expect_explain(page, default_title, default_second)
            out["newcomer"] = await replica_of(ctx, dep.url)
        finally:
            await browser.close()
    return out


def model_loads(log: str) -> list[tuple[str, str]]:
    """(model, replica) for each 'loaded model' line of a replica's log."""
    return [(m[1], m[2]) for m in LOADED.finditer(log)]


def test_two_replicas_behind_haproxy(tmp_path: Path) -> None:
    balancer.require_haproxy()
    server.require_chromium()
    m = explain.load_model(explain.DEFAULT_MODEL)
    default_labels = _labels(m, explain.load_image(SAMPLES_DIR / widgets.DEFAULT_SAMPLE))
    default = (sample_title(widgets.DEFAULT_SAMPLE), default_labels[0], default_labels[1])
    plans = make_plans(m, tmp_path)
    # Distinct results, or a session showing another's could go unnoticed.
    assert len({p.second for p in plans}) == SESSIONS and len({p.upload_second for p in plans}) == SESSIONS
    assert all(p.top1 != default[1] for p in plans)

    with balancer.serve(2, tmp_path / "logs") as dep:
        assert sorted(dep.replicas) == ["r1", "r2"] and dep.haproxy_pid
        out = asyncio.run(_drive(dep, plans, default))

        assert sorted(set(out["replicas"])) == ["r1", "r2"], out["replicas"]  # spread over both
        assert out["replicas_after"] == out["replicas"]  # nobody was moved while both were up
        for name, log in out["loads_before_kill"].items():
            # Once per replica, by that replica, however many sessions it served.
            assert model_loads(log) == [(explain.DEFAULT_MODEL, name)], (name, log[-2000:])
        survivor = "r2" if out["victim"] == "r1" else "r1"
        assert out["survivors_after_kill"] and set(out["survivors_after_kill"]) == {survivor}
        assert out["newcomer"] == survivor
        assert model_loads(dep.replicas[survivor].log_text()) == [(explain.DEFAULT_MODEL, survivor)]
        assert dep.proc.poll() is None, "serve.sh stopped when one replica died"
        assert any(f"replica {out['victim']}" in line and "exited" in line for line in dep.output)

        # ---- SIGTERM stops everything serve.sh started ----
        pids = dep.pids()
        rc = balancer.stop(dep.proc)
        assert rc == 128 + signal.SIGTERM, (rc, dep.output[-5:])
        deadline = time.monotonic() + 5  # orphans would be re-parented and keep running
        while any(balancer.alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [p for p in pids if balancer.alive(p)] == []
