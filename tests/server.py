"""Start the dashboard on a free localhost port, and Debian's Chromium for Playwright.

Shared by the real-browser test and ``bench/load.py``. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
]


def chromium_path() -> str | None:
    """Debian's Chromium, if installed."""
    for candidate in ("/usr/bin/chromium", shutil.which("chromium") or ""):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def streamlit_server(timeout: float = 90.0, extra_env: dict[str, str] | None = None,
                     script: Path | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run ``streamlit run app.py`` (or ``script``) on a free port; yield (base URL, process); stop it afterwards."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg", **(extra_env or {}))
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(script or ROOT / "app.py"),
        "--server.headless", "true", "--server.port", str(port), "--server.address", "127.0.0.1",
        "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
    ]
    log = open(ROOT / "artifacts" / f"streamlit-{port}.log", "w") if (ROOT / "artifacts").is_dir() else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited early with code {proc.returncode}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("streamlit did not become healthy in time")
            time.sleep(0.3)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log is not subprocess.DEVNULL:
            log.close()


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux /proc), in MiB, including its children."""
    total = 0.0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


# ---- driving the app in Chromium (Playwright's async API; shared by the browser tests and bench/load.py) ----

REQUIRE_BROWSER_ENV = "CAM_EXPLORER_REQUIRE_BROWSER"
MAIN = '[data-testid="stMain"]'
SIDEBAR = '[data-testid="stSidebar"]'
#: Anything that means the page failed: an uncaught exception box or an ``st.error`` box.
FAILURE_BOXES = '[data-testid="stException"], [data-testid="stAlertContentError"]'
VIEWPORT = {"width": 1400, "height": 1000}

_IDLE_JS = """() => {
    const app = document.querySelector('[data-testid="stApp"]');
    return !!app && app.dataset.testScriptState === 'notRunning'
        && app.dataset.testConnectionState === 'CONNECTED'
        && !document.querySelector('[data-stale="true"]');
}"""


def browser_required() -> bool:
    """True where a missing Chromium must fail the browser tests instead of skipping them (CI)."""
    return os.environ.get(REQUIRE_BROWSER_ENV, "") not in ("", "0")


async def launch_chromium(playwright):  # -> playwright.async_api.Browser
    """Debian's Chromium, headless, with the flags that keep it offline and quiet."""
    path = chromium_path()
    if path is None:
        raise RuntimeError("no Chromium at /usr/bin/chromium (apt-get install chromium)")
    return await playwright.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS, headless=True)


async def wait_idle(page, timeout_ms: float = 120_000) -> None:
    """Wait until the script run is over and nothing on the page is stale (greyed out)."""
    await page.wait_for_function(_IDLE_JS, timeout=timeout_ms)


async def failures(page) -> list[str]:
    """Texts of the exception / error boxes on the page (empty when there are none)."""
    return [t.strip() for t in await page.locator(FAILURE_BOXES).all_inner_texts()]


async def choose(page, label: str, option: str, timeout_ms: float = 60_000) -> None:
    """Pick ``option`` (its exact visible text) in the sidebar selectbox labelled ``label``."""
    box = page.locator(SIDEBAR).get_by_role("combobox", name=label, exact=True)
    await box.click(timeout=timeout_ms)
    await box.fill(option)  # filters the list: the class picker has 1000 options
    await page.get_by_role("option", name=option, exact=True).click(timeout=timeout_ms)


async def selected(page, label: str) -> str:
    """The text shown by the sidebar selectbox labelled ``label``."""
    return await page.locator(SIDEBAR).get_by_role("combobox", name=label, exact=True).input_value()


async def overlay_state(page) -> dict[str, object]:
    """The Explain page's overlay: its heading (``"Overlay · 285 · Egyptian cat"``), src and size."""
    return await page.evaluate(
        """() => {
        for (const col of document.querySelectorAll('[data-testid="stMain"] [data-testid="stColumn"]')) {
            const strong = col.querySelector('[data-testid="stMarkdownContainer"] strong');
            if (!strong || strong.textContent.trim() !== 'Overlay') continue;
            const img = col.querySelector('[data-testid="stImage"] img');
            const p = strong.closest('p');
            return {label: p ? p.textContent.trim() : '', src: img ? img.src : '',
                    width: img ? img.naturalWidth : 0, complete: img ? img.complete : false};
        }
        return {label: '', src: '', width: 0, complete: false};
    }"""
    )


async def wait_overlay(page, class_text: str, old_src: str = "", timeout_ms: float = 120_000) -> dict[str, object]:
    """Wait until the overlay is headed by ``class_text`` (``"967 · espresso"``), is loaded and, if
    ``old_src`` is given, shows a new picture; returns :func:`overlay_state`."""
    await page.wait_for_function(
        """([want, old]) => {
        for (const col of document.querySelectorAll('[data-testid="stMain"] [data-testid="stColumn"]')) {
            const strong = col.querySelector('[data-testid="stMarkdownContainer"] strong');
            if (!strong || strong.textContent.trim() !== 'Overlay') continue;
            const img = col.querySelector('[data-testid="stImage"] img');
            const p = strong.closest('p');
            const label = p ? p.textContent.replace(/\\s+/g, ' ').trim() : '';
            return !!img && label.endsWith(' ' + want) && img.complete && img.naturalWidth > 0
                && (!old || img.src !== old);
        }
        return false;
    }""",
        arg=[class_text, old_src],
        timeout=timeout_ms,
    )
    return await overlay_state(page)


async def main_images(page) -> list[dict[str, object]]:
    """Every picture in the main area: src, natural width, loaded, and its caption (if any)."""
    return await page.evaluate(
        """() => [...document.querySelectorAll('[data-testid="stMain"] [data-testid="stImage"]')].map(el => {
            const img = el.querySelector('img');
            const c = el.querySelector('[data-testid="stImageCaption"]');
            return {src: img ? img.src : '', width: img ? img.naturalWidth : 0,
                    complete: img ? img.complete : false, caption: c ? c.textContent.trim() : ''};
        })"""
    )


async def settle(page, timeout_ms: float = 120_000) -> None:
    """:func:`wait_idle`, then every picture in the main area loaded."""
    await wait_idle(page, timeout_ms)
    await page.wait_for_function(
        """() => [...document.querySelectorAll('[data-testid="stMain"] [data-testid="stImage"] img')]
                 .every(i => i.complete && i.naturalWidth > 0)""",
        timeout=timeout_ms,
    )


async def open_page(page, title: str, timeout_ms: float = 60_000) -> None:
    """Click the top navigation link ``title``."""
    await page.locator('[data-testid="stTopNavLink"]', has_text=title).first.click(timeout=timeout_ms)


async def choose_image_source(page, source: str, timeout_ms: float = 60_000) -> None:
    """Sample / Upload / Camera in the sidebar's segmented control."""
    await page.locator(SIDEBAR).get_by_role("radio", name=source, exact=True).click(timeout=timeout_ms)


async def upload(page, path: str | Path, timeout_ms: float = 60_000) -> None:
    """Put ``path`` into the sidebar's file uploader (the Upload source must be chosen)."""
    field = page.locator(f'{SIDEBAR} [data-testid="stFileUploaderDropzoneInput"]')
    await field.wait_for(state="attached", timeout=timeout_ms)
    await field.set_input_files(str(path), timeout=timeout_ms)


def require_chromium() -> str:
    """Chromium's path; otherwise skip the test, or fail it where CAM_EXPLORER_REQUIRE_BROWSER is set."""
    import pytest

    path = chromium_path()
    if path is None:
        message = "Debian's Chromium is not installed (apt-get install chromium)"
        if browser_required():
            pytest.fail(f"{message}, and {REQUIRE_BROWSER_ENV} requires the browser tests")
        pytest.skip(message)
    return path
