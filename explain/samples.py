"""The bundled sample gallery (``assets/samples/``), found relative to the repository."""

from __future__ import annotations

import pathlib

__all__ = ["SAMPLES_DIR", "SAMPLE_EXTENSIONS", "list_samples", "sample_kind", "sample_title"]

SAMPLES_DIR: pathlib.Path = pathlib.Path(__file__).resolve().parent.parent / "assets" / "samples"

#: Suffixes counted as sample images; README.md and anything else in the folder are skipped.
SAMPLE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


#: File-name prefix of the greyscale digit samples (for digit models); every other sample is a photo.
DIGIT_PREFIX = "digit_"


def sample_kind(name: str) -> str:
    """``"digit"`` for the bundled greyscale digit pictures, ``"photo"`` for the others."""
    return "digit" if pathlib.Path(name).name.startswith(DIGIT_PREFIX) else "photo"


def sample_title(path: pathlib.Path | str) -> str:
    """Human title from a file name: ``cat_and_coffee.jpg`` -> ``"Cat and coffee"``."""
    words = pathlib.Path(path).stem.replace("-", " ").replace("_", " ").split()
    text = " ".join(words)
    return text[:1].upper() + text[1:] if text else pathlib.Path(path).name


def list_samples(directory: pathlib.Path | None = None) -> list[tuple[str, pathlib.Path]]:
    """``(title, path)`` for every image file in the gallery, sorted by file name.

    Returns an empty list when the folder is missing (e.g. a wheel installed without assets),
    so a UI can simply hide the gallery.
    """
    folder = SAMPLES_DIR if directory is None else pathlib.Path(directory)
    if not folder.is_dir():
        return []
    files = sorted(
        (
            p
            for p in folder.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SAMPLE_EXTENSIONS
        ),
        key=lambda p: p.name.lower(),
    )
    return [(sample_title(p), p) for p in files]
