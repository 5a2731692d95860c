"""Long sessions (issue 5): hundreds of explanations in one process must not grow memory, hooks,
gradients or the capture cache. Prints the measured figures (run with ``-s``) and writes them to
``artifacts/soak.json`` for the README."""

from __future__ import annotations

import ctypes
import gc
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import explain
from explain import render
from explain.samples import list_samples
from explain.teach import walkthrough
from test_engine_cache import real_bytes

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"

# Bounds over the 160 measured calls after warm-up, with margin over what was measured on a 2-core
# CPU box (artifacts/soak.json: ~50–70 MB raw, ~4 MB trimmed, <100 objects). Raw RSS includes
# glibc's fragmentation, which levels off; trimmed RSS is live memory, and keeping one lite0
# capture per call (2–85 MB each, saliency keeps the whole graph) would cross its bound many times.
RSS_GROWTH_LIMIT_MB = 150.0
TRIMMED_RSS_GROWTH_LIMIT_MB = 40.0
# An Explanation or a Capture kept per call is ~10 gc-tracked objects: 160 calls → well above this.
OBJECT_GROWTH_LIMIT = 1_000

WARMUP = 40
LITE0_CALLS = 200
DIGIT_CALLS = 24
FAST_METHODS = ("cam", "gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "saliency")
LITE0_LAYERS = ("bn2", "conv_head", "blocks.6", "blocks.5", "blocks.4")


def _trim() -> None:
    """Hand freed heap pages back to the OS (glibc), so RSS shows live memory, not fragmentation."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS then includes the allocator's free pages
        pass


def _rss_mb() -> float:
    """Resident set size of this process from /proc (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("VmRSS not found in /proc/self/status")


def _measure(*models: explain.Model) -> tuple[float, float, int]:
    """(RSS MB as the OS sees it, RSS MB after gc + malloc_trim, live gc-tracked objects).

    The raw figure includes the models' capture caches (bounded, checked separately); the trimmed
    figure and the object count are taken with the caches emptied, so they show what is left
    *outside* the bounded caches, i.e. leaks.
    """
    raw = _rss_mb()
    for m in models:
        m.clear_cache()
    objects = _object_count()
    _trim()
    return raw, _rss_mb(), objects


def _object_count() -> int:
    gc.collect()
    return len(gc.get_objects())


def _hook_count(model: explain.Model) -> int:
    return sum(len(m._forward_hooks) for m in model.module.modules())


def _param_state(model: explain.Model) -> list[tuple[str, bool]]:
    return [(n, p.requires_grad) for n, p in model.module.named_parameters()]


class _Session:
    """One long session on one model: explains, renders, and checks invariants after every call."""

    def __init__(self, model: explain.Model, images: list, layers: tuple[str, ...], methods: tuple[str, ...]):
        self.model, self.images, self.layers, self.methods = model, images, layers, methods
        self.rng = np.random.default_rng(0)
        self.calls = 0
        self.refused = 0  # CAM asked at a layer where it does not apply: a clear error, not a map
        self.max_cached = 0
        self.max_cached_bytes = 0

    def step(self, i: int) -> None:
        m = self.model
        # Every method in turn on one (picture, layer) pair, as a user flipping through methods
        # would: one forward pass per pair, then cache hits; 35 pairs cycle through an 8-entry cache.
        block = i // len(self.methods)
        image = self.images[block % len(self.images)]
        method = self.methods[i % len(self.methods)]
        layer = self.layers[block % len(self.layers)]
        targets = [int(t) for t in self.rng.choice(m.num_classes, size=1 + i % 3, replace=False)]
        try:
            r = explain.explain(m, image, targets=targets, layer=layer, method=method)
        except explain.MethodNotApplicableError:
            assert method == "cam" and m.layer_info(layer).cam_linear is None
            self.refused += 1
            r = explain.explain(m, image, targets=targets, layer=layer, method="gradcam")
        self.calls += 1
        assert r.maps.shape[0] == len(targets) and torch.isfinite(r.maps).all()
        overlays = r.overlays(
            normalize=explain.NORMALIZATIONS[i % 2],
            colormap=explain.COLORMAPS[i % len(explain.COLORMAPS)],
            alpha=0.5,
            smooth=2.0 if i % 4 == 0 else 0.0,
            contour=i % 2 == 0,
            box=i % 3 == 0,
        )
        assert len(overlays) == len(targets) and overlays[0].size == r.image.size
        if i % 10 == 0:
            render.to_png_bytes(render.grid(overlays, [str(t) for t in r.target_names], columns=3, tile=96))
            fig = render.heatmap_figure(r.maps[0], colormap="viridis", title=r.method)
            fig.savefig(io.BytesIO(), format="png")
        if i % 15 == 0 and m.layer_info(layer).cam_linear is not None:
            walkthrough(m, image, targets[0], layer=layer, method=("cam", "gradcam")[i % 2])
        self.max_cached = max(self.max_cached, m.cached_captures)
        assert m.cached_captures <= m._capture_limit
        # The byte budget may be exceeded by the newest capture alone, never by older ones kept.
        assert m.cached_captures == 1 or m.cached_bytes <= m._capture_budget
        # Not only the engine's own count: the tensors really held are all counted in it.
        assert real_bytes(m) <= m.cached_bytes
        self.max_cached_bytes = max(self.max_cached_bytes, m.cached_bytes)
        assert torch.is_grad_enabled()


@pytest.mark.slow
def test_long_session_does_not_leak():
    started = time.perf_counter()
    lite0 = explain.load_model("efficientnet_lite0")
    digits = explain.load_model("digits_lenet")
    available = {name for name, _ in lite0.layers()}
    assert set(LITE0_LAYERS) <= available and lite0.default_layer in LITE0_LAYERS
    samples = list_samples()
    photos = [explain.load_image(p) for _, p in samples if "digit" not in Path(p).name]
    digit_images = [explain.load_image(p) for _, p in samples if "digit" in Path(p).name]
    assert len(photos) >= 5 and len(digit_images) >= 3

    hooks = {id(m): _hook_count(m) for m in (lite0, digits)}
    params = {id(m): _param_state(m) for m in (lite0, digits)}
    session = _Session(lite0, photos, LITE0_LAYERS, FAST_METHODS)
    digit_layers = tuple(name for name, _ in digits.layers() if name.startswith("features."))[-3:] + (
        digits.default_layer,
    )
    digit_session = _Session(digits, digit_images, digit_layers, FAST_METHODS + ("scorecam",))

    for i in range(WARMUP):
        session.step(i)
    raw_start, rss_start, objects_start = _measure(lite0, digits)
    peak = raw_start
    for i in range(WARMUP, LITE0_CALLS):
        session.step(i)
        if i % 20 == 0:
            peak = max(peak, _rss_mb())
    for i in range(DIGIT_CALLS):
        digit_session.step(i)
    raw_end, rss_end, objects_end = _measure(lite0, digits)
    peak = max(peak, raw_end)
    elapsed = time.perf_counter() - started

    figures = {
        "explanations": session.calls + digit_session.calls,
        "lite0_explanations": session.calls,
        "digits_lenet_explanations": digit_session.calls,
        "cam_refusals": session.refused + digit_session.refused,
        "warmup_explanations": WARMUP,
        "rss_after_warmup_mb": round(raw_start, 1),
        "rss_end_mb": round(raw_end, 1),
        "rss_peak_mb": round(peak, 1),
        "rss_growth_mb": round(raw_end - raw_start, 1),
        "rss_trimmed_after_warmup_mb": round(rss_start, 1),
        "rss_trimmed_end_mb": round(rss_end, 1),
        "rss_trimmed_growth_mb": round(rss_end - rss_start, 1),
        "rss_growth_limit_mb": RSS_GROWTH_LIMIT_MB,
        "rss_trimmed_growth_limit_mb": TRIMMED_RSS_GROWTH_LIMIT_MB,
        "gc_objects_after_warmup": objects_start,
        "gc_objects_end": objects_end,
        "gc_object_growth": objects_end - objects_start,
        "gc_object_growth_limit": OBJECT_GROWTH_LIMIT,
        "max_cached_captures": max(session.max_cached, digit_session.max_cached),
        "capture_limit": lite0._capture_limit,
        "max_cached_capture_mb": round(session.max_cached_bytes / 2**20, 1),
        "capture_budget_mb": round(lite0._capture_budget / 2**20, 1),
        "forward_passes": lite0.stats.forward_passes + digits.stats.forward_passes,
        "capture_hits": lite0.stats.capture_hits + digits.stats.capture_hits,
        "seconds": round(elapsed, 1),
        "torch": torch.__version__,
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "soak.json").write_text(json.dumps(figures, indent=2) + "\n")
    print("\nsoak:", json.dumps(figures))

    assert session.calls + digit_session.calls >= 200 + DIGIT_CALLS
    assert session.refused > 0, "the layer cycle must include layers where CAM does not apply"
    assert lite0.stats.capture_hits > 0 and digits.stats.capture_hits > 0
    assert raw_end - raw_start < RSS_GROWTH_LIMIT_MB, figures
    assert rss_end - rss_start < TRIMMED_RSS_GROWTH_LIMIT_MB, figures
    assert objects_end - objects_start < OBJECT_GROWTH_LIMIT, figures
    for m in (lite0, digits):
        assert _hook_count(m) == hooks[id(m)], "forward hooks accumulated on the shared model"
        assert _param_state(m) == params[id(m)], "requires_grad of a parameter changed"
        assert all(p.grad is None for p in m.module.parameters()), "a parameter received a .grad"
        assert m.cached_captures <= m._capture_limit
    # The cache must have filled (to its count limit or to its byte budget) and evicted.
    assert lite0.stats.captures > session.max_cached, "the cache must have evicted"
    assert session.max_cached == lite0._capture_limit or session.max_cached_bytes > lite0._capture_budget / 2
