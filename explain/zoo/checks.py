"""Checks on weights before they are loaded into a module.

:func:`check_state_dict` compares a state dict (from a ``.safetensors`` or ``.pt`` file) with the
parameters and buffers a module expects, and explains every mismatch in one message, instead of
PyTorch's long ``load_state_dict`` traceback. The embedded models and the bring-your-own-model
feature both use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ..errors import WeightsMismatchError

MAX_LISTED = 5  # at most this many keys are named per kind of problem


def _shape(t: object) -> tuple[int, ...] | None:
    shape = getattr(t, "shape", None)
    return None if shape is None else tuple(int(d) for d in shape)


def _listed(items: Iterable[str]) -> str:
    items = list(items)
    text = ", ".join(items[:MAX_LISTED])
    if len(items) > MAX_LISTED:
        text += f" (and {len(items) - MAX_LISTED} more)"
    return text


def check_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Raise if ``state`` does not fit ``module`` exactly; return ``None`` if it does.

    Checks that both have the same keys and that every tensor has the shape the module expects
    (dtypes are not checked: ``load_state_dict`` converts them). The error is a
    :class:`~explain.errors.WeightsMismatchError` (a ``ValueError``) whose message reads like
    ``"<source> does not fit LeNet: missing keys: a, b; unexpected keys: c; shape mismatch:
    fc.weight is (5, 64) in the file but (10, 64) in the model"``, naming at most
    :data:`MAX_LISTED` keys of each kind, in the module's order.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = []
    for key, want in expected.items():
        if key not in state:
            continue
        got = _shape(state[key])
        if got != _shape(want):
            got_text = "not a tensor" if got is None else f"{got}"
            mismatched.append(f"{key} is {got_text} in the file but {_shape(want)} in the model")
    problems = []
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch: {_listed(mismatched)}")
    if problems:
        raise WeightsMismatchError(f"{source} does not fit {type(module).__name__}: " + "; ".join(problems))
