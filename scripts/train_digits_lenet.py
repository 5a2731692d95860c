"""Train ``digits_lenet`` and write its weights and the digit sample pictures.

Usage (from the repository root, CPU only, one thread, about 65 s)::

    python scripts/train_digits_lenet.py

Deterministic: fixed seeds, one CPU thread, ``torch.use_deterministic_algorithms(True)``; the same
machine reproduces the same file byte for byte (another CPU may differ in the last bits).

Data: scikit-learn's handwritten digits (1797 8×8 images, values 0..16), the fixed 80/20
stratified split of :func:`explain.zoo.lenet.split_indices`. Each 8×8 image is rendered as an
8-bit dark-on-light PIL picture (:func:`explain.zoo.lenet.digits_dataset`) and sent through
:func:`explain.zoo.lenet.digits_to_tensor` — the very function the dashboard uses on a user's
picture (greyscale, bilinear resize to 32×32, ``[0, 1]``, invert, normalise). Training adds random
affine augmentation (shift, rotation, zoom, aspect, shear), stroke thinning/thickening and contrast
jitter so that hand drawings uploaded by users, which are rarely centred, sized or stroked like the
NIST bitmaps, still work.

Outputs:

* ``explain/weights/digits_lenet.safetensors`` — float32 weights and a JSON metadata header
  (categories, mean, std, input size, inversion, test accuracy, ...);
* ``assets/samples/digit_0.png``, ``digit_3.png``, ``digit_7.png`` — digits from the TEST split
  (never trained on), 128×128 RGB, dark ink on white.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from explain.zoo.lenet import (
    DIGITS_INPUT_SIZE,
    METADATA_KEY,
    WEIGHTS_PATH,
    LeNet,
    digits_dataset,
    digits_to_tensor,
    split_indices,
)

SEED = 0
EPOCHS = 60
BATCH_SIZE = 64
LR = 3e-3
WEIGHT_DECAY = 1e-4
INVERT = True  # users' pictures are dark on light; the model sees light strokes on dark
SAMPLE_DIGITS = (0, 3, 7)
SAMPLE_SIZE = 128
SAMPLES_DIR = ROOT / "assets" / "samples"

# Augmentation ranges (on the 32×32 image). The scikit-learn bitmaps fill their box with thick,
# soft strokes; users' drawings are often smaller, narrower, off-centre and drawn with a thinner pen.
MAX_ROTATION_DEG = 15.0
SCALE_RANGE = (0.6, 1.1)  # zoom out more than in: drawings rarely fill the frame
ASPECT_RANGE = (0.65, 1.1)  # horizontal / vertical scale: narrower digits
MAX_SHIFT_PX = (4.0, 3.0)  # x, y
MAX_SHEAR = 0.2
THRESHOLD_RANGE = (0.0, 0.6)  # cut the soft strokes at a random level: thinner, sharper strokes
DILATE_PROB = 0.25  # a 3×3 dilation: thicker strokes
CONTRAST_RANGE = (0.7, 1.3)


def _set_determinism() -> None:
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def _raw_preprocess() -> dict:
    """The model's preprocessing without normalisation (mean 0, std 1)."""
    return {
        "input_size": DIGITS_INPUT_SIZE,
        "mean": [0.0],
        "std": [1.0],
        "in_channels": 1,
        "interpolation": "bilinear",
        "invert": INVERT,
    }


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random warp and stroke-width change per image of ``x`` ([N, 1, H, W], [0, 1], background 0)."""
    n, _, h, _ = x.shape
    u = lambda lo, hi: torch.empty(n).uniform_(lo, hi, generator=gen)
    angle = u(-MAX_ROTATION_DEG, MAX_ROTATION_DEG) * (math.pi / 180.0)
    scale = u(*SCALE_RANGE)
    aspect = u(*ASPECT_RANGE)
    shear = u(-MAX_SHEAR, MAX_SHEAR)
    shift = u(-MAX_SHIFT_PX[0], MAX_SHIFT_PX[0]), u(-MAX_SHIFT_PX[1], MAX_SHIFT_PX[1])
    cos, sin = torch.cos(angle), torch.sin(angle)
    sx, sy = scale * aspect, scale
    # affine_grid maps output coordinates to input coordinates: the inverse of the wanted warp,
    # so dividing by ``sx`` makes the digit ``sx`` times wider.
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos / sx
    theta[:, 0, 1] = (-sin + shear) / sx
    theta[:, 1, 0] = sin / sy
    theta[:, 1, 1] = cos / sy
    theta[:, 0, 2] = shift[0] * 2.0 / h
    theta[:, 1, 2] = shift[1] * 2.0 / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    cut = u(*THRESHOLD_RANGE).view(n, 1, 1, 1)
    out = ((out - cut) / (1.0 - cut)).clamp(0.0, 1.0)
    dilate = (u(0.0, 1.0) < DILATE_PROB).view(n, 1, 1, 1)
    out = torch.where(dilate, F.max_pool2d(out, 3, stride=1, padding=1), out)
    gain = u(*CONTRAST_RANGE).view(n, 1, 1, 1)
    return (out * gain).clamp_(0.0, 1.0)


@torch.no_grad()
def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


def train() -> tuple[torch.nn.Module, dict, float]:
    _set_determinism()
    t0 = time.perf_counter()
    images, labels = digits_dataset(dark_on_light=INVERT)
    train_idx, test_idx = split_indices(labels)
    raw = _raw_preprocess()
    x_all = torch.cat([digits_to_tensor(img, raw) for img in images])  # [N, 1, 32, 32] in [0, 1]
    y_all = torch.from_numpy(labels)
    x_train, y_train = x_all[train_idx], y_all[train_idx]
    x_test, y_test = x_all[test_idx], y_all[test_idx]

    mean = round(float(x_train.mean()), 6)
    std = round(float(x_train.std()), 6)
    preprocess = dict(raw, mean=[mean], std=[std])
    x_test_n = (x_test - mean) / std
    # The normalised test tensors are exactly what digits_to_tensor gives with the final constants.
    assert torch.allclose(x_test_n[:1], digits_to_tensor(images[int(test_idx[0])], preprocess), atol=1e-6)

    gen = torch.Generator().manual_seed(SEED)
    model = LeNet(num_classes=10, in_channels=1)
    opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = math.ceil(len(x_train) / BATCH_SIZE)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=LR, epochs=EPOCHS, steps_per_epoch=steps_per_epoch, pct_start=0.2
    )
    for epoch in range(EPOCHS):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        total = 0.0
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            xb = (_augment(x_train[batch], gen) - mean) / std
            loss = F.cross_entropy(model(xb), y_train[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(batch)
        if epoch % 5 == 4 or epoch == EPOCHS - 1:
            acc = _accuracy(model, x_test_n, y_test)
            print(f"epoch {epoch + 1:2d}  loss {total / len(x_train):.4f}  test acc {acc:.4f}", flush=True)
    model.eval()
    test_acc = _accuracy(model, x_test_n, y_test)
    train_acc = _accuracy(model, (x_train - mean) / std, y_train)
    elapsed = time.perf_counter() - t0
    print(f"train accuracy {train_acc:.4f}  test accuracy {test_acc:.4f}  ({elapsed:.1f} s)")
    return model, preprocess, test_acc


def save_weights(model: torch.nn.Module, preprocess: dict, test_acc: float) -> None:
    from safetensors.torch import save_file

    meta = {
        "model": "digits_lenet",
        "architecture": "explain.zoo.lenet.LeNet",
        "categories": [str(i) for i in range(10)],
        "mean": preprocess["mean"],
        "std": preprocess["std"],
        "input_size": preprocess["input_size"],
        "in_channels": preprocess["in_channels"],
        "interpolation": preprocess["interpolation"],
        "invert": preprocess["invert"],
        "trained_by": "scripts/train_digits_lenet.py",
        "dataset": "sklearn.datasets.load_digits (UCI Optical Recognition of Handwritten Digits, test set)",
        "split": "80/20 stratified, sklearn train_test_split(random_state=0)",
        "test_accuracy": round(test_acc, 4),
        "seed": SEED,
        "epochs": EPOCHS,
    }
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    WEIGHTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    # One metadata entry only: safetensors writes the header's metadata from a hash map, so with
    # several entries their order (and the file's bytes) would change from run to run.
    save_file(state, str(WEIGHTS_PATH), metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})
    print(f"wrote {WEIGHTS_PATH.relative_to(ROOT)} ({WEIGHTS_PATH.stat().st_size} bytes)")


@torch.no_grad()
def write_samples(model: torch.nn.Module, preprocess: dict) -> None:
    """One PNG per digit in SAMPLE_DIGITS, from the TEST split (never trained on).

    The pick is the most typical test image of the digit (nearest to the mean training image of
    that digit) that the model gets right with p >= 0.99, tried on the PNG as written and read
    back, i.e. through the user's path. Each is the 8×8 digit as dark ink on white paper, upscaled
    bilinearly to 128×128, RGB.
    """
    from PIL import Image

    images, labels = digits_dataset(dark_on_light=True)
    train_idx, test_idx = split_indices(labels)
    pixels = np.stack([np.asarray(img, dtype=np.float32) for img in images])
    SAMPLES_DIR.mkdir(parents=True, exist_ok=True)
    model.eval()
    for digit in SAMPLE_DIGITS:
        typical = pixels[train_idx[labels[train_idx] == digit]].mean(axis=0)
        candidates = test_idx[labels[test_idx] == digit]
        distance = ((pixels[candidates] - typical) ** 2).sum(axis=(1, 2))
        path = SAMPLES_DIR / f"digit_{digit}.png"
        for i in candidates[np.argsort(distance, kind="stable")]:
            big = images[int(i)].resize((SAMPLE_SIZE, SAMPLE_SIZE), Image.Resampling.BILINEAR)
            big.convert("RGB").save(path, optimize=True)
            with Image.open(path) as again:
                p = float(model(digits_to_tensor(again, preprocess)).softmax(1)[0, digit])
            if p >= 0.99:
                print(f"wrote {path.relative_to(ROOT)} (sklearn digits index {int(i)}, p={p:.3f})")
                break
        else:
            raise RuntimeError(f"no test image of {digit} is classified with p >= 0.99")


def main() -> None:
    model, preprocess, test_acc = train()
    save_weights(model, preprocess, test_acc)
    write_samples(model, preprocess)


if __name__ == "__main__":
    main()
