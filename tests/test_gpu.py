"""The engine on a CUDA GPU gives what it gives on the CPU (skipped where there is no GPU).

For the embedded efficientnet_lite0 (real weights) and a seeded random-weight torchvision resnet18,
the same picture is explained on ``device="cuda"`` and on ``device="cpu"`` with every method and
several classes: the raw maps must agree to float tolerance, the top-5 predictions must come in the
same order, and the shared CUDA model must come out untouched (same parameters, no ``.grad``, no
``requires_grad`` or ``training`` change). A simulated out-of-memory error on the real CUDA model
must fall back to the CPU with the same result.

Exact comparisons switch TF32 off (on Ampere and later, cuDNN convolutions default to TF32, which
keeps only 10 mantissa bits); a separate test checks that with the default settings, as the app
runs, the maps still look the same.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from conftest import oom_once

import explain
from explain.samples import SAMPLES_DIR

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CAT = SAMPLES_DIR / "cat.jpg"
RTOL, ATOL = 1e-3, 1e-4  # atol is relative to the largest value of the map
TIE = 1e-5  # probabilities closer than this may swap places between devices


@pytest.fixture()
def exact_float32() -> Iterator[None]:
    """No TF32 for this test (restored afterwards)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _seeded(name: str, device: str) -> explain.Model:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return explain.load_model(name, weights=None, device=device)


_MODELS: dict[tuple[str, str], explain.Model] = {}


def pair(name: str) -> tuple[explain.Model, explain.Model]:
    """(CPU model, CUDA model) with identical weights, loaded once for the file."""
    for device in ("cpu", "cuda"):
        if (name, device) not in _MODELS:
            if name == "efficientnet_lite0":
                _MODELS[name, device] = explain.load_model(name, device=device)
            else:
                _MODELS[name, device] = _seeded(name, device)
    return _MODELS[name, "cpu"], _MODELS[name, "cuda"]


def snapshot(m: explain.Model) -> dict[str, object]:
    return {
        "state": {k: v.detach().clone() for k, v in m.module.state_dict().items()},
        "requires_grad": [p.requires_grad for p in m.module.parameters()],
        "training": [mod.training for mod in m.module.modules()],
    }


def assert_untouched(m: explain.Model, before: dict[str, object]) -> None:
    state = m.module.state_dict()
    assert state.keys() == before["state"].keys()
    changed = [k for k, v in before["state"].items() if not torch.equal(state[k], v)]
    assert not changed, f"the shared model's tensors changed: {changed[:5]}"
    assert [p.requires_grad for p in m.module.parameters()] == before["requires_grad"]
    assert [mod.training for mod in m.module.modules()] == before["training"]
    assert all(p.grad is None for p in m.module.parameters()), "a parameter .grad was written"
    assert all(p.device.type == "cuda" for p in m.module.parameters())


def assert_same_ranking(cpu: explain.Explanation, gpu: explain.Explanation) -> None:
    """Top-5 in the same order; two classes may only swap where the CPU's probabilities tie."""
    cpu_idx = [i for i, _n, _p in cpu.predictions[:5]]
    gpu_idx = [i for i, _n, _p in gpu.predictions[:5]]
    np.testing.assert_allclose(gpu.probs, cpu.probs, rtol=1e-3, atol=1e-6)
    if cpu_idx != gpu_idx:
        assert set(cpu_idx) == set(gpu_idx), f"top-5 differs: cpu {cpu_idx}, gpu {gpu_idx}"
        for a, b in itertools.pairwise(gpu_idx):  # the GPU ranks a above b
            assert cpu.probs[a] >= cpu.probs[b] - TIE, f"top-5 order differs: cpu {cpu_idx}, gpu {gpu_idx}"


def assert_maps_close(cpu: torch.Tensor, gpu: torch.Tensor, what: str, scale: float = 1.0) -> None:
    """``[K, h, w]`` maps equal within RTOL, and ATOL times the largest value of all K CPU maps.

    The peak is taken over all targets: a weak class's map may be all zero after the ReLU on the
    CPU and carry float noise on the GPU, which only the family's own scale can judge.
    """
    assert gpu.device.type == "cpu" and gpu.dtype == torch.float32, what  # Explanation.maps is on the CPU
    assert gpu.shape == cpu.shape, what
    a, b = cpu.numpy(), gpu.numpy()
    peak = float(np.abs(a).max())
    assert peak > 0, f"{what}: every CPU map is all zero, nothing to compare"
    for k in range(a.shape[0]):
        np.testing.assert_allclose(b[k], a[k], rtol=RTOL * scale, atol=ATOL * scale * peak, err_msg=f"{what}, map {k}")


def targets_for(r: explain.Explanation) -> list[int]:
    """Top-3 and the least likely class: strong and weak evidence."""
    return [i for i, _n, _p in r.predictions[:3]] + [int(np.argmin(r.probs))]


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18"])
def test_cuda_matches_cpu_for_every_method(name: str, exact_float32: None) -> None:
    cpu_model, gpu_model = pair(name)
    assert gpu_model.device.type == "cuda" and cpu_model.device.type == "cpu"
    for (k, v), (k2, v2) in zip(cpu_model.module.state_dict().items(), gpu_model.module.state_dict().items()):
        assert k == k2 and torch.equal(v, v2.cpu()), f"{name}: CPU and CUDA weights differ at {k}"
    before = snapshot(gpu_model)
    image = explain.load_image(CAT)

    first = explain.explain(cpu_model, image)
    targets = targets_for(first)
    for method in explain.METHODS:
        layer = None if explain.get_method(method).input_layer else cpu_model.default_layer
        cpu = explain.explain(cpu_model, image, targets, layer, method)
        gpu = explain.explain(gpu_model, image, targets, layer, method)
        assert gpu.targets == cpu.targets == targets and gpu.layer == cpu.layer
        assert_same_ranking(cpu, gpu)
        # Input gradients go through every ReLU of the network: a gate that flips on float noise
        # moves a few pixels more than a layer map moves, hence the wider band for saliency.
        scale = 10.0 if method == "saliency" else 1.0
        assert_maps_close(cpu.maps, gpu.maps, f"{name} {method} (classes {targets})", scale)
        # What a user sees: the normalised heatmaps agree as well.
        np.testing.assert_allclose(
            gpu.heatmaps("shared"), cpu.heatmaps("shared"), atol=1e-2 * scale, err_msg=f"{name} {method}"
        )
    assert_untouched(gpu_model, before)
    assert not gpu.notices, gpu.notices  # computed on the GPU, no fallback


def test_cuda_with_default_tf32_settings_looks_the_same() -> None:
    """As the app runs (TF32 convolutions allowed): same top-1, maps that look the same."""
    cpu_model, gpu_model = pair("efficientnet_lite0")
    before = snapshot(gpu_model)
    image = explain.load_image(CAT)
    for method in ("gradcam", "cam", "layercam"):
        cpu = explain.explain(cpu_model, image, method=method)
        gpu = explain.explain(gpu_model, image, method=method)
        assert gpu.predictions[0][0] == cpu.predictions[0][0]
        np.testing.assert_allclose(gpu.probs, cpu.probs, atol=1e-2)
        a, b = cpu.heatmaps()[0].ravel(), gpu.heatmaps()[0].ravel()
        corr = float(np.corrcoef(a, b)[0, 1])
        assert corr > 0.99, f"{method}: correlation of CPU and GPU heatmaps is {corr:.4f}"
    assert_untouched(gpu_model, before)


def test_repeated_cuda_explanations_are_identical(exact_float32: None) -> None:
    """The kept capture (second call) gives the same maps as a fresh forward pass."""
    _cpu_model, gpu_model = pair("efficientnet_lite0")
    image = explain.load_image(CAT)
    gpu_model.clear_cache()
    first = explain.explain(gpu_model, image, method="gradcam++")
    second = explain.explain(gpu_model, image, method="gradcam++")
    assert torch.allclose(first.maps, second.maps, rtol=1e-6, atol=1e-7)


def test_cuda_out_of_memory_falls_back_to_the_cpu(monkeypatch: pytest.MonkeyPatch, exact_float32: None) -> None:
    """A real CUDA model whose capture runs out of memory once: computed on a CPU copy instead."""
    cpu_model, gpu_model = pair("efficientnet_lite0")
    before = snapshot(gpu_model)
    image = explain.load_image(CAT)
    calls = oom_once(monkeypatch, gpu_model)
    r = explain.explain(gpu_model, image, method="gradcam")
    assert calls == ["oom"], "the fallback must not retry on the GPU"
    assert any("GPU ran out of memory" in n for n in r.notices), r.notices
    expected = explain.explain(cpu_model, image, method="gradcam")
    assert r.targets == expected.targets
    assert_maps_close(expected.maps, r.maps, "fallback gradcam")
    monkeypatch.undo()
    assert_untouched(gpu_model, before)
    # And the GPU is used again on the next call.
    again = explain.explain(gpu_model, image, method="gradcam")
    assert not again.notices
