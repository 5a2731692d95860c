"""Print the README's course figures: digits_lenet on the held-out split in both polarities at
8×8, 28×28 and 64×64, and the lesson's LeNet (trained here for seconds) against its own run_gradcam.

    python scripts/course_figures.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import explain  # noqa: E402
from course_helpers import lightning_checkpoint, mnist_style_digits, render, run_gradcam, trained_lesson_lenet  # noqa: E402
from explain.zoo.lenet import digits_dataset, split_indices  # noqa: E402
from torchvision.transforms.functional import to_tensor  # noqa: E402


def accuracy(m: explain.Model, size: int, light_on_dark: bool, polarity: str) -> float:
    images, labels = digits_dataset(dark_on_light=not light_on_dark)
    _, test = split_indices(labels)
    x = torch.cat([m.view_and_tensor(render(images[i], size).convert("RGB"), polarity=polarity)[1] for i in test])
    return float((m.predict(x).argmax(1).numpy() == labels[test]).mean())


def main() -> None:
    torch.set_num_threads(1)
    m = explain.load_model("digits_lenet")
    print("| drawn | size | automatic reading | read as dark on light (before) |")
    print("|---|---|---|---|")
    for light in (False, True):
        for size in (8, 28, 64):
            auto = accuracy(m, size, light, "auto")
            before = accuracy(m, size, light, "dark_on_light")
            print(f"| {'light on dark' if light else 'dark on light'} | {size}×{size} | {100 * auto:.1f}% | {100 * before:.1f}% |")
    net, acc = trained_lesson_lenet()
    lenet = explain.build_custom("mnist_lenet", explain.read_state_dict(lightning_checkpoint(net), "epoch=5.ckpt"))
    images, labels = mnist_style_digits()
    _, test = split_indices(labels)
    worst = 0.0
    for i in test[:100]:
        r = explain.explain(lenet, images[i].convert("RGB"), targets=[int(labels[i])], layer="conv.4")
        want = run_gradcam(net, to_tensor(images[i])[None], int(labels[i]), "conv.4")
        worst = max(worst, float((r.maps[0] - want).abs().max() / max(float(want.abs().max()), 1e-12)))
    print(f"mnist_lenet (test accuracy {100 * acc:.1f}%): Grad-CAM at conv.4 vs the lesson's run_gradcam on "
          f"100 held-out digits: largest difference {worst:.1e} of the map's maximum")


if __name__ == "__main__":
    main()
