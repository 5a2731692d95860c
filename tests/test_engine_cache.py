"""The capture cache: least-recently-used eviction, and a byte budget that bounds the real tensors held.

The budget test does not trust the engine's own count: it walks every kept capture and adds up the
bytes of the distinct tensor storages it really holds (activation, input, logits, per-class
gradients, method extras), after paging through hundreds of classes with several methods.
"""

from __future__ import annotations

import pytest
import torch

import explain
from explain.methods import ScoreCAM
from explain.model import Capture, Model
from explain.zoo import efficientnet_lite0 as lite0_zoo

BUDGET_MB = 24
SMALL_LAYER = "blocks.0"  # 16 channels: Score-CAM there is 16 masked passes


def _tensors(cap: Capture) -> list[torch.Tensor]:
    out = [cap.activation, cap.input, cap.logits, cap.probs, cap._leaf, *cap._grads.values()]
    out += [v for v in cap.extras.values() if isinstance(v, torch.Tensor)]
    return out


def real_bytes(model: Model) -> int:
    """Bytes of the distinct tensor storages every kept capture holds (the graph excluded)."""
    seen: dict[int, int] = {}
    for cap in list(model._captures.values()):
        for t in _tensors(cap):
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


@pytest.fixture(scope="module")
def tight(lite0: Model) -> Model:
    """Its own lite0 (same real weights) with a small capture budget."""
    return Model("lite0 (tight budget)", lite0_zoo.build(), lite0.categories, lite0.preprocess,
                 device="cpu", capture_cache=8, capture_budget_mb=BUDGET_MB)


def test_paging_through_hundreds_of_classes_stays_within_the_budget(tight, sample_image, monkeypatch):
    monkeypatch.setattr(ScoreCAM, "batch_size", 16)
    budget = BUDGET_MB * 2**20
    images = [sample_image(n) for n in ("cat.jpg", "coffee.jpg")]
    plan = [(None, "gradcam"), ("blocks.5", "layercam"), (None, "gradcam++"), ("conv_head", "hirescam")]
    peak_real = peak_count = 0
    for img in images:
        for layer, method in plan:
            for start in range(0, 300, 30):  # 300 classes of each picture, a page at a time
                classes = list(range(start, start + 30))
                explain.explain(tight, img, targets=classes, layer=layer, method=method)
                held, counted = real_bytes(tight), tight.cached_bytes
                peak_real, peak_count = max(peak_real, held), max(peak_count, counted)
                # The engine's count covers every tensor it keeps, and evicts on it.
                assert held <= counted, (held, counted)
                assert tight.cached_captures == 1 or counted <= budget, counted
        # Score-CAM's channel scores ([C, 1000]) are charged too.
        explain.explain(tight, img, targets=[1], layer=SMALL_LAYER, method="scorecam")
        assert real_bytes(tight) <= tight.cached_bytes
        assert tight.cached_captures == 1 or tight.cached_bytes <= budget
    # Far more gradients were computed than fit: without eviction they would be hundreds of MB.
    assert peak_real <= budget, f"{peak_real / 2**20:.1f} MB held for a {BUDGET_MB} MB budget"
    assert peak_real > budget / 4, "the test did not come near the budget"


def test_extras_and_gradients_are_charged_as_they_grow(tight, cat_img):
    tight.clear_cache()
    x = tight.view_and_tensor(cat_img)[1]
    cap = tight.capture(x, "bn2")
    before = tight.cached_bytes
    assert cap.cost == before
    cap.gradients([1, 2, 3])
    grown = tight.cached_bytes - before
    expected = sum(g.numel() * g.element_size() for g in cap._grads.values())
    assert grown == expected == cap.held_bytes() > 0
    cap.extras["probe"] = torch.zeros(1000, 100)
    assert tight.cached_bytes - before == expected + 400_000
    cap.extras["probe"] = torch.zeros(10)  # replacing frees the old one's share
    assert tight.cached_bytes - before == expected + 40
    cap.forget_gradients()
    assert tight.cached_bytes - before == 40 and cap._grads == {}
    tight.clear_cache()
    assert tight.cached_bytes == 0


def test_eviction_is_least_recently_used_not_first_in(tight, cat_img):
    tight.clear_cache()
    x = tight.view_and_tensor(cat_img)[1]
    limit = tight._capture_limit
    layers = [n for n, _ in tight.layers()][-limit - 1:]
    first, rest, extra = layers[0], layers[1:-1], layers[-1]
    for layer in [first, *rest]:
        tight.capture(x, layer)
    assert tight.cached_captures == limit
    hits = tight.stats.capture_hits
    tight.capture(x, first)  # the oldest, used again: now the most recently used
    assert tight.stats.capture_hits == hits + 1
    tight.capture(x, extra)  # one too many: the least recently used (rest[0]) goes
    n = tight.stats.forward_passes
    tight.capture(x, first)
    assert tight.stats.forward_passes == n, "a recently used capture was evicted (first in, first out?)"
    tight.capture(x, rest[0])
    assert tight.stats.forward_passes == n + 1, "the least recently used capture was kept"
    tight.clear_cache()
