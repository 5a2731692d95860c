"""The one place that touches Streamlit internals, and why.

0. Server log lines: ``streamlit.logger.get_logger`` gives a logger that Streamlit's own logging
configuration prints (level, format) on the server console, where an operator reads them.

1. Legacy multipage mode (below). 2. Script-run contexts for worker threads: a thread that draws
(a download's progress bar) needs the script's context attached, which Streamlit's threading
guide does with ``streamlit.runtime.scriptrunner.add_script_run_ctx``; and code that can also run
outside a script (in tests) asks whether there is a context at all.

Our pages live in ``pages/`` (the layout the project is specified with). A folder of that name next
to the main script switches Streamlit into its legacy (v1) multipage mode until the first
``st.navigation`` call of the server's life: a deep link opened first after a restart
(``/compare_classes``) would then run the page script *without* ``app.py``, i.e. without the shared
sidebar. Streamlit has no setting to turn that mode off (``st.navigation`` itself does it by
assigning ``PagesManager.uses_pages_directory = False``), so :func:`leave_legacy_pages_mode` does
the same, once, and reruns.

Consequence for page authors: ``AppTest`` starts every run in that mode, so the rerun drops a click
read as ``if st.button(...)``. Page buttons act through ``on_click`` callbacks, which run before
the script and survive the rerun.

``tests/test_structure.py`` fails loudly if a Streamlit upgrade removes or renames the internal.
"""

from __future__ import annotations

import streamlit as st

import logging
import threading
from collections.abc import Callable

from streamlit.logger import get_logger
from streamlit.runtime.scriptrunner import add_script_run_ctx, get_script_run_ctx

try:
    from streamlit.runtime.pages_manager import PagesManager
except ImportError:  # pragma: no cover - the structure test reports this
    PagesManager = None  # type: ignore[assignment,misc]

#: The class attribute Streamlit reads to decide whether it is in legacy multipage mode.
LEGACY_FLAG = "uses_pages_directory"


def leave_legacy_pages_mode() -> None:
    """Rerun through ``app.py`` when Streamlit ran a page script on its own (legacy mode)."""
    if PagesManager is not None and getattr(PagesManager, LEGACY_FLAG, False):
        setattr(PagesManager, LEGACY_FLAG, False)
        st.rerun()


def in_script_run() -> bool:
    """True inside a Streamlit script run (False in plain Python, e.g. a test calling a helper)."""
    return get_script_run_ctx(suppress_warning=True) is not None


def script_thread(target: Callable[[], None], name: str) -> threading.Thread:
    """A daemon thread that may draw on the current script's page (not started)."""
    worker = threading.Thread(target=target, name=name, daemon=True)
    add_script_run_ctx(worker, get_script_run_ctx())
    return worker


def server_logger(name: str) -> logging.Logger:
    """A logger whose lines appear on the Streamlit server's console (with Streamlit's format)."""
    return get_logger(name)
