"""Shared fixtures: the embedded models, the sample photos, and cached random-weight torchvision models.

Models are expensive to build (seconds each on a shared 2-core machine), so they are made once per
session and shared by the tests. They are *read-only* for every test: a test that needs to change a
model (e.g. re-initialise a head) builds its own instance.
"""

from __future__ import annotations

import copy
import os
import pathlib
import sys
import threading
from collections.abc import Callable

import pytest
import torch
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent
# pyproject's ``pythonpath`` covers ``python -m pytest`` from the root; this covers a bare
# ``pytest tests/...`` from elsewhere too.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import explain
from explain.samples import SAMPLES_DIR

# On a small machine shared with other jobs, two OpenMP threads spin against each other and make a
# forward pass ~10x slower than one thread does (2 s vs 0.2 s for resnet18); tests only need
# correctness, so one intra-op thread unless CAM_TEST_THREADS says otherwise.
torch.set_num_threads(int(os.environ.get("CAM_TEST_THREADS", "1")))

def completion_order(module: torch.nn.Module, x: torch.Tensor) -> list[str]:
    """Module names in the order their forward calls finish, from plain hooks on a private copy."""
    net = copy.deepcopy(module)
    order: list[str] = []
    names = {m: n for n, m in net.named_modules() if n}
    for m in names:
        m.register_forward_hook(lambda mod, _i, _o: order.append(names[mod]))
    with torch.no_grad():
        net(x)
    return order


TvModel = Callable[[str], explain.Model]


def build_random(name: str, seed: int = 0, **kw: object) -> explain.Model:
    """A torchvision architecture with seeded random weights (no download), as its own instance."""
    with torch.random.fork_rng(devices=[]):
        # Seeded so that two builds of the same architecture are identical and a failure reproduces.
        torch.manual_seed(seed)
        return explain.load_model(name, weights=None, device="cpu", **kw)


@pytest.fixture(scope="session")
def lite0() -> explain.Model:
    """The embedded ImageNet model with its real weights (shared: never mutate)."""
    return explain.load_model("efficientnet_lite0", device="cpu")


@pytest.fixture(scope="session")
def digits() -> explain.Model:
    """The embedded digit LeNet with its real weights (shared: never mutate)."""
    return explain.load_model("digits_lenet", device="cpu")


@pytest.fixture(scope="session")
def tv_model() -> TvModel:
    """Factory ``tv_model(name)``: a seeded random-weight torchvision model, built once per session."""
    cache: dict[str, explain.Model] = {}
    lock = threading.Lock()

    def get(name: str) -> explain.Model:
        with lock:
            if name not in cache:
                cache[name] = build_random(name)
            return cache[name]

    return get


_IMAGES: dict[str, Image.Image] = {}


def sample(name: str) -> Image.Image:
    """A sample photo from ``assets/samples`` loaded through the engine's own loader (cached)."""
    if name not in _IMAGES:
        _IMAGES[name] = explain.load_image(SAMPLES_DIR / name)
    # A copy, so that a test drawing on its image cannot change another test's input.
    return _IMAGES[name].copy()


@pytest.fixture()
def cat_img() -> Image.Image:
    return sample("cat.jpg")


@pytest.fixture()
def coffee_img() -> Image.Image:
    return sample("coffee.jpg")


@pytest.fixture()
def cat_coffee_img() -> Image.Image:
    return sample("cat_and_coffee.jpg")


@pytest.fixture()
def sample_image() -> Callable[[str], Image.Image]:
    """Factory ``sample_image("rocket.jpg")``."""
    return sample


def oom_once(monkeypatch, model: explain.Model) -> list[str]:
    """Make this model instance's next capture raise CUDA out-of-memory (once); returns a call log."""
    real = model.capture
    log: list[str] = []

    def capture(x, layer):
        if not log:
            log.append("oom")
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        log.append("ok")
        return real(x, layer)

    monkeypatch.setattr(model, "capture", capture)  # this instance only
    return log
