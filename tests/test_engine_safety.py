"""Explaining never changes the shared model, even when it fails, and many threads can share it.

"Unchanged" means: every module's hook dicts hold the same keys and the very same hook objects,
every ``training`` flag, every parameter's ``requires_grad`` and ``.grad is None``, every tensor in
the state dict, torch's global hooks and the caller's grad mode.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch
from conftest import sample
from torch import nn
from torch.nn.modules import module as nn_module

import explain
from explain.methods import ScoreCAM
from explain.model import tapped
from explain.zoo import efficientnet_lite0 as lite0_zoo

SMALL_LAYER = "blocks.0"  # 16 channels: Score-CAM there is 16 masked passes

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_state_dict_hooks",
               "_load_state_dict_pre_hooks")
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks")


def snapshot(module: nn.Module) -> dict[str, Any]:
    """Everything about a module that explaining must leave alone."""
    hooks = {}
    for name, sub in module.named_modules():
        for attr in _HOOK_DICTS:
            d = getattr(sub, attr, None)
            if d is not None:
                hooks[(name, attr)] = list(d.items())
    return {
        "hooks": hooks,
        "training": [(n, s.training) for n, s in module.named_modules()],
        "params": [(n, p.requires_grad, p.grad is None, p._backward_hooks) for n, p in module.named_parameters()],
        "state": {k: v.detach().clone() for k, v in module.state_dict().items()},
        "global": {a: list(getattr(nn_module, a).items()) for a in _GLOBAL_HOOKS if hasattr(nn_module, a)},
    }


def assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before["hooks"].keys() == after["hooks"].keys()
    for key, items in before["hooks"].items():
        now = after["hooks"][key]
        assert [k for k, _ in items] == [k for k, _ in now], key
        assert all(a is b for (_, a), (_, b) in zip(items, now)), key
    assert before["training"] == after["training"]
    assert before["params"] == after["params"]
    assert before["state"].keys() == after["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), k
    for a, items in before["global"].items():
        assert [(k, id(h)) for k, h in items] == [(k, id(h)) for k, h in after["global"][a]], a


@pytest.fixture()
def small_batches(monkeypatch):
    monkeypatch.setattr(ScoreCAM, "batch_size", 4)


def test_explaining_leaves_the_model_exactly_as_it_was(lite0, cat_img, small_batches):
    before = snapshot(lite0.module)
    assert all(p.grad is None and not p.requires_grad for p in lite0.module.parameters())
    for method in ("cam", "gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "saliency"):
        explain.explain(lite0, cat_img, targets=[285, 281], method=method)
        assert torch.is_grad_enabled()
    explain.explain(lite0, cat_img, targets=[285], layer=SMALL_LAYER, method="scorecam")
    explain.explain(lite0, cat_img, targets=[285], layer=SMALL_LAYER, method="gradcam")
    assert_same(before, snapshot(lite0.module))
    # A caller running under no_grad stays there.
    with torch.no_grad():
        lite0.clear_cache()
        explain.explain(lite0, cat_img, targets=[1], method="gradcam")
        assert not torch.is_grad_enabled()
    assert_same(before, snapshot(lite0.module))


def test_failures_mid_way_leave_the_model_clean(lite0, sample_image, small_batches):
    img = sample_image("flower.jpg")
    lite0.clear_cache()
    before = snapshot(lite0.module)

    def progress(done: int, total: int) -> None:
        if done >= 8:
            raise RuntimeError("the browser went away")

    with pytest.raises(RuntimeError, match="went away"):
        explain.explain(lite0, img, layer=SMALL_LAYER, method="scorecam", progress=progress)
    assert_same(before, snapshot(lite0.module))
    assert torch.is_grad_enabled()

    ticks = iter(range(100))
    with pytest.raises(explain.Cancelled):
        explain.explain(lite0, img, layer=SMALL_LAYER, method="scorecam", cancel=lambda: next(ticks) >= 2)
    assert_same(before, snapshot(lite0.module))

    with pytest.raises(explain.UnknownClassError):
        explain.explain(lite0, img, targets=[5, 1000], method="gradcam")
    with pytest.raises(explain.UnknownClassError):
        explain.explain(lite0, img, targets=[5, 1000], method="saliency")
    with pytest.raises(explain.MethodNotApplicableError):
        explain.explain(lite0, img, layer=SMALL_LAYER, method="cam")
    assert_same(before, snapshot(lite0.module))

    # Nothing half-done was kept: a full Score-CAM now equals one on an empty cache.
    full = explain.explain(lite0, img, targets=[5], layer=SMALL_LAYER, method="scorecam")
    lite0.clear_cache()
    fresh = explain.explain(lite0, img, targets=[5], layer=SMALL_LAYER, method="scorecam")
    torch.testing.assert_close(full.maps, fresh.maps)
    assert float(full.maps.max()) > 0
    assert_same(before, snapshot(lite0.module))


def test_taps_are_inert_for_plain_calls(lite0, cat_img):
    x = lite0.view_and_tensor(cat_img)[1]
    with torch.no_grad():
        plain_before = lite0.module(x)
    explain.explain(lite0, cat_img, targets=[285], method="gradcam")
    explain.explain(lite0, cat_img, targets=[285], layer="blocks.3", method="gradcam")
    captures, forwards, kept = lite0.stats.captures, lite0.stats.forward_passes, lite0.cached_captures
    # With grad mode on: a firing tap would start a graph (a leaf that requires grad).
    out = lite0.module(x)
    assert out.grad_fn is None and not out.requires_grad
    torch.testing.assert_close(out, plain_before, rtol=0, atol=0)
    assert (lite0.stats.captures, lite0.stats.forward_passes, lite0.cached_captures) == (captures, forwards, kept)


def test_same_image_reuses_the_forward_pass(lite0, sample_image):
    img = sample_image("china.jpg")
    lite0.clear_cache()
    explain.explain(lite0, img, targets=[1], method="gradcam")
    n = lite0.stats.forward_passes
    hits = lite0.stats.capture_hits
    for method in ("cam", "gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"):
        explain.explain(lite0, img, targets=[2, 3, 400], method=method)
    assert lite0.stats.forward_passes == n
    assert lite0.stats.capture_hits == hits + 6
    explain.explain(lite0, img, targets=[1], layer="blocks.5", method="gradcam")
    assert lite0.stats.forward_passes == n + 1
    explain.explain(lite0, img, targets=[9], layer="blocks.5", method="layercam")
    assert lite0.stats.forward_passes == n + 1
    explain.explain(lite0, img, targets=[1], method="saliency")
    assert lite0.stats.forward_passes == n + 2
    # Another fit is another input: one more forward.
    explain.explain(lite0, img, targets=[1], fit="crop")
    assert lite0.stats.forward_passes == n + 3


def test_capture_cache_is_bounded(lite0, sample_image):
    lite0.clear_cache()
    assert lite0.cached_captures == 0
    img = sample_image("rocket.jpg")
    limit = lite0._capture_limit
    layers = [n for n, _ in lite0.layers()][-limit - 3:]
    for layer in layers:
        explain.explain(lite0, img, layer=layer, method="gradcam")
        assert lite0.cached_captures <= limit
    assert lite0.cached_captures == limit
    # The oldest were evicted: asking again costs a forward; the newest is still kept.
    n = lite0.stats.forward_passes
    explain.explain(lite0, img, layer=layers[-1], method="gradcam")
    assert lite0.stats.forward_passes == n
    explain.explain(lite0, img, layer=layers[0], method="gradcam")
    assert lite0.stats.forward_passes == n + 1
    lite0.clear_cache()
    assert lite0.cached_captures == 0


# ---- threads ------------------------------------------------------------------------------------
IMAGES = ("cat.jpg", "coffee.jpg", "rocket.jpg", "astronaut.jpg", "china.jpg", "flower.jpg", "cat_and_coffee.jpg")
GRAD_METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "cam", "saliency")
LAYERS = (None, "blocks.5", "blocks.4", "conv_head")


def _jobs(seed: int, n: int) -> list[tuple[str, list[int], str, str | None]]:
    rng = random.Random(seed)
    jobs = []
    for _ in range(n):
        method = rng.choice(GRAD_METHODS)
        layer = None if method == "cam" else rng.choice(LAYERS)
        jobs.append((rng.choice(IMAGES), rng.sample(range(1000), rng.randint(1, 3)), method, layer))
    # Two Score-CAM jobs on one small layer, so the threads also share masked passes.
    jobs.append(("cat.jpg", [285], "scorecam", SMALL_LAYER))
    jobs.append(("cat.jpg", [967, 285], "scorecam", SMALL_LAYER))
    return jobs


def _run(model: explain.Model, job) -> torch.Tensor:
    image, targets, method, layer = job
    return explain.explain(model, sample(image), targets=targets, layer=layer, method=method).maps


def _concurrent(model: explain.Model, jobs, workers: int = 8) -> list[torch.Tensor]:
    per_thread = [jobs[i::workers] for i in range(workers)]

    def worker(mine):
        return [_run(model, job) for job in mine]

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(worker, per_thread))
    out: list[torch.Tensor | None] = [None] * len(jobs)
    for i, res in enumerate(results):
        for j, maps in enumerate(res):
            out[i + j * workers] = maps
    return out  # type: ignore[return-value]


def _small_cache_twin(model: explain.Model, capture_cache: int) -> explain.Model:
    """An independent lite0 (same real weights) whose capture cache holds only a few entries."""
    return explain.Model("efficientnet_lite0 (small cache)", lite0_zoo.build(), model.categories,
                         model.preprocess, device="cpu", capture_cache=capture_cache)


def test_eight_threads_on_one_model_match_a_sequential_run(lite0, small_batches):
    jobs = _jobs(seed=7, n=30)
    lite0.clear_cache()
    sequential = [_run(lite0, job) for job in jobs]
    before = snapshot(lite0.module)
    lite0.clear_cache()
    concurrent = _concurrent(lite0, jobs)
    for job, a, b in zip(jobs, sequential, concurrent):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6 * max(1.0, float(a.abs().max())), msg=str(job))
    assert_same(before, snapshot(lite0.module))
    assert lite0.cached_captures <= lite0._capture_limit

    # A tiny cache forces evictions while other threads still use the evicted captures.
    twin = _small_cache_twin(lite0, capture_cache=1)
    twin_before = snapshot(twin.module)
    evicted = _concurrent(twin, jobs)
    for job, a, b in zip(jobs, sequential, evicted):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6 * max(1.0, float(a.abs().max())), msg=str(job))
    assert twin.cached_captures <= 1
    keys = {(img, "input" if m == "saliency" else (layer or "bn2")) for img, _, m, layer in jobs}
    assert twin.stats.captures >= len(keys)
    assert_same(twin_before, snapshot(twin.module))


def test_concurrent_requests_for_one_capture_share_one_forward(lite0, sample_image):
    img = sample_image("astronaut.jpg")
    lite0.clear_cache()
    n = lite0.stats.forward_passes
    with ThreadPoolExecutor(max_workers=6) as pool:
        maps = list(pool.map(lambda c: explain.explain(lite0, img, targets=[c]).maps[0], range(6)))
    assert lite0.stats.forward_passes == n + 1
    together = explain.explain(lite0, img, targets=list(range(6))).maps
    torch.testing.assert_close(torch.stack(maps), together, rtol=1e-4, atol=1e-6)


def test_randomised_copy_leaves_the_original_alone(digits, sample_image):
    img = sample_image("digit_7.png")
    before = snapshot(digits.module)
    original = explain.explain(digits, img, targets=[7]).maps
    rand = digits.randomised_copy(["fc", "features.6"], seed=1)
    assert rand.module is not digits.module
    assert not torch.equal(rand.module.fc.weight, digits.module.fc.weight)
    assert torch.equal(rand.module.features[0].weight, digits.module.features[0].weight)
    changed = explain.explain(rand, img, targets=[7]).maps
    assert not torch.allclose(changed, original)
    assert_same(before, snapshot(digits.module))
    torch.testing.assert_close(explain.explain(digits, img, targets=[7]).maps, original)
    # Its taps are its own: the original's layers each still carry exactly one, and no hook.
    assert sorted(tapped(digits.module)) == sorted(name for name, _ in digits.layers())
    assert all(not sub._forward_hooks for sub in digits.module.modules())


def test_capture_cache_respects_its_byte_budget(lite0, sample_image):
    """Input-gradient captures keep the whole graph: the byte budget, not the count, bounds them."""
    img = sample_image("coffee.jpg")
    twin = explain.Model("lite0 (tight budget)", lite0_zoo.build(), lite0.categories, lite0.preprocess,
                         device="cpu", capture_cache=8, capture_budget_mb=40)
    views = [img.rotate(angle) for angle in (0, 90, 180, 270)]
    for v in views:
        explain.explain(twin, v, method="saliency")
        assert twin.cached_captures == 1 or twin.cached_bytes <= 40 * 2**20
    # A saliency capture of lite0 is estimated far above 40 MB: only the newest is kept.
    assert twin.cached_captures == 1
    n = twin.stats.forward_passes
    explain.explain(twin, views[-1], targets=[3], method="saliency")
    assert twin.stats.forward_passes == n
    for v in views[:2]:  # small layer captures fit several at once
        explain.explain(twin, v, method="gradcam")
    assert twin.cached_captures >= 2 and twin.cached_bytes <= 40 * 2**20


def test_a_failing_forward_leaves_no_per_key_lock(lite0, cat_img, monkeypatch):
    lite0.clear_cache()

    def broken(*_a, **_k):
        raise RuntimeError("forward failed")

    monkeypatch.setattr(lite0, "_forward_layer", broken)
    for _ in range(3):
        with pytest.raises(RuntimeError, match="forward failed"):
            explain.explain(lite0, cat_img.rotate(7), method="gradcam")
    assert lite0._key_locks == {}
    monkeypatch.undo()
    r = explain.explain(lite0, cat_img.rotate(7), method="gradcam")
    assert torch.isfinite(r.maps).all() and lite0._key_locks == {}


def test_view_keyed_inputs_are_not_fooled_by_in_place_changes(lite0, sample_image):
    """Tensors from view_and_tensor are keyed by their 8-bit view; editing one in place re-keys it."""
    img = sample_image("astronaut.jpg")
    lite0.clear_cache()
    _view, x = lite0.view_and_tensor(img)
    first = lite0.capture(x, None)
    _view2, x2 = lite0.view_and_tensor(img)  # same picture, new tensor: the same capture
    assert lite0.capture(x2, None) is first
    x.mul_(0.5)  # e.g. a caller dimming the input in place
    dimmed = lite0.capture(x, None)
    assert dimmed is not first
    with torch.no_grad():
        expected = lite0.module(x.clone())
    torch.testing.assert_close(dimmed.logits.detach(), expected)
