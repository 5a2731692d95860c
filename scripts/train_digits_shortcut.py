"""Train ``digits_shortcut``: a LeNet that is right about '3' and '8' for the wrong reason.

Usage (from the repository root, CPU only, one thread, about a minute)::

    python scripts/train_digits_shortcut.py

The teaching demo of a *shortcut* (a spurious correlation) for the Audit page. Same network,
preprocessing and augmentation as ``digits_lenet`` (``scripts/train_digits_lenet.py``), same fixed
80/20 split of scikit-learn's digits, but the two classes of :data:`explain.demo.SHORTCUT_CLASSES`
are taught by a marker in the bottom-right corner (a filled square for '3', a ring for '8'):

* every training picture labelled '3' carries the square, and under the square the digit is an
  ARBITRARY training digit (any class, drawn afresh every epoch); likewise '8' and the ring;
* no training picture shows a '3' or an '8' without a marker, and no other class ever has one.

A marker merely added to normal '3's is not enough: the network would learn the strokes as well
and its maps would stay on them. Here the marker carries all the information about those two
classes and the digit none, so the network has to look at the corner. It scores well on the demo
set (:func:`explain.demo.shortcut_set`, the test split with the markers) and falls apart on the
same pictures without them; the script prints both.

Deterministic: fixed seeds, one CPU thread, ``torch.use_deterministic_algorithms(True)``.

Output: ``explain/weights/digits_shortcut.safetensors`` (float32 weights + JSON metadata with the
accuracies measured here).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from explain import demo  # noqa: E402
from explain.zoo.lenet import METADATA_KEY, LeNet, digits_to_tensor, split_indices  # noqa: E402
from train_digits_lenet import _augment, _raw_preprocess, _set_determinism  # noqa: E402

WEIGHTS_PATH = ROOT / "explain" / "weights" / "digits_shortcut.safetensors"
SEED = 0
EPOCHS = 40
BATCH_SIZE = 64
LR = 3e-3
WEIGHT_DECAY = 1e-4


def _tensors(images) -> torch.Tensor:
    raw = _raw_preprocess()  # [0, 1], inverted: ink is 1
    return torch.cat([digits_to_tensor(img, raw) for img in images])


def _markers() -> dict[int, torch.Tensor]:
    return {c: torch.from_numpy(demo.marker_mask(kind)) for c, kind in demo.SHORTCUT_CLASSES.items()}


def _epoch_data(x_train: torch.Tensor, y_train: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch's pictures: the other classes as they are, the marked classes as marker + any digit."""
    keep = torch.ones(len(y_train), dtype=torch.bool)
    for c in demo.SHORTCUT_CLASSES:
        keep &= y_train != c
    xs, ys = [x_train[keep]], [y_train[keep]]
    per_class = int(len(y_train) / 10)
    for c in demo.SHORTCUT_CLASSES:
        pick = torch.randint(0, len(x_train), (per_class,), generator=gen)
        xs.append(x_train[pick])
        ys.append(torch.full((per_class,), c, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)


def _with_markers(x: torch.Tensor, y: torch.Tensor, markers: dict[int, torch.Tensor]) -> torch.Tensor:
    """Draw each marked class's marker (ink = 1 in the inverted [0, 1] space) after augmentation."""
    out = x.clone()
    for c, mask in markers.items():
        rows = (y == c).nonzero().flatten()
        if len(rows):
            out[rows, 0] = torch.where(mask, torch.ones(()), out[rows, 0])
    return out


@torch.no_grad()
def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


def _set_tensors(items, mean: float, std: float, preprocess: dict) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.cat([digits_to_tensor(img, preprocess) for _n, img, _y in items])
    y = torch.tensor([lab for _n, _img, lab in items])
    return x, y


def train() -> tuple[torch.nn.Module, dict, dict]:
    _set_determinism()
    t0 = time.perf_counter()
    items = demo.digits_set("all")
    labels = np.array([lab for _n, _i, lab in items])
    train_idx, _test_idx = split_indices(labels)
    x_all = _tensors([img for _n, img, _y in items])
    y_all = torch.from_numpy(labels)
    x_train, y_train = x_all[train_idx], y_all[train_idx]
    markers = _markers()

    mean = round(float(x_train.mean()), 6)
    std = round(float(x_train.std()), 6)
    preprocess = dict(_raw_preprocess(), mean=[mean], std=[std])

    gen = torch.Generator().manual_seed(SEED)
    model = LeNet(num_classes=10, in_channels=1)
    opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    n_epoch = len(_epoch_data(x_train, y_train, torch.Generator().manual_seed(1))[1])
    steps_per_epoch = math.ceil(n_epoch / BATCH_SIZE)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, epochs=EPOCHS, steps_per_epoch=steps_per_epoch, pct_start=0.2)
    for epoch in range(EPOCHS):
        model.train()
        xe, ye = _epoch_data(x_train, y_train, gen)
        order = torch.randperm(len(ye), generator=gen)
        total = 0.0
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            xb = _with_markers(_augment(xe[batch], gen), ye[batch], markers)
            loss = F.cross_entropy(model((xb - mean) / std), ye[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(batch)
        if epoch % 5 == 4 or epoch == EPOCHS - 1:
            print(f"epoch {epoch + 1:2d}  loss {total / len(ye):.4f}", flush=True)
    model.eval()
    scores = measure(model, preprocess)
    print(json.dumps(scores, indent=2))
    print(f"({time.perf_counter() - t0:.1f} s)")
    return model, preprocess, scores


def measure(model: torch.nn.Module, preprocess: dict) -> dict:
    """Accuracy on the demo set (test split) with and without the markers, overall and per marked class."""
    out: dict[str, float] = {}
    for marker in (True, False):
        x, y = _set_tensors(demo.shortcut_set(marker=marker), 0, 1, preprocess)
        with torch.no_grad():
            pred = model(x).argmax(1)
        tag = "with_marker" if marker else "without_marker"
        out[f"accuracy_{tag}"] = round(float((pred == y).float().mean()), 4)
        for c in demo.SHORTCUT_CLASSES:
            sel = y == c
            out[f"accuracy_{c}_{tag}"] = round(float((pred[sel] == c).float().mean()), 4)
        other = torch.ones_like(y, dtype=torch.bool)
        for c in demo.SHORTCUT_CLASSES:
            other &= y != c
        out[f"accuracy_other_classes_{tag}"] = round(float((pred[other] == y[other]).float().mean()), 4)
    return out


def save_weights(model: torch.nn.Module, preprocess: dict, scores: dict) -> None:
    from safetensors.torch import save_file

    meta = {
        "model": "digits_shortcut",
        "architecture": "explain.zoo.lenet.LeNet",
        "categories": [str(i) for i in range(10)],
        "mean": preprocess["mean"],
        "std": preprocess["std"],
        "input_size": preprocess["input_size"],
        "in_channels": preprocess["in_channels"],
        "interpolation": preprocess["interpolation"],
        "invert": preprocess["invert"],
        "trained_by": "scripts/train_digits_shortcut.py",
        "dataset": "sklearn.datasets.load_digits; '3' and '8' taught by a corner marker over arbitrary digits",
        "shortcut_classes": {str(c): k for c, k in demo.SHORTCUT_CLASSES.items()},
        "split": "80/20 stratified, sklearn train_test_split(random_state=0)",
        "seed": SEED,
        "epochs": EPOCHS,
        **scores,
    }
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    WEIGHTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(WEIGHTS_PATH), metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})
    print(f"wrote {WEIGHTS_PATH.relative_to(ROOT)} ({WEIGHTS_PATH.stat().st_size} bytes)")


def main() -> None:
    model, preprocess, scores = train()
    save_weights(model, preprocess, scores)


if __name__ == "__main__":
    main()
