"""Shared by the course tests: the MNIST lesson's LeNet trained for a few seconds on scikit-learn's
digits (28×28, light strokes on dark, as MNIST), saved the way PyTorch Lightning saves, and the
lesson's own hook-based ``run_gradcam``."""

from __future__ import annotations

import copy
import io
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.functional import to_tensor

from explain.zoo.lenet import digits_dataset, split_indices
from explain.zoo.mnist_lenet import MnistLeNet


def render(img: Image.Image, size: int) -> Image.Image:
    """An 8×8 digit drawn at ``size`` pixels (bilinear), as a student would scale it up."""
    return img if img.size == (size, size) else img.resize((size, size), Image.Resampling.BILINEAR)


@lru_cache(maxsize=1)
def mnist_style_digits() -> tuple[list[Image.Image], np.ndarray]:
    """scikit-learn's digits at 28×28, light strokes on dark (MNIST's way)."""
    images, labels = digits_dataset(dark_on_light=False)
    return [render(i, 28) for i in images], labels


@lru_cache(maxsize=1)
def trained_lesson_lenet() -> tuple[MnistLeNet, float]:
    """The lesson's LeNet trained on the training split (seconds on a CPU); its test accuracy."""
    torch.manual_seed(0)
    images, labels = mnist_style_digits()
    train, test = split_indices(labels)
    x = torch.stack([to_tensor(images[i]) for i in range(len(images))])  # ToTensor only, as the lesson
    y = torch.from_numpy(labels)
    net = MnistLeNet()
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    for _epoch in range(3):
        perm = torch.from_numpy(train)[torch.randperm(len(train))]
        for start in range(0, len(perm), 64):
            b = perm[start : start + 64]
            opt.zero_grad()
            F.cross_entropy(net(x[b]), y[b]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = float((net(x[torch.from_numpy(test)]).argmax(1) == y[torch.from_numpy(test)]).float().mean())
    net.opt_state = opt.state_dict()  # kept for the checkpoint
    return net, acc


def lightning_checkpoint(net: MnistLeNet, extra: dict | None = None) -> bytes:
    """The bytes of ``epoch=5.ckpt`` as PyTorch Lightning writes it for ``self.model = net``."""
    ckpt = {
        "epoch": 5, "global_step": 138, "pytorch-lightning_version": "2.4.0",
        "state_dict": {f"model.{k}": v for k, v in net.state_dict().items()},
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 6, "completed": 5}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": torch.tensor(0.12)}},
        "optimizer_states": [net.opt_state], "lr_schedulers": [],
        "hyper_parameters": {"lr": 0.003, "batch_size": 64, "num_classes": 10},
    }
    ckpt.update(extra or {})
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return buf.getvalue()


def run_gradcam(model: torch.nn.Module, img_tensor: torch.Tensor, target_class: int, layer_name: str) -> torch.Tensor:
    """The lesson's Grad-CAM, written out: hooks on the layer, backward from the class score, the
    channel weights are the averaged gradients, ReLU of the weighted sum. On a private copy."""
    model = copy.deepcopy(model)
    layer = dict(model.named_modules())[layer_name]
    activations, gradients = [], []
    h1 = layer.register_forward_hook(lambda m, i, o: activations.append(o))
    h2 = layer.register_full_backward_hook(lambda m, gi, go: gradients.append(go[0]))
    try:
        out = model(img_tensor)
        model.zero_grad()
        out[0, target_class].backward()
    finally:
        h1.remove()
        h2.remove()
    weights = gradients[0].mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activations[0]).sum(dim=1))[0]
    return cam.detach()
