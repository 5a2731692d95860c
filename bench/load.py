"""Load test: N concurrent browser sessions on one ``streamlit run app.py``, plus single-user latencies.

    python bench/load.py [--sessions 8] [--changes 3] [--json [PATH]] [--no-profile] [--no-single]
    python bench/load.py --replicas 2 ...     # through deploy/serve.sh 2 (2 replicas behind HAProxy)
    python bench/load.py --through URL [--server-pids PID,PID] ...   # through a server already running

One headless Chromium (Debian's, ``/usr/bin/chromium``), one browser context per session, all driven
concurrently through Playwright's async API. Session *i* picks its own sample, method and classes
in the sidebar exactly as a user would (mouse and keyboard on the selectboxes), then changes the
class ``--changes`` times. Every session must end showing its **own** result (no crosstalk through
the model that all sessions share):

* the sidebar shows its sample, method and class; the overlay heading and the sentence under it
  name its class; no exception or error box;
* the overlay picture the browser got is, pixel for pixel, closer to the engine's own overlay for
  this session's (sample, class, method) than to any other session's.

Expected classes and overlays are computed by the engine (``explain.explain``) before the server starts.

Reported: p50/p95 of *class change → updated overlay* under load (from the click on the option
to the moment the new overlay is decoded and headed by the new class), the server's peak RSS
(``/proc``), and single-user latencies on the embedded model: upload → first overlay, class change
→ overlay, colormap change → overlay, against a 0.5 s target for class and colormap changes,
with a breakdown (browser → server, script run, after the run) measured in the page and the cost of
each step of the script measured in-process, to say what dominates when the target is missed.

What a session costs the server (to size a machine for a room): once every session is open and set
up, all of them change class together; the server processes' CPU time (``/proc``: user + system, all
replicas and the balancer) over that phase divided by the number of class changes is the *CPU-ms per
class change*, and their resident memory then, less the memory after warm-up sessions have loaded
the model on every replica, divided by the number of sessions, is the *MB per session*. With
``--through`` these need ``--server-pids`` (they are left out otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np
from PIL import Image, ImageOps

import explain
from explain.samples import SAMPLES_DIR, sample_title
from tests import balancer, server

#: Targets (issue 13), medians on this 2-core machine: single user, and 8 concurrent sessions.
TARGETS_S = {"class": 0.25, "colormap": 0.2, "upload": 0.8}
TARGET_RERUN_S = 0.080  # in-process whole Explain rerun (AppTest)
TARGET_LOAD_P50_S, TARGET_LOAD_P95_S = 1.0, 2.5  # class change with 8 sessions
TARGET_SERVER_MB = 1200.0  # server memory with 8 sessions (10^6 bytes)
FLOOR_APP = ROOT / "bench" / "floor_app.py"
FIRST_MS = 240_000  # first page load (model load) under load on a 2-core machine
STEP_MS = 180_000
#: Methods a session may get; Score-CAM (one forward pass per channel) is left out: tens of seconds on a CPU.
#: The app's default method comes last, so that the first sessions all change the method.
APP_METHOD = "gradcam"
LOAD_METHODS = tuple(m for m in explain.method_names() if m not in ("scorecam", APP_METHOD)) + (APP_METHOD,)
PHOTO_FIRST = ("cat.jpg", "coffee.jpg", "rocket.jpg", "flower.jpg", "astronaut.jpg", "china.jpg", "cat_and_coffee.jpg")


# ---- what each session does, and what it must end up showing (from the engine) -------------------


@dataclass
class Plan:
    index: int
    sample: str  # file name
    title: str  # sample title in the picker
    method: str
    method_title: str
    class_specific: bool  # False (Eigen-CAM): every class has the same overlay, only its heading changes
    top1_label: str  # "967 · espresso": what the page shows right after the sample is picked
    classes: list[str]  # labels picked one after another; the last one is the final state
    final_class: int
    final_name: str
    expected_overlay: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]


def label(m: explain.Model, index: int) -> str:
    from ui import text as ui_text

    return ui_text.class_label(m.categories, index)


def engine_overlay(m: explain.Model, image: Image.Image, target: int, method: str) -> np.ndarray:
    """The overlay the app shows with its default display settings, as float RGB (the app sends
    overlays as PNG, so the browser must show exactly these pixels)."""
    # The Explain page's defaults: relative to the top class, drawn on the original picture.
    r = explain.explain(m, image, targets=[target], method=method, relative=True)
    ov = r.overlays(normalize=explain.RELATIVE, colormap=explain.COLORMAPS[0], alpha=0.5, smooth=0.0,
                    contour=False, on="original")[0]
    return np.asarray(ov.convert("RGB"), dtype=np.float32)


def make_plans(m: explain.Model, sessions: int, changes: int) -> list[Plan]:
    from ui import widgets

    samples = [s for s in PHOTO_FIRST if (SAMPLES_DIR / s).exists()]
    samples += sorted(p.name for _t, p in explain.samples.list_samples() if p.name not in samples)
    # Session 0 starts where the app starts, so that every other session really changes the sample.
    samples.remove(widgets.DEFAULT_SAMPLE)
    plans: list[Plan] = []
    used: set[int] = set()
    for i in range(sessions):
        sample = samples[i % len(samples)]
        method = LOAD_METHODS[i % len(LOAD_METHODS)]
        image = explain.load_image(SAMPLES_DIR / sample)
        preds = explain.explain(m, image).predictions
        others = [c for c, _n, _p in preds[1:]]
        final = next((c for c in others if c not in used), others[0])
        used.add(final)
        alt = next(c for c in others if c != final)
        seq = [alt if k % 2 == 0 else final for k in range(changes)]
        if not seq or seq[-1] != final:
            seq.append(final)
        plans.append(Plan(
            index=i, sample=sample, title=sample_title(sample), method=method,
            method_title=explain.get_method(method).title, class_specific=explain.get_method(method).class_specific,
            top1_label=label(m, preds[0][0]),
            classes=[label(m, c) for c in seq], final_class=final, final_name=m.categories[final],
            expected_overlay=engine_overlay(m, image, final, method),
        ))
    return plans


# ---- measuring in the page ----------------------------------------------------------------------

# Logs every change of Streamlit's script state with its time (ms, performance.now()).
OBSERVE_JS = """() => {
    if (window.__cx) return;
    window.__cx = [];
    const app = document.querySelector('[data-testid="stApp"]');
    new MutationObserver(() => window.__cx.push([performance.now(), app.dataset.testScriptState]))
        .observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
}"""

#: True once the overlay shows a new picture, loaded; records that moment in window.__cxDone.
OVERLAY_DONE_JS = """([want, old]) => {
    for (const col of document.querySelectorAll('[data-testid="stMain"] [data-testid="stColumn"]')) {
        const strong = col.querySelector('[data-testid="stMarkdownContainer"] strong');
        if (!strong || strong.textContent.trim() !== 'Overlay') continue;
        const img = col.querySelector('[data-testid="stImage"] img');
        const label = strong.closest('p').textContent.replace(/\\s+/g, ' ').trim();
        const ok = !!img && (!want || label.endsWith(' ' + want)) && img.complete && img.naturalWidth > 0
            && img.src !== old;
        if (ok && !window.__cxDone) window.__cxDone = performance.now();
        return ok;
    }
    return false;
}"""


@dataclass
class Change:
    kind: str
    total_s: float  # click -> new overlay decoded
    to_running_s: float | None  # click -> the server reports the script running
    script_s: float | None  # running -> not running
    after_s: float | None  # not running -> overlay decoded (negative: the overlay came before the run ended)


async def timed_change(page, box_label: str, option: str, want: str, timeout_ms: float = STEP_MS,
                       new_picture: bool = True) -> Change:
    """Pick ``option`` in the selectbox, wait for a new overlay headed by ``want``; time the phases.

    ``new_picture=False`` (a class-agnostic method): the overlay is the same picture for every
    class, so only the heading is waited for.
    """
    await page.evaluate(OBSERVE_JS)
    old = (await server.overlay_state(page))["src"] if new_picture else ""
    box = page.locator(server.SIDEBAR).get_by_role("combobox", name=box_label, exact=True)
    await box.click(timeout=timeout_ms)
    await box.fill(option)
    opt = page.get_by_role("option", name=option, exact=True)
    await opt.wait_for(timeout=timeout_ms)
    t0 = await page.evaluate("() => { window.__cx.length = 0; window.__cxDone = 0; return performance.now(); }")
    await opt.click(timeout=timeout_ms)
    await page.wait_for_function(OVERLAY_DONE_JS, arg=[want, old], timeout=timeout_ms, polling="raf")
    await server.settle(page, timeout_ms)
    done, log = await page.evaluate("() => [window.__cxDone, window.__cx]")
    running = next((t for t, s in log if s == "running"), None)
    finished = next((t for t, s in log if s == "notRunning" and running is not None and t >= running), None)
    ms = 1000.0
    return Change(
        kind=box_label,
        total_s=(done - t0) / ms,
        to_running_s=None if running is None else (running - t0) / ms,
        script_s=None if running is None or finished is None else (finished - running) / ms,
        after_s=None if finished is None else (done - finished) / ms,
    )


def overlay_distance(got: np.ndarray, want: np.ndarray) -> float:
    if got.shape != want.shape:
        got = np.asarray(Image.fromarray(got.astype(np.uint8)).resize(want.shape[1::-1]), dtype=np.float32)
    return float(np.abs(got - want).mean())


# ---- the concurrent sessions ----------------------------------------------------------------------


@dataclass
class SessionResult:
    index: int
    sample: str
    method: str
    final_label: str
    first_overlay_s: float = 0.0
    changes: list[Change] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    shown_label: str = ""
    own_distance: float | None = None  # mean |Δ| (0..255) of its overlay to the engine's for its selection
    overlay: np.ndarray | None = field(default=None, repr=False)
    replica: str = ""  # the balancer's affinity cookie (which replica served it), "" without a balancer


class Steady:
    """The steady phase: from the moment every session is set up to the moment all have made their
    class changes. Records wall time, changes and the server's CPU time (``probe``) at both ends."""

    def __init__(self, sessions: int, probe, memory) -> None:
        self.sessions, self.probe, self.memory = sessions, probe, memory
        self.ready = self.finished = self.changes = 0
        self.all_ready = asyncio.Event()
        self.t0 = self.t1 = self.cpu0 = self.cpu1 = 0.0
        self.rss_at_start = 0.0

    def _arrive(self) -> None:
        self.ready += 1
        if self.ready == self.sessions:
            self.t0, self.cpu0, self.rss_at_start = time.monotonic(), self.probe(), self.memory()
            self.all_ready.set()

    async def start(self) -> None:
        """Wait until every session is set up (or has failed)."""
        self._arrive()
        await self.all_ready.wait()

    def finish(self, started: bool) -> None:
        if not started:  # a session that failed before the phase must not hold the others back
            self._arrive()
        self.finished += 1
        if self.finished == self.sessions:
            self.t1, self.cpu1 = time.monotonic(), self.probe()


async def run_session(browser, url: str, plan: Plan, default_label: str, start: asyncio.Event,
                      steady: Steady | None = None) -> SessionResult:
    res = SessionResult(plan.index, plan.sample, plan.method, plan.classes[-1])
    ctx = await browser.new_context(viewport=server.VIEWPORT)
    step = "opening the page"
    page = None
    started = finished = False
    try:
        page = await ctx.new_page()
        page.on("pageerror", lambda err: res.problems.append(f"page error: {err}"))
        await start.wait()
        t0 = time.monotonic()
        await page.goto(url, timeout=FIRST_MS)
        await server.wait_overlay(page, default_label, timeout_ms=FIRST_MS)
        await server.settle(page, FIRST_MS)
        res.first_overlay_s = time.monotonic() - t0
        res.replica = next((c["value"] for c in await ctx.cookies(url) if c["name"] == balancer.COOKIE), "")
        step = f"choosing the sample {plan.title!r}"
        old = (await server.overlay_state(page))["src"]
        if plan.top1_label != default_label:
            await server.choose(page, "Sample", plan.title, STEP_MS)
            await server.wait_overlay(page, plan.top1_label, old, STEP_MS)
        else:
            await server.choose(page, "Sample", plan.title, STEP_MS)
            await page.wait_for_function(
                "t => document.querySelector('[data-testid=\"stMain\"]').innerText.includes(t + ' · ')",
                arg=plan.title, timeout=STEP_MS)
        await server.settle(page, STEP_MS)
        step = f"choosing the method {plan.method_title!r}"
        if plan.method != APP_METHOD:
            await server.choose(page, "Method", plan.method_title, STEP_MS)
            # Only the heading: CAM, Grad-CAM and XGrad-CAM give the same per-map overlay at the last
            # layer of a GAP + linear head, so the overlay picture need not change.
            await page.wait_for_function(
                """title => [...document.querySelectorAll('[data-testid="stMain"] strong')]
                       .some(s => s.textContent.trim() === 'Raw ' + title + ' map')""",
                arg=plan.method_title, timeout=STEP_MS)
            await server.settle(page, STEP_MS)
        if steady is not None:
            step = "waiting for the other sessions to be set up"
            started = True
            await steady.start()
        for cls in plan.classes:
            step = f"choosing the class {cls!r}"
            res.changes.append(await timed_change(page, "Class to explain", cls, cls, new_picture=plan.class_specific))
            if steady is not None:
                steady.changes += 1
        if steady is not None:
            finished = True
            steady.finish(started)
        # ---- the final state must be this session's own ----
        step = "checking the final state"
        state = await server.overlay_state(page)
        res.shown_label = state["label"]
        checks = {
            "Sample": plan.title,
            "Method": plan.method_title,
            "Class to explain": plan.classes[-1],
        }
        for box, want in checks.items():
            got = await server.selected(page, box)
            if got != want:
                res.problems.append(f"sidebar {box!r} shows {got!r}, expected {want!r}")
        if not state["label"].endswith(" " + plan.classes[-1]):
            res.problems.append(f"overlay heading {state['label']!r}, expected {plan.classes[-1]!r}")
        text = await page.locator(server.MAIN).inner_text()
        if f"'{plan.final_name}'" not in text:
            res.problems.append(f"the sentence does not name {plan.final_name!r}")
        if f"{plan.title} · " not in text:
            res.problems.append(f"caption does not name the sample {plan.title!r}")
        boxes = await server.failures(page)
        if boxes:
            res.problems.append(f"error boxes: {boxes}")
        resp = await page.request.get(state["src"])
        res.overlay = np.asarray(Image.open(io.BytesIO(await resp.body())).convert("RGB"), dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - counted as a failed session, with its reason
        res.problems.append(f"while {step}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        if page is not None:
            try:
                (ROOT / "artifacts").mkdir(exist_ok=True)
                shot = ROOT / "artifacts" / f"load_failed_session_{plan.index}.png"
                await page.screenshot(path=str(shot))
                res.problems.append(f"screenshot: {shot.relative_to(ROOT)}")
            except Exception as shot_err:  # noqa: BLE001 - the page may be gone
                res.problems.append(f"no screenshot: {type(shot_err).__name__}")
    finally:
        if steady is not None and not finished:
            steady.finish(started)
        await ctx.close()
    return res


def crosstalk(results: list[SessionResult], plans: list[Plan]) -> None:
    """Each session's overlay must be nearest to its own expected overlay (adds problems otherwise)."""
    for res in results:
        if res.overlay is None:
            continue
        mine = plans[res.index]
        own = res.own_distance = overlay_distance(res.overlay, mine.expected_overlay)
        for other in plans:
            if other.index == res.index or overlay_distance(other.expected_overlay, mine.expected_overlay) < 1.0:
                continue  # the same picture expected (e.g. CAM and Grad-CAM of one class): indistinguishable
            d = overlay_distance(res.overlay, other.expected_overlay)
            if d <= own:
                res.problems.append(f"overlay closer to session {other.index}'s ({d:.1f}) than to its own ({own:.1f})")
        # PNG on both sides: the browser must show exactly the engine's pixels, not merely similar ones.
        if res.overlay.shape != mine.expected_overlay.shape or not np.array_equal(res.overlay, mine.expected_overlay):
            differ = (int(np.any(res.overlay != mine.expected_overlay, axis=-1).sum())
                      if res.overlay.shape == mine.expected_overlay.shape else -1)
            res.problems.append(f"overlay not byte-identical to the engine's ({differ} pixels differ, "
                                f"mean |Δ| {own:.2f})")


def rss_total(pids: list[int]) -> float:
    """Resident memory of the server processes (each with its children), in MiB."""
    return sum(server.rss_mb(p) for p in pids)


class RssPoller:
    """Peak resident memory of the server processes, sampled every ``every`` seconds."""

    def __init__(self, pids: list[int], every: float = 0.2) -> None:
        self.pids, self.every, self.peak, self.samples = pids, every, 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_total(self.pids))
            self.samples += 1
            self._stop.wait(self.every)

    def __enter__(self):  # returns self
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_total(self.pids))


async def concurrent(url: str, plans: list[Plan], default_label: str,
                     steady: Steady | None = None) -> tuple[list[SessionResult], float]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await server.launch_chromium(p)
        try:
            start = asyncio.Event()
            tasks = [asyncio.create_task(run_session(browser, url, plan, default_label, start, steady))
                     for plan in plans]
            await asyncio.sleep(0)  # let every task open its context before they all start together
            t0 = time.monotonic()
            start.set()
            results = await asyncio.gather(*tasks)
            return list(results), time.monotonic() - t0
        finally:
            await browser.close()


async def warm_up(url: str, sessions: int, default_label: str) -> list[str]:
    """Open ``sessions`` sessions at once and wait for their first overlay, so that every replica
    behind a balancer has loaded the model; returns the replica each went to (its cookie)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await server.launch_chromium(p)
        try:
            contexts = []
            for _ in range(sessions):  # one after another, so that the balancer spreads them
                ctx = await browser.new_context(viewport=server.VIEWPORT)
                page = await ctx.new_page()
                await page.goto(url, timeout=FIRST_MS)
                await server.wait_overlay(page, default_label, timeout_ms=FIRST_MS)
                contexts.append(ctx)
            return [next((c["value"] for c in await ctx.cookies(url) if c["name"] == balancer.COOKIE), "")
                    for ctx in contexts]
        finally:
            await browser.close()


# ---- single user ------------------------------------------------------------------------------------


async def single_user(url: str, m: explain.Model, default_label: str, repeats: int) -> dict[str, object]:
    from playwright.async_api import async_playwright

    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # A picture the server has never seen (a mirrored, slightly cropped sample): a real forward pass.
        src = explain.load_image(SAMPLES_DIR / "rocket.jpg")
        fresh = ImageOps.mirror(src).crop((7, 5, src.width - 3, src.height - 9))
        path = Path(tmp) / f"upload_{os.getpid()}.jpg"
        fresh.save(path, quality=92)
        preds = explain.explain(m, explain.load_image(path)).predictions
        up_label = label(m, preds[0][0])
        # A different class every time: a class seen before would be served from caches (its PNG).
        top = {c for c, _n, _p in preds}
        ids = [c for c, _n, _p in preds[1:]] + [c for c in range(37, m.num_classes, 97) if c not in top]
        others = [label(m, c) for c in ids[:repeats]]
        async with async_playwright() as p:
            browser = await server.launch_chromium(p)
            try:
                page = await (await browser.new_context(viewport=server.VIEWPORT)).new_page()
                await page.goto(url, timeout=FIRST_MS)
                await server.wait_overlay(page, default_label, timeout_ms=FIRST_MS)
                await server.settle(page, STEP_MS)
                await server.choose_image_source(page, "Upload", STEP_MS)
                await server.settle(page, STEP_MS)
                old = (await server.overlay_state(page))["src"]
                t0 = time.monotonic()
                await server.upload(page, path, STEP_MS)
                await server.wait_overlay(page, up_label, old, STEP_MS)
                out["upload_s"] = time.monotonic() - t0
                await server.settle(page, STEP_MS)
                out["class"] = [await timed_change(page, "Class to explain", c, c) for c in others]
                cmaps = [c for c in explain.COLORMAPS if c != explain.COLORMAPS[0]]
                cmap_seq = [cmaps[k % len(cmaps)] for k in range(repeats)]
                out["colormap"] = [await timed_change(page, "Colormap", c, "") for c in cmap_seq]
                out["failures"] = await server.failures(page)
            finally:
                await browser.close()
    return out


FLOOR_DONE_JS = """want => {
    const shown = [...document.querySelectorAll('[data-testid="stMain"] p')].some(p => p.textContent === 'Shown: ' + want);
    if (shown && !window.__fdone) window.__fdone = performance.now();
    return shown;
}"""


async def floor_round_trip(repeats: int) -> list[float]:
    """Seconds from a selectbox click to the new line on ``bench/floor_app.py`` (Streamlit's own floor)."""
    from playwright.async_api import async_playwright

    out: list[float] = []
    with server.streamlit_server(timeout=120, script=FLOOR_APP) as (url, _proc):
        async with async_playwright() as p:
            browser = await server.launch_chromium(p)
            try:
                page = await (await browser.new_context(viewport=server.VIEWPORT)).new_page()
                await page.goto(url, timeout=FIRST_MS)
                await page.wait_for_function(FLOOR_DONE_JS, arg="option 0", timeout=FIRST_MS)
                await server.wait_idle(page, STEP_MS)
                for k in range(1, repeats + 2):  # the first change warms the page up: not counted
                    want = f"option {k % 10}"
                    box = page.get_by_role("combobox", name="Option", exact=True)
                    await box.click(timeout=STEP_MS)
                    opt = page.get_by_role("option", name=want, exact=True)
                    await opt.wait_for(timeout=STEP_MS)
                    t0 = await page.evaluate("() => { window.__fdone = 0; return performance.now(); }")
                    await opt.click(timeout=STEP_MS)
                    await page.wait_for_function(FLOOR_DONE_JS, arg=want, timeout=STEP_MS, polling="raf")
                    await server.wait_idle(page, STEP_MS)
                    if k > 1:
                        out.append((await page.evaluate("() => window.__fdone") - t0) / 1000.0)
            finally:
                await browser.close()
    return out


# ---- in-process costs of what one rerun of the Explain page does ------------------------------------


def profile_steps(m: explain.Model, repeats: int = 5) -> dict[str, float]:
    """Median seconds of each step the Explain page runs after a class or colormap change (no server).

    The same calls as the page, each with a class (or colormap) not seen before, so that no
    cache answers for it.
    """
    from ui import charts, pictures

    image = explain.load_image(SAMPLES_DIR / "coffee.jpg")
    r0 = explain.explain(m, image)  # warm the capture, as the app's cache would be
    fresh = iter(range(3, m.num_classes, 7))

    def med(fn) -> float:
        times = []
        for k in range(repeats):
            t = time.perf_counter()
            fn(k)
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    steps: dict[str, float] = {}
    steps["explain (cached forward, new class)"] = med(lambda k: explain.explain(m, image, targets=[next(fresh)], relative=True))
    rs = [explain.explain(m, image, targets=[next(fresh)], relative=True) for _ in range(repeats)]
    steps["overlay on the original (colour + blend)"] = med(
        lambda k: rs[k].overlays(explain.RELATIVE, colormap=explain.COLORMAPS[k % 3], on="original"))
    overlays = [r.overlays(explain.RELATIVE, on="original")[0] for r in rs]
    steps["raw map picture (cells + colour bar + PNG)"] = med(lambda k: charts.heatmap_png(rs[k].maps[0].numpy(), "jet"))
    steps["overlay PNG (new picture)"] = med(lambda k: pictures.png(overlays[k]))
    steps["view PNG (seen before: hash only)"] = med(lambda k: pictures.png(r0.image))
    steps["top-5 chart spec"] = med(lambda k: charts.top5_spec(r0.predictions))
    steps["list models (sidebar, each run)"] = med(lambda k: explain.list_models())
    return steps


def apptest_rerun(m_name: str, option_class: int, repeats: int = 3) -> dict[str, float]:
    """Whole-script rerun time in-process (AppTest: no websocket, no browser), class and colormap change."""
    from streamlit.testing.v1 import AppTest

    from ui import state

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.run()
    at.selectbox(key=state.SAMPLE).set_value("coffee.jpg").run()
    out: dict[str, list[float]] = {"class": [], "colormap": []}
    cmaps = list(explain.COLORMAPS[1:])
    for k in range(repeats):
        t = time.perf_counter()
        at.selectbox(key=state.TARGET).set_value(101 + 89 * k).run()  # a class not seen before
        out["class"].append(time.perf_counter() - t)
        t = time.perf_counter()
        at.selectbox(key=state.COLORMAP).set_value(cmaps[k % len(cmaps)]).run()
        out["colormap"].append(time.perf_counter() - t)
    assert not at.exception, [e.value for e in at.exception]
    return {k: statistics.median(v) for k, v in out.items()}


# ---- report -----------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))


def med_or_none(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def phase_summary(changes: list[Change]) -> dict[str, float | None]:
    return {
        "median_s": med_or_none([c.total_s for c in changes]),
        "to_running_s": med_or_none([c.to_running_s for c in changes]),
        "script_s": med_or_none([c.script_s for c in changes]),
        "after_run_s": med_or_none([c.after_s for c in changes]),
    }


def dominant(phases: dict[str, float | None], steps: dict[str, float], rerun_s: float | None) -> str:
    parts = {"browser→server (websocket, rerun request)": phases["to_running_s"],
             "script run on the server": phases["script_s"],
             "after the run (media fetch + decode)": phases["after_run_s"]}
    name, value = max(((k, v) for k, v in parts.items() if v is not None), key=lambda kv: kv[1], default=("?", None))
    text = f"{name} ({value:.2f} s)" if value is not None else name
    if name.startswith("script") and steps:
        step, cost = max(steps.items(), key=lambda kv: kv[1])
        known = sum(steps.values())
        whole = rerun_s if rerun_s is not None else value
        text += (f"; of it, in-process: whole-script rerun {whole:.2f} s, biggest step {step} {cost * 1000:.0f} ms, "
                 f"all measured steps {known * 1000:.0f} ms, so Streamlit's own rerun work (sidebar widgets, "
                 f"gallery, serialisation) is ~{max(0.0, whole - known) * 1000:.0f} ms")
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=8, help="concurrent browser sessions (default 8)")
    ap.add_argument("--changes", type=int, default=3, help="class changes per session (default 3)")
    ap.add_argument("--repeats", type=int, default=7, help="single-user repetitions per kind of change")
    ap.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                    help="also write the results as JSON (to PATH, or stdout)")
    ap.add_argument("--no-profile", action="store_true", help="skip the in-process step costs")
    ap.add_argument("--no-single", action="store_true", help="skip the single-user latencies")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--through", metavar="URL",
                       help="load a server that is already running (e.g. deploy/serve.sh's balancer) at URL")
    where.add_argument("--replicas", type=int, metavar="N",
                       help="start deploy/serve.sh N (N replicas behind HAProxy, free local ports) and load it")
    ap.add_argument("--server-pids", default="", metavar="PID,PID",
                    help="with --through: the server's processes, for CPU time and memory")
    ap.add_argument("--warmup", type=int, default=None, metavar="K",
                    help="sessions opened (and closed) before the measurement, so that every replica has "
                         "loaded the model (default: the number of replicas, or 1)")
    args = ap.parse_args(argv)
    if server.chromium_path() is None:
        print("no Chromium at /usr/bin/chromium: apt-get install chromium", file=sys.stderr)
        return 2
    if args.replicas is not None and (args.replicas < 1 or balancer.haproxy_path() is None):
        print("--replicas needs N >= 1 and HAProxy (apt-get install haproxy)", file=sys.stderr)
        return 2

    t_all = time.monotonic()
    m = explain.load_model(explain.DEFAULT_MODEL)
    from ui import widgets

    default_label = label(m, explain.explain(m, explain.load_image(SAMPLES_DIR / widgets.DEFAULT_SAMPLE)).predictions[0][0])
    plans = make_plans(m, args.sessions, args.changes)

    with contextlib.ExitStack() as stack:
        if args.through:
            url, pids = args.through.rstrip("/"), [int(p) for p in args.server_pids.split(",") if p.strip()]
            still_alive = lambda: health(url)  # noqa: E731
        elif args.replicas:
            dep = stack.enter_context(balancer.serve(args.replicas, Path(stack.enter_context(tempfile.TemporaryDirectory()))))
            url, pids = dep.url, dep.pids()
            still_alive = lambda: all(balancer.alive(p) for p in pids) and health(url)  # noqa: E731
        else:
            url, proc = stack.enter_context(server.streamlit_server(timeout=180))
            pids = [proc.pid]
            still_alive = lambda: proc.poll() is None  # noqa: E731
        idle_rss = rss_total(pids)
        warm = args.warmup if args.warmup is not None else (args.replicas or 1)
        warm_replicas = asyncio.run(warm_up(url, warm, default_label)) if warm > 0 else []
        base_rss = rss_total(pids)
        base_rss_each = {p: server.rss_mb(p) for p in pids}
        rss = stack.enter_context(RssPoller(pids))
        steady = Steady(len(plans), lambda: balancer.cpu_seconds(pids), lambda: rss_total(pids))
        results, wall = asyncio.run(concurrent(url, plans, default_label, steady))
        crosstalk(results, plans)
        if args.no_single:
            single = {"upload_s": float("nan"), "class": [], "colormap": [], "failures": []}
        else:
            single = asyncio.run(single_user(url, m, default_label, args.repeats))
        # The server still serves a fresh session after all that.
        alive = still_alive()
    floor = [] if args.no_single else asyncio.run(floor_round_trip(args.repeats))
    steps = {} if args.no_profile else profile_steps(m)
    rerun = {} if args.no_profile else apptest_rerun(explain.DEFAULT_MODEL, 0, repeats=args.repeats)

    load_changes = [c for r in results for c in r.changes]
    load_totals = [c.total_s for c in load_changes]
    failed = [r for r in results if r.problems]
    class_ph = phase_summary(single["class"])
    cmap_ph = phase_summary(single["colormap"])
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "sessions": args.sessions,
        "class_changes_per_session": args.changes,
        "load": {
            "wall_s": wall,
            "first_overlay_s": {"p50": pct([r.first_overlay_s for r in results], 50),
                                "max": max((r.first_overlay_s for r in results), default=float("nan"))},
            "class_change_s": {"n": len(load_totals), "p50": pct(load_totals, 50), "p95": pct(load_totals, 95),
                               "max": max(load_totals, default=float("nan"))},
            "phases": phase_summary(load_changes),
            "failed_sessions": len(failed),
            "failures": {r.index: r.problems for r in failed},
            "sessions": [{"index": r.index, "sample": r.sample, "method": r.method, "final_class": r.final_label,
                          "shown": r.shown_label, "overlay_vs_engine": r.own_distance, "ok": not r.problems} for r in results],
        },
        "server_rss_mb": {"idle": idle_rss, "after_warmup": base_rss, "after_warmup_per_process": base_rss_each, "all_sessions_set_up": steady.rss_at_start,
                          "peak": rss.peak, "samples": rss.samples},
        "server_alive": alive,
        "served_by": {"through": args.through, "replicas": args.replicas, "server_pids": pids,
                      "warmup_sessions": warm_replicas,
                      "sessions_per_replica": {k: [r.replica for r in results].count(k)
                                               for k in sorted({r.replica for r in results})}},
        "per_session_cost": session_cost(steady, pids, base_rss, len(plans)),
        "single_user": {
            "upload_to_overlay_s": single["upload_s"],
            "class_change": class_ph,
            "colormap_change": cmap_ph,
            "floor_round_trip_s": med_or_none(floor),
            "floor_round_trip_all_s": floor,
            "class_change_all_s": [c.total_s for c in single["class"]],
            "colormap_change_all_s": [c.total_s for c in single["colormap"]],
            "failures": single["failures"],
        },
        "targets_s": {**TARGETS_S, "apptest_rerun": TARGET_RERUN_S, "load_p50": TARGET_LOAD_P50_S,
                      "load_p95": TARGET_LOAD_P95_S},
        "target_server_mb": TARGET_SERVER_MB,
        "in_process_steps_s": steps,
        "apptest_rerun_s": rerun,
        "total_s": time.monotonic() - t_all,
    }
    for kind, ph in (("class", class_ph), ("colormap", cmap_ph)):
        report["single_user"][f"{kind}_ratio_to_target"] = ph["median_s"] / TARGETS_S[kind] if ph["median_s"] else None
        fl = report["single_user"]["floor_round_trip_s"]
        report["single_user"][f"{kind}_ratio_to_floor"] = ph["median_s"] / fl if ph["median_s"] and fl else None
        report["single_user"][f"{kind}_dominated_by"] = dominant(ph, steps, rerun.get(kind))

    print_table(report)
    if args.json:
        text = json.dumps(report, indent=2, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o))
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    ok = not failed and alive and not single["failures"]
    return 0 if ok else 1


def health(url: str) -> bool:
    """True when ``url`` answers Streamlit's health check."""
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False


def session_cost(steady: Steady, pids: list[int], base_rss: float, sessions: int) -> dict[str, float | None]:
    """CPU-ms of the server per class change in the steady phase, and MB of the server per open session."""
    if not pids or not steady.changes or not steady.t1:
        return {"cpu_ms_per_class_change": None, "mb_per_session": None, "changes": steady.changes,
                "steady_wall_s": None, "server_cpu_busy": None}
    cpu = steady.cpu1 - steady.cpu0
    wall = steady.t1 - steady.t0
    return {
        "cpu_ms_per_class_change": 1000.0 * cpu / steady.changes,
        "mb_per_session": (steady.rss_at_start - base_rss) / sessions,
        "changes": steady.changes,
        "steady_wall_s": wall,
        # Cores the server kept busy during the phase (the browsers used the rest).
        "server_cpu_busy": cpu / wall if wall > 0 else None,
        "changes_per_s": steady.changes / wall if wall > 0 else None,
    }


def _mark(value: float | None, target: float) -> str:
    if value is None or value != value:  # None or NaN
        return "—"
    return "ok" if value <= target else "MISSED"


def print_table(rep: dict) -> None:
    f = lambda v: "—" if v is None or v != v else f"{v:.2f}"  # noqa: E731
    ld, su, tg = rep["load"], rep["single_user"], rep["targets_s"]
    cc = ld["class_change_s"]
    ph = ld["phases"]
    peak_mb = rep["server_rss_mb"]["peak"] * 2**20 / 1e6
    lines = [
        (f"CAM Explorer load test · {rep['sessions']} concurrent sessions · {rep['machine']['cpus']} CPUs · "
         f"load avg {', '.join(f'{x:.1f}' for x in rep['machine']['load_avg'] or [])}"),
        "",
        f"{'concurrent sessions':<44}{'value':>10}{'target':>8}",
        f"{'  sessions ok / total':<44}{rep['sessions'] - ld['failed_sessions']:>6} / {rep['sessions']}",
        f"{'  first overlay p50 / max (s)':<44}{f(ld['first_overlay_s']['p50']):>10} / {f(ld['first_overlay_s']['max'])}",
        f"{'  class change → overlay p50 (s)':<44}{f(cc['p50']):>10}{tg['load_p50']:>8.2f}  "
        f"{_mark(cc['p50'], tg['load_p50'])}   (n={cc['n']})",
        f"{'  class change → overlay p95 (s)':<44}{f(cc['p95']):>10}{tg['load_p95']:>8.2f}  "
        f"{_mark(cc['p95'], tg['load_p95'])}   max {f(cc['max'])}",
        (f"{'    median: to running / script / after (s)':<44}{f(ph['to_running_s']):>10} / {f(ph['script_s'])} / "
         f"{f(ph['after_run_s'])}"),
        f"{'  server RSS peak (MB)':<44}{peak_mb:>10.0f}{rep['target_server_mb']:>8.0f}  "
        f"{_mark(peak_mb, rep['target_server_mb'])}   (idle {rep['server_rss_mb']['idle'] * 2**20 / 1e6:.0f} MB)",
        f"{'  wall time of the concurrent part (s)':<44}{ld['wall_s']:>10.1f}",
    ]
    by, cost = rep["served_by"], rep["per_session_cost"]
    if by["through"] or by["replicas"]:
        spread = ", ".join(f"{k or '?'}: {v}" for k, v in by["sessions_per_replica"].items())
        lines.append(f"{'  served through':<44}{by['through'] or 'deploy/serve.sh ' + str(by['replicas'])}"
                     f"  (sessions per replica: {spread})")
    if cost["cpu_ms_per_class_change"] is not None:
        mem = rep["server_rss_mb"]
        lines += [
            "",
            "what a session costs the server (all its processes; steady phase: every session changing class)",
            f"{'  CPU-ms per class change':<44}{cost['cpu_ms_per_class_change']:>10.0f}   "
            f"({cost['changes']} changes in {cost['steady_wall_s']:.1f} s, {cost['changes_per_s']:.2f}/s, "
            f"server busy {cost['server_cpu_busy']:.2f} cores)",
            f"{'  MB per open session':<44}{cost['mb_per_session']:>10.1f}   "
            f"(RSS after warm-up {mem['after_warmup']:.0f} → all set up {mem['all_sessions_set_up']:.0f} MiB)",
        ]
    if su["class_change"]["median_s"]:  # not with --no-single
        fl = su["floor_round_trip_s"]
        lines += [
            "",
            f"{'single user (embedded model), medians':<44}{'s':>10}{'target':>8}{'ratio':>8}{'× floor':>9}",
            f"{'  floor: plain Streamlit round trip':<44}{f(fl):>10}{'':>8}{'':>8}{'1.00':>9}",
            f"{'    (bench/floor_app.py: selectbox → text)':<44}",
            f"{'  upload → first overlay':<44}{f(su['upload_to_overlay_s']):>10}{tg['upload']:>8.2f}"
            f"{f(su['upload_to_overlay_s'] / tg['upload']):>8}{f(su['upload_to_overlay_s'] / fl if fl else None):>9}",
        ]
    for kind in ("class", "colormap"):
        p = su[f"{kind}_change"]
        if not p["median_s"]:
            continue
        lines.append(f"{'  ' + kind + ' change → updated overlay':<44}{f(p['median_s']):>10}{tg[kind]:>8.2f}"
                     f"{f(su[f'{kind}_ratio_to_target']):>8}{f(su[f'{kind}_ratio_to_floor']):>9}")
        lines.append(f"{'    to running / script / after (s)':<44}{f(p['to_running_s']):>10} / {f(p['script_s'])} / "
                     f"{f(p['after_run_s'])}")
        ratio = su[f"{kind}_ratio_to_target"]
        if ratio is not None and ratio > 1:
            lines.append(f"    missed; dominated by: {su[f'{kind}_dominated_by']}")
    if rep["in_process_steps_s"]:
        lines += ["", "in-process cost of one Explain rerun's steps (median ms)"]
        lines += [f"  {k:<42}{v * 1000:>10.1f}" for k, v in rep["in_process_steps_s"].items()]
        for k, v in rep["apptest_rerun_s"].items():
            lines.append(f"  {'whole script rerun, AppTest, ' + k + ' change':<42}{v * 1000:>10.1f}"
                         f"{tg['apptest_rerun'] * 1000:>8.0f}  {_mark(v, tg['apptest_rerun'])}")
    if ld["failures"]:
        lines += ["", "FAILED sessions:"] + [f"  #{i}: {'; '.join(p)}" for i, p in ld["failures"].items()]
    if su["failures"]:
        lines += ["", f"single-user error boxes: {su['failures']}"]
    if not rep["server_alive"]:
        lines.append("the server died during the run")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
