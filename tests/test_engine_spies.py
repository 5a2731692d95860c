""""Not even for a moment": spies on everything that could change the shared model while it explains.

``test_engine_safety.py`` compares the model before and after; a change made and undone in between
(``requires_grad_(True)`` for the forward pass and back in ``finally``, a hook registered and
removed, ``eval()`` called again) passes that. Here:

* class-level spies record every call of ``requires_grad_`` on a parameter, ``register_*hook``,
  ``train``/``eval``, ``backward`` and every Python write of a parameter's ``.grad``, while the
  shared embedded model explains with every method, the walkthrough and a faithfulness run;
* probe modules *inside* a private model look at the whole model while its forward passes run;
* ``torch.autograd.grad`` is counted: all classes come from one batched backward.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import pytest
import torch
from torch import nn

import explain
from explain.methods import ScoreCAM
from explain.model import Model, plain_copy

SMALL_LAYER = "blocks.0"
METHODS = ("cam", "gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "saliency")


class Spies:
    """Calls that touch one watched module tree, recorded by monkeypatched torch methods."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, root: nn.Module) -> None:
        self.calls: list[str] = []
        modules = {id(m) for m in root.modules()}
        params = {id(p) for p in root.parameters()}

        def spy(owner: type, name: str, watched: set[int] | None) -> None:
            real: Callable = getattr(owner, name)

            def wrapper(self, *args, **kwargs):
                if watched is None or id(self) in watched:
                    calls.append(f"{type(self).__name__}.{name}{args!r}")
                return real(self, *args, **kwargs)

            monkeypatch.setattr(owner, name, wrapper)

        calls = self.calls
        for name in ("register_forward_hook", "register_forward_pre_hook", "register_full_backward_hook",
                     "register_full_backward_pre_hook", "register_backward_hook", "train", "eval",
                     "requires_grad_", "zero_grad"):
            spy(nn.Module, name, modules)
        spy(torch.Tensor, "requires_grad_", params)
        spy(torch.Tensor, "register_hook", params)
        spy(torch.Tensor, "backward", None)  # any backward at all: it would accumulate into .grad
        real_backward = torch.autograd.backward

        def backward(*args, **kwargs):
            calls.append("torch.autograd.backward")
            return real_backward(*args, **kwargs)

        monkeypatch.setattr(torch.autograd, "backward", backward)
        base_grad = torch._C.TensorBase.grad

        def set_grad(self, value):
            if id(self) in params:
                calls.append(f"Parameter.grad = {type(value).__name__}")
            base_grad.__set__(self, value)

        # A property on the Parameter class sees every Python write of a parameter's .grad.
        monkeypatch.setattr(nn.Parameter, "grad", property(base_grad.__get__, set_grad), raising=False)


def _explain_everything(m: Model, img) -> None:
    for method in METHODS:
        explain.explain(m, img, targets=[285, 281], method=method)
    explain.explain(m, img, targets=[285], layer=SMALL_LAYER, method="scorecam")
    explain.walkthrough(m, img, 285)
    explain.deletion_insertion(m, img, 285, explain.explain(m, img, targets=[285]).heatmaps()[0], steps=4)


def test_no_call_touches_the_shared_model_while_it_explains(lite0, cat_img, monkeypatch):
    monkeypatch.setattr(ScoreCAM, "batch_size", 8)
    lite0.clear_cache()
    spies = Spies(monkeypatch, lite0.module)
    _explain_everything(lite0, cat_img)
    assert spies.calls == []


def test_the_spies_see_a_change_that_is_undone(probed, monkeypatch):
    """The spies themselves work: toggles made and reverted at once (on a private model) are recorded."""
    m, _seen = probed
    spies = Spies(monkeypatch, m.module)
    p = next(m.module.parameters())
    try:
        p.requires_grad_(True)
        p.grad = torch.zeros_like(p)
        m.submodule("features.1").register_forward_hook(lambda *a: None).remove()
        m.module.eval()
    finally:
        p.grad = None
        p.requires_grad_(False)
    kinds = [c.split("(")[0].split(" =")[0] for c in spies.calls]
    assert kinds[:4] == ["Parameter.requires_grad_", "Parameter.grad", "Conv2d.register_forward_hook", "LeNet.eval"]
    assert "Parameter.grad = NoneType" in spies.calls and spies.calls[-1] == "Parameter.requires_grad_(False,)"


# ---- probes inside a private model -----------------------------------------------------------


class Probe(nn.Module):
    """Passes its input through; while doing so, records anything unusual about the whole model."""

    def __init__(self, seen: list[str]) -> None:
        super().__init__()
        self._seen = seen
        self._root: Callable[[], nn.Module | None] = lambda: None

    def watch(self, root: nn.Module) -> None:
        self._root = weakref.ref(root)  # not a submodule: no cycle in named_modules()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        root = self._root()
        if root is not None:
            for n, p in root.named_parameters():
                if p.requires_grad:
                    self._seen.append(f"{n} requires grad")
                if p.grad is not None:
                    self._seen.append(f"{n} has .grad")
            for n, sub in root.named_modules():
                if sub.training:
                    self._seen.append(f"{n or 'root'} in training mode")
                for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
                    if getattr(sub, attr, None):
                        self._seen.append(f"{n or 'root'} has {attr}")
        return x


@pytest.fixture()
def probed(digits):
    """A private digit LeNet (real weights) with probes before the features and before the pool."""
    seen: list[str] = []
    net = plain_copy(digits.module)
    first, last = Probe(seen), Probe(seen)
    net.features = nn.Sequential(first, *net.features)
    net.pool = nn.Sequential(last, net.pool)
    m = Model("digits (probed)", net, digits.categories, digits.preprocess, device="cpu")
    for probe in (first, last):
        probe.watch(m.module)
    seen.clear()  # building the model ran discovery hooks on it, before it was shared
    return m, seen


def test_probes_inside_the_forward_see_nothing_change(probed, sample_image, monkeypatch):
    m, seen = probed
    monkeypatch.setattr(ScoreCAM, "batch_size", 16)
    img = sample_image("digit_3.png")
    for layer in (None, "features.4"):
        for method in (*METHODS, "scorecam"):
            if method == "cam" and layer is not None:
                continue
            explain.explain(m, img, targets=[3, 5], layer=layer, method=method)
    explain.walkthrough(m, img, 3)
    assert m.stats.forward_passes > 3  # the probes really ran, many times
    assert seen == []


def test_the_probes_see_a_change_inside_the_forward(probed, sample_image):
    m, seen = probed
    p = next(m.module.parameters())
    p.requires_grad_(True)
    try:
        m.predict(m.view_and_tensor(sample_image("digit_3.png"))[1])
    finally:
        p.requires_grad_(False)
    assert seen and "requires grad" in seen[0]


# ---- one batched backward -----------------------------------------------------------------------


def test_all_classes_come_from_one_batched_backward(lite0, cat_img, monkeypatch):
    real = torch.autograd.grad
    calls: list[dict] = []

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting)
    lite0.clear_cache()
    classes = [1, 285, 281, 954, 3, 7]
    explain.explain(lite0, cat_img, targets=classes, method="gradcam")
    assert len(calls) == 1 and calls[0].get("is_grads_batched") is True, calls
    explain.explain(lite0, cat_img, targets=classes, method="layercam")  # cached: no backward at all
    assert len(calls) == 1
    explain.explain(lite0, cat_img, targets=[*classes, 10, 11], method="hirescam")  # only the new ones
    assert len(calls) == 2
    explain.explain(lite0, cat_img, targets=[5, 6, 7, 8], method="saliency")
    assert len(calls) == 3
    lite0.clear_cache()
