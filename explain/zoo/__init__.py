"""Small models that ship with CAM Explorer, trained by scripts in ``scripts/``, and their declarations.

:func:`declare` registers each embedded model (and uploadable architecture) once; the registry
calls it on first use. A new embedded family is one module here plus one line in :func:`declare`.
"""

from __future__ import annotations

import threading

_DONE = False
_LOCK = threading.Lock()


def declare() -> None:
    """Register the embedded models and architectures (idempotent)."""
    global _DONE
    with _LOCK:
        if _DONE:
            return
        from ..families import register_architecture, register_model
        from . import efficientnet_lite0, lenet, mnist_lenet

        register_model(efficientnet_lite0.spec())  # the default model: declared first
        register_model(lenet.digits_spec())
        register_model(lenet.shortcut_spec())
        register_architecture(lenet.architecture())
        register_architecture(mnist_lenet.architecture())
        _DONE = True
