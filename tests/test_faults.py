"""Faults on the engine side (issue 5): abandoned Score-CAM runs, GPU out of memory, and exceptions
inside a forward pass must leave the shared model clean and the next explanation correct."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import oom_once
from torch import nn

import explain

SAMPLES = Path(__file__).resolve().parent.parent / "assets" / "samples"


class Rerun(BaseException):
    """Like Streamlit's RerunException: a BaseException, so `except Exception` does not catch it."""


def _assert_maps_close(got: torch.Tensor, want: torch.Tensor, device: torch.device) -> None:
    """Equal maps; on a GPU compared with a CPU run, within TF32/cuDNN rounding of the map's scale."""
    if device.type == "cpu":
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    else:
        torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2 * float(want.abs().max()) + 1e-6)


def _hook_count(module: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in module.modules())


def _assert_clean(model: explain.Model, hooks: int) -> None:
    assert torch.is_grad_enabled(), "grad mode must be restored after a failure"
    assert _hook_count(model.module) == hooks
    assert all(p.grad is None and not p.requires_grad for p in model.module.parameters())


@pytest.fixture()
def small_batches(monkeypatch):
    """Score-CAM in batches of 8 masks, so that even a small layer takes several batches."""
    monkeypatch.setattr(explain.get_method("scorecam"), "batch_size", 8)


# ---- Score-CAM abandoned mid-way -----------------------------------------------------------------

def _interrupted_scorecam(model: explain.Model, image, layer: str | None, how: str) -> None:
    """Start Score-CAM and abandon it after its 2nd batch, by cancel or by a raising progress."""
    batches: list[tuple[int, int]] = []
    checks = 0

    def progress(done: int, total: int) -> None:
        batches.append((done, total))
        if how == "raise" and len(batches) == 2:
            raise Rerun()

    def cancel() -> bool:
        nonlocal checks
        checks += 1
        return checks > 2  # batches 1 and 2 run, the 3rd is refused

    if how == "cancel":
        with pytest.raises(explain.Cancelled, match="cancelled"):
            explain.explain(model, image, layer=layer, method="scorecam", progress=progress, cancel=cancel)
    else:
        with pytest.raises(Rerun):
            explain.explain(model, image, layer=layer, method="scorecam", progress=progress)
    assert len(batches) == 2, "the run must stop right after its 2nd batch"
    done, total = batches[-1]
    assert done < total, "the run must really have been abandoned mid-way"


@pytest.mark.parametrize("how", ["cancel", "raise"])
def test_abandoned_scorecam_leaves_no_partial_state_digits(small_batches, how):
    model = explain.load_model("digits_lenet")
    image = explain.load_image(SAMPLES / "digit_7.png")
    hooks = _hook_count(model.module)
    _interrupted_scorecam(model, image, None, how)
    _assert_clean(model, hooks)

    passes = model.stats.forward_passes
    seen: list[tuple[int, int]] = []
    again = explain.explain(
        model, image, targets=[7, 1], method="scorecam", progress=lambda d, t: seen.append((d, t))
    )
    # Every mask ran again: nothing of the abandoned run was kept as if it were complete.
    assert seen and seen[0][0] <= 8 + 1, "the new run must start from its first batch"
    assert seen[-1][0] == seen[-1][1]
    assert model.stats.forward_passes - passes >= len(seen)

    fresh_model = explain.load_model("digits_lenet")
    fresh = explain.explain(fresh_model, image, targets=[7, 1], method="scorecam")
    _assert_maps_close(again.maps, fresh.maps, model.device)
    assert again.targets == [7, 1]
    # Other methods still work and agree with a model that never saw a fault.
    for method in ("gradcam", "cam", "saliency"):
        got = explain.explain(model, image, targets=[7], method=method)
        want = explain.explain(fresh_model, image, targets=[7], method=method)
        _assert_maps_close(got.maps, want.maps, model.device)
    _assert_clean(model, hooks)


@pytest.mark.slow
def test_abandoned_scorecam_leaves_no_partial_state_lite0(small_batches):
    model = explain.load_model("efficientnet_lite0")
    image = explain.load_image(SAMPLES / "coffee.jpg")
    layer = "blocks.0"  # 16 channels: two batches of 8 for the full run, affordable on a CPU
    assert model.layer_info(layer).shape[0] == 16
    hooks = _hook_count(model.module)

    calls: list[int] = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 1  # the 1st batch runs, the 2nd is refused

    with pytest.raises(explain.Cancelled):
        explain.explain(model, image, layer=layer, method="scorecam", cancel=cancel)
    assert len(calls) == 2
    _assert_clean(model, hooks)

    def progress(done: int, total: int) -> None:
        raise Rerun()

    with pytest.raises(Rerun):
        explain.explain(model, image, layer=layer, method="scorecam", progress=progress)
    _assert_clean(model, hooks)

    seen: list[tuple[int, int]] = []
    again = explain.explain(model, image, layer=layer, method="scorecam", progress=lambda d, t: seen.append((d, t)))
    assert seen[-1][0] == seen[-1][1], "the uninterrupted run must compute every mask"
    reference = explain.explain(explain.load_model("efficientnet_lite0"), image, layer=layer, method="scorecam")
    assert again.targets == reference.targets
    _assert_maps_close(again.maps, reference.maps, model.device)
    assert explain.explain(model, image, method="gradcam").maps.shape[0] == 1
    _assert_clean(model, hooks)


# ---- GPU out of memory -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("name", "sample", "method", "targets"),
    [
        ("digits_lenet", "digit_0.png", "cam", [0, 8]),
        ("digits_lenet", "digit_3.png", "saliency", [3]),
        ("efficientnet_lite0", "cat.jpg", "gradcam", [285, 281]),
    ],
)
def test_gpu_oom_falls_back_to_cpu_twin(monkeypatch, name, sample, method, targets):
    model = explain.load_model(name)
    image = explain.load_image(SAMPLES / sample)
    expected = explain.explain(model, image, targets=targets, method=method)
    assert not expected.notices
    hooks = _hook_count(model.module)

    log = oom_once(monkeypatch, model)
    r = explain.explain(model, image, targets=targets, method=method)
    assert log == ["oom"], "the fallback must not retry on the model that ran out of memory"
    assert any("CPU" in n and "memory" in n for n in r.notices), r.notices
    _assert_maps_close(r.maps, expected.maps, model.device)
    assert r.targets == expected.targets and r.layer == expected.layer
    assert r.predictions[0][0] == expected.predictions[0][0]
    assert r.model_name == model.name
    assert model.cached_captures == 0, "the GPU model drops its captures to free memory"
    # The twin is a copy: the shared model keeps its own taps, weights and frozen parameters.
    _assert_clean(model, hooks)
    twin = vars(model).get("_cpu_twin")  # made by the fallback itself, not by this test
    assert twin is not None and model.cpu_twin() is twin
    assert twin is not model and twin.module is not model.module
    assert twin.device.type == "cpu"
    assert _hook_count(twin.module) == hooks, "the twin has its own taps, not copies of ours on top"
    for p, q in zip(model.module.parameters(), twin.module.parameters(), strict=True):
        assert torch.equal(p.cpu(), q)

    # A second OOM reuses the twin instead of copying the model again; a normal call is unaffected.
    oom_once(monkeypatch, model)
    again = explain.explain(model, image, targets=targets, method=method)
    assert model.cpu_twin() is twin and again.notices == r.notices
    monkeypatch.undo()
    normal = explain.explain(model, image, targets=targets, method=method)
    assert not normal.notices
    _assert_maps_close(normal.maps, expected.maps, model.device)


# ---- an exception inside the forward pass ------------------------------------------------------------

class Flaky(nn.Module):
    """A conv block that raises mid-forward when told to."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.fail = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.fail:
            raise RuntimeError("simulated failure inside the forward pass")
        return y


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), Flaky(), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.features(x))))


def _toy() -> tuple[explain.Model, Flaky]:
    torch.manual_seed(0)
    module = Toy()
    pre = explain.Preprocess(input_size=32, resize_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    return explain.Model("toy", module, ["a", "b", "c"], pre, device="cpu"), module.features[2]


@pytest.mark.parametrize(
    "layer",
    [
        "features.0",  # tapped before the failure: the tap has switched grad mode on
        "features.2.conv",  # tapped inside the failing module, just before it raises
        "features.2",  # its tap never fires: the module raises first
        "features.3",  # after the failure
    ],
)
@pytest.mark.parametrize("method", ["gradcam", "saliency"])
def test_exception_in_forward_leaves_model_clean(layer, method):
    model, flaky = _toy()
    image = explain.load_image(SAMPLES / "flower.jpg")
    hooks = _hook_count(model.module)
    expected = explain.explain(model, image, targets=[1], layer=layer, method=method)
    model.clear_cache()
    captures = model.stats.captures

    flaky.fail = True
    with pytest.raises(RuntimeError, match="simulated failure"):
        explain.explain(model, image, targets=[1], layer=layer, method=method)
    with torch.no_grad(), pytest.raises(RuntimeError, match="simulated failure"):
        explain.explain(model, image, targets=[1], layer=layer, method=method)
    flaky.fail = False

    _assert_clean(model, hooks)
    assert model.cached_captures == 0, "a failed forward must not leave a capture behind"
    # No tap request is left active: a plain forward builds no graph and captures nothing.
    _, x = model.view_and_tensor(image)
    out = model.module(x)
    assert not out.requires_grad and out.grad_fn is None
    assert model.stats.captures == captures
    # The next explanation works and matches one made before the fault.
    r = explain.explain(model, image, targets=[1], layer=layer, method=method)
    torch.testing.assert_close(r.maps, expected.maps)
    assert model.cached_captures == 1
    _assert_clean(model, hooks)


def test_grad_mode_off_is_kept_off_after_a_failed_forward():
    model, flaky = _toy()
    image = explain.load_image(SAMPLES / "flower.jpg")
    flaky.fail = True
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="simulated failure"):
            explain.explain(model, image, layer="features.0")
        # The tap switched grad mode on inside the failed forward; the caller's "off" is restored.
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()


def test_base_exception_in_forward_leaves_model_clean(monkeypatch):
    """A BaseException (Ctrl-C, a Streamlit rerun) in the forward pass is cleaned up like any error."""
    model, flaky = _toy()
    image = explain.load_image(SAMPLES / "china.jpg")
    hooks = _hook_count(model.module)

    def interrupt(x: torch.Tensor) -> torch.Tensor:
        raise Rerun()

    monkeypatch.setattr(flaky, "forward", interrupt)  # this module instance only
    with pytest.raises(Rerun):
        explain.explain(model, image, layer="features.0")
    monkeypatch.undo()
    _assert_clean(model, hooks)
    _, x = model.view_and_tensor(image)
    assert not model.module(x).requires_grad
    assert explain.explain(model, image, layer="features.0").maps.shape == (1, 32, 32)
