"""Errors raised by the engine.

Every error a user can cause is an :class:`ExplainError` (a ``ValueError``) whose message says what
was wrong and what to do, so the dashboard and the CLI can show it as one clear line.
"""

from __future__ import annotations


class ExplainError(ValueError):
    """Base class of every user-facing engine error."""


class ImageLoadError(ExplainError):
    """The bytes given are not an image the engine can use."""


class UnknownModelError(ExplainError):
    """No model of that name is known."""


class UnknownLayerError(ExplainError):
    """The model has no candidate target layer of that name."""


class UnknownMethodError(ExplainError):
    """No explanation method of that name."""


class UnknownClassError(ExplainError):
    """A class index or name that the model does not have."""


class MethodNotApplicableError(ExplainError):
    """The method cannot be used with this model or layer (e.g. CAM on VGG)."""


class WeightsUnavailableError(ExplainError):
    """Pretrained weights are neither cached nor downloadable."""


class WeightsMismatchError(ExplainError):
    """A weights file does not fit the architecture it was loaded into."""


class Cancelled(ExplainError):
    """A long computation was cancelled by its caller."""
