"""What every page script starts with: the error guard and this run's selection."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import streamlit as st

from ui import state
from ui.state import Selection
from ui.streamlit_compat import leave_legacy_pages_mode
from ui.text import md_escape

_LOG = logging.getLogger("cam_explorer")
SHORT_MESSAGE = 200  # characters of an unexpected error shown to the user


@contextlib.contextmanager
def guard(action: str) -> Iterator[None]:
    """Show an unexpected error as one readable ``st.error`` line instead of a traceback.

    ``action`` completes "Something went wrong while …"; the full traceback goes to the server
    log. Streamlit's own control flow (``st.rerun``, ``st.stop``, page switches) raises
    ``BaseException`` subclasses, which ``except Exception`` lets through untouched.
    """
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - the whole point: no traceback reaches the page
        _LOG.exception("Unexpected error while %s", action)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if len(message) > SHORT_MESSAGE:
            message = message[: SHORT_MESSAGE - 1] + "…"
        st.error(f"Something went wrong while {action}: {md_escape(message)}. Try another image or setting.")


def enter() -> None:
    """Call first in a page that needs no selection (rerun through ``app.py`` if run on its own)."""
    leave_legacy_pages_mode()


def need_selection() -> Selection:
    """This run's selection with an image, or a friendly note and ``st.stop()``."""
    enter()
    sel = state.current()
    if sel is None:
        st.info("The controls in the sidebar could not be set up; see the message there.")
        st.stop()
    if sel.image is None:
        st.info("Choose a sample or upload an image in the sidebar to begin.")
        st.stop()
    return sel
