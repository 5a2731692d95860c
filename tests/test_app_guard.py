"""The page guard in the running app: an unexpected error inside a page becomes one generic line,
never a traceback, and the app keeps serving (the next run, and other sessions, work)."""

from __future__ import annotations

import pytest
from app_helpers import main_images, new_app, run_ok

from ui import compute


@pytest.mark.parametrize(
    ("page", "action"),
    [
        ("pages/explain.py", "explaining the image"),
        ("pages/compare_classes.py", "comparing classes"),
        ("pages/compare_methods.py", None),
    ],
)
def test_an_unexpected_error_in_a_page_is_one_line_and_the_app_keeps_serving(page, action, monkeypatch) -> None:
    at = run_ok(new_app())
    at.switch_page(page)
    run_ok(at)
    shown = main_images(at)
    assert shown > 0

    def broken(*_a, **_k):
        raise RuntimeError("the disk is on fire\nsecond line of detail")

    monkeypatch.setattr(compute, "run_explain", broken)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert errors, "the forced error was not reported"
    for message in errors:
        assert message.startswith("Something went wrong while ") and "the disk is on fire" in message, message
        assert "second line" not in message and "Traceback" not in message
    if action is not None:
        assert errors == [f"Something went wrong while {action}: the disk is on fire. Try another image or setting."]
    # Another session meanwhile is fine too, and once the fault is gone this one works again.
    monkeypatch.undo()
    other = new_app()
    other.switch_page(page)
    run_ok(other)
    run_ok(at)
    assert main_images(at) == shown
