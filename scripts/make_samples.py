"""Write the sample gallery in ``assets/samples/`` from images that ship inside installed packages.

Nothing is downloaded: scikit-image and scikit-learn bundle these photos in their wheels. The
output is deterministic for a given Pillow/libjpeg, so re-running it leaves the committed files
unchanged (or changes them only when the encoder does).

Usage: ``python scripts/make_samples.py [--out DIR]``
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "assets" / "samples"
JPEG_QUALITY = 92
PAIR_HEIGHT = 300


def _skimage(name: str) -> Image.Image:
    from skimage import data

    return Image.fromarray(np.asarray(getattr(data, name)())).convert("RGB")


def _sklearn(name: str) -> Image.Image:
    from sklearn.datasets import load_sample_image

    return Image.fromarray(np.asarray(load_sample_image(f"{name}.jpg"))).convert("RGB")


def _to_height(img: Image.Image, height: int) -> Image.Image:
    if img.height == height:
        return img
    width = round(img.width * height / img.height)
    return img.resize((width, height), Image.Resampling.LANCZOS)


def side_by_side(left: Image.Image, right: Image.Image, height: int = PAIR_HEIGHT) -> Image.Image:
    """Paste ``left`` and ``right`` next to each other, both scaled to ``height`` (aspect kept)."""
    left, right = _to_height(left, height), _to_height(right, height)
    canvas = Image.new("RGB", (left.width + right.width, height))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width, 0))
    return canvas


def build_samples() -> dict[str, Image.Image]:
    """File name -> image, for every sample in the gallery."""
    cat = _skimage("chelsea")
    coffee = _skimage("coffee")
    return {
        "cat.jpg": cat,
        "coffee.jpg": coffee,
        "rocket.jpg": _skimage("rocket"),
        "astronaut.jpg": _skimage("astronaut"),
        "china.jpg": _sklearn("china"),
        "flower.jpg": _sklearn("flower"),
        # Two classes in one picture: the classic test of whether a CAM follows the chosen class.
        "cat_and_coffee.jpg": side_by_side(cat, coffee),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for filename, img in build_samples().items():
        path = args.out / filename
        img.save(path, "JPEG", quality=JPEG_QUALITY, optimize=True)
        print(
            f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}: {img.width}x{img.height}, "
            f"{path.stat().st_size // 1024} KiB"
        )


if __name__ == "__main__":
    main()
