"""The two callback types that long engine calls take, and the argument check they all share."""

from __future__ import annotations

from typing import Callable

from PIL import Image

from .errors import ExplainError
from .preprocess import FITS

#: ``progress(done, total)``: called between batches of a long computation.
Progress = Callable[[int, int], None]
#: ``cancel()``: polled between batches; returning True abandons the run with :class:`Cancelled`.
CancelCheck = Callable[[], bool]


def check_image_and_fit(image: object, fit: str, caller: str) -> None:
    """The argument check every engine entry point starts with (a PIL picture, a known fit)."""
    if not isinstance(image, Image.Image):
        raise ExplainError(
            f"{caller}() needs a PIL image, not {type(image).__name__}; use explain.load_image()."
        )
    if fit not in FITS:
        raise ExplainError(f"Unknown fit {fit!r}: use one of {', '.join(FITS)}.")
