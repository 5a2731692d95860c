"""Robust image loading: from whatever a user hands us to a plain 8-bit RGB ``PIL.Image``.

Users upload anything: phone photos with EXIF rotation, 16-bit scans, CMYK print files,
transparent logos, animated GIFs, truncated downloads, web pages saved as ``.png``, SVGs.
:func:`load_image` turns every one of those into either a fully decoded RGB image or an
:class:`~explain.errors.ImageLoadError` whose message is one readable sentence, so the dashboard
never has to show a traceback. The format is detected from the content, never from the name.
"""

from __future__ import annotations

import io
import os
import pathlib
import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageLoadError

__all__ = [
    "MAX_ASPECT_RATIO",
    "MAX_IMAGE_MB",
    "MIN_SIDE",
    "SUPPORTED_EXTENSIONS",
    "ImageSource",
    "load_image",
]

ImageSource = bytes | bytearray | memoryview | str | os.PathLike | BinaryIO

#: File extensions to offer in upload widgets. Loading itself sniffs the content, so this list
#: only steers users towards formats that are known to work well.
SUPPORTED_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")

#: Smallest accepted side in pixels: below this there is nothing for a CNN (or a heatmap) to show.
MIN_SIDE: int = 8

#: Largest accepted ratio between the long and the short side; beyond it the resize to a square
#: model input leaves a smear, and such files are almost always banners or mistakes.
MAX_ASPECT_RATIO: float = 50.0

#: Largest accepted picture file in megabytes (MiB). The app's server accepts bigger uploads (for
#: model weights), so this check is what limits pictures, whichever way they arrive.
MAX_IMAGE_MB: int = 20

_FORMATS_HINT = "a JPEG, PNG, WebP, BMP, GIF or TIFF file"

# EPS is decoded by shelling out to Ghostscript, which is both a security risk for uploads and
# usually absent; no photo a classifier should see comes as EPS.
_BLOCKED_FORMATS = frozenset({"EPS"})

# Magic numbers of formats we do decode, so that a file which starts like one but fails to open
# is reported as damaged rather than as "not an image".
_IMAGE_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
    (b"8BPS", "Photoshop (PSD)"),
    (b"\x00\x00\x01\x00", "ICO"),
)

_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")

_EXIF_ORIENTATION_TAG = 0x0112


def load_image(
    source: ImageSource,
    *,
    name: str | None = None,
    max_pixels: int = 40_000_000,
    max_bytes: int = MAX_IMAGE_MB * 2**20,
) -> Image.Image:
    """Load ``source`` as a fully decoded, upright, 8-bit RGB image.

    ``source`` may be raw bytes, a filesystem path, or a binary file-like object such as
    Streamlit's ``UploadedFile`` (``getvalue()`` is preferred over ``read()`` when present).
    ``name`` is used in error messages; it defaults to the path's or file object's name.

    The returned image is detached from any file, has EXIF orientation applied, and has
    ``info["cam_explorer_frames"]`` (number of frames in the source; only the first is used),
    ``info["cam_explorer_format"]`` (detected format, e.g. ``"PNG"``) and
    ``info["cam_explorer_source_mode"]`` (the PIL mode before conversion).

    A file larger than ``max_bytes`` (default :data:`MAX_IMAGE_MB`) is refused before decoding.
    Transparent pixels are composited onto white; 16-bit, 32-bit and float images are scaled to
    8 bits by their value range. Raises :class:`~explain.errors.ImageLoadError` for anything that
    is not a usable image (empty, unrecognised, corrupt, too large, too small, too elongated);
    no other exception escapes for byte or file input. Raises ``TypeError`` only when
    ``source`` is not one of the accepted kinds at all, which is a programming error.
    """
    data, name = _read_source(source, name)
    label = _label(name)
    if len(data) > max_bytes:
        raise ImageLoadError(
            f"{label} is {len(data) / 2**20:.1f} MB, more than the {max_bytes / 2**20:g} MB limit for pictures; "
            "please use a smaller or more compressed copy (a JPEG of a few MB is plenty)."
        )
    try:
        return _decode(data, label, max_pixels)
    except ImageLoadError:
        raise
    except MemoryError:
        raise ImageLoadError(
            f"{label} needs more memory to decode than is available; please upload a smaller image."
        ) from None
    except Exception as exc:  # the contract is that only ImageLoadError escapes
        raise ImageLoadError(
            f"Could not read {_lower_first(label)} ({_describe(exc)}); "
            f"please re-save it as {_FORMATS_HINT} and try again."
        ) from exc


def _read_source(source: ImageSource, name: str | None) -> tuple[bytes, str | None]:
    """Return the raw bytes of ``source`` and the best available display name."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), name

    if isinstance(source, (str, os.PathLike)):
        path = pathlib.Path(source)
        name = name or path.name
        label = _label(name)
        try:
            return path.read_bytes(), name
        except FileNotFoundError:
            raise ImageLoadError(f"{label} was not found; please check the path.") from None
        except IsADirectoryError:
            raise ImageLoadError(f"{label} is a folder, not an image file; please pick a file.") from None
        except PermissionError:
            raise ImageLoadError(
                f"{label} cannot be opened (permission denied); please check its permissions."
            ) from None
        except OSError as exc:
            raise ImageLoadError(f"{label} could not be read ({_describe(exc)}); please try again.") from exc

    if hasattr(source, "getvalue") or hasattr(source, "read"):
        if name is None:
            raw_name = getattr(source, "name", None)
            # Real file objects carry the full path (or an int fd); the base name reads better.
            if isinstance(raw_name, str) and raw_name:
                name = os.path.basename(raw_name) or raw_name
        label = _label(name)
        try:
            data = source.getvalue() if hasattr(source, "getvalue") else source.read()
        except Exception as exc:  # any failing stream is the user's upload failing
            raise ImageLoadError(
                f"{label} could not be read ({_describe(exc)}); please try uploading it again."
            ) from exc
        if isinstance(data, str):
            raise ImageLoadError(
                f"{label} was opened as text rather than binary data; please open it in binary mode ('rb')."
            )
        if data is None:
            data = b""
        try:
            return bytes(data), name
        except Exception as exc:
            raise ImageLoadError(
                f"{label} could not be read ({_describe(exc)}); please try uploading it again."
            ) from exc

    raise TypeError(f"load_image expects bytes, a path or a binary file object, not {type(source).__name__}")


def _decode(data: bytes, label: str, max_pixels: int) -> Image.Image:
    """Decode ``data`` (non-empty or not) into the final RGB image, or raise ImageLoadError."""
    if len(data) == 0:
        raise ImageLoadError(f"{label} is empty (0 bytes); please choose a file that contains an image.")

    allowed = [fmt for fmt in _registered_formats() if fmt not in _BLOCKED_FORMATS]

    # Only inside this block is PIL's bomb warning an error; PIL's global MAX_IMAGE_PIXELS stays as
    # it is. (catch_warnings swaps the process-wide filter list, so a thread loading at the same
    # moment may briefly see the same filter; that only affects this one PIL warning.)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=allowed)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _too_large(label, None, max_pixels) from None
        except UnidentifiedImageError:
            raise ImageLoadError(_unidentified_message(data, label)) from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError) as exc:
            raise _corrupt(label, _sniff_format(data), exc) from exc

        fmt = img.format
        width, height = img.size
        # Checked from the header alone, before a single pixel is decoded.
        if width * height > max_pixels:
            raise _too_large(label, (width, height), max_pixels)
        _check_shape(label, width, height)

        n_frames = _frame_count(img, label)
        try:
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _too_large(label, (width, height), max_pixels) from None
        except MemoryError:
            raise
        except Exception as exc:  # decoders raise OSError, SyntaxError, struct.error, ...
            raise _corrupt(label, fmt, exc) from exc

    source_mode = img.mode
    upright = _apply_exif_orientation(img)
    rgb = _to_rgb(upright, label)
    img.close()

    _check_shape(label, *rgb.size)
    rgb.info = {
        "cam_explorer_frames": n_frames,
        "cam_explorer_format": fmt,
        "cam_explorer_source_mode": source_mode,
    }
    return rgb


def _registered_formats() -> list[str]:
    Image.init()
    return list(Image.OPEN)


def _frame_count(img: Image.Image, label: str) -> int:
    """Number of frames, rewound to the first; a broken tail of an animation is not fatal."""
    try:
        n_frames = int(getattr(img, "n_frames", 1))
    except Exception:  # noqa: BLE001 - counting walks the whole file and may trip on later frames
        n_frames = 1
    try:
        img.seek(0)
    except Exception as exc:
        raise _corrupt(label, img.format, exc) from exc
    return max(n_frames, 1)


def _apply_exif_orientation(img: Image.Image) -> Image.Image:
    """Return a detached, upright copy of the current frame."""
    try:
        upright = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - broken EXIF must not make an otherwise fine photo unusable
        upright = None
    return upright if upright is not None else img.copy()


def _to_rgb(img: Image.Image, label: str) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, compositing transparency onto white."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I") or mode == "F":
        return _high_depth_to_l(img).convert("RGB")
    try:
        if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
            with warnings.catch_warnings():
                # PIL nags that palette transparency "should be converted to RGBA": we are doing so.
                warnings.simplefilter("ignore", UserWarning)
                rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageLoadError(
            f"{label} uses a colour format ({mode}) that cannot be converted to RGB; "
            f"please re-save it as an 8-bit RGB {_FORMATS_HINT}."
        ) from exc


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """Scale a 16-bit, 32-bit integer or float single-channel image to 8-bit greyscale."""
    arr = np.asarray(img)
    if arr.ndim != 2:
        arr = arr.reshape(img.size[1], img.size[0])
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 2:
        # 65535 / 257 == 255 exactly, so full scale maps to full scale without clipping.
        out = (arr.astype(np.float32) / 257.0).round()
    elif arr.dtype.kind in "iu":
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo >= 0 and hi <= 65535:
            # Mode "I" almost always carries 16-bit data (PNG, TIFF, PGM); keep its brightness.
            out = (arr.astype(np.float32) / 257.0).round()
        else:
            out = _stretch(arr.astype(np.float64))
    else:
        values = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if lo >= 0.0 and hi <= 1.0:
            out = (values * 255.0).round()
        else:
            out = _stretch(values)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def _stretch(values: np.ndarray) -> np.ndarray:
    """Map the min..max of ``values`` linearly onto 0..255 (a constant image becomes black)."""
    lo = float(values.min())
    hi = float(values.max())
    if hi <= lo:
        return np.zeros_like(values)
    return ((values - lo) * (255.0 / (hi - lo))).round()


def _check_shape(label: str, width: int, height: int) -> None:
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageLoadError(
            f"{label} is too small ({width}x{height} pixels); both sides must be at least "
            f"{MIN_SIDE} pixels, so please upload a larger image."
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageLoadError(
            f"{label} is too elongated ({width}x{height} pixels, aspect ratio over "
            f"{MAX_ASPECT_RATIO:g}:1); please crop it to a more regular shape."
        )


def _too_large(label: str, size: tuple[int, int] | None, max_pixels: int) -> ImageLoadError:
    limit = f"{max_pixels / 1e6:g} megapixels"
    if size is None:
        detail = f"declares more pixels than the {limit} limit"
    else:
        w, h = size
        detail = f"is too large ({w}x{h} = {w * h / 1e6:.1f} megapixels, limit {limit})"
    return ImageLoadError(f"{label} {detail}, which could exhaust memory; please downscale it before uploading.")


def _corrupt(label: str, fmt: str | None, exc: BaseException) -> ImageLoadError:
    start = f"{label} looks like a {fmt} file but is" if fmt else f"{label} is"
    return ImageLoadError(f"{start} truncated or corrupt ({_describe(exc)}); please re-download or re-export it.")


def _sniff_format(data: bytes) -> str | None:
    for magic, fmt in _IMAGE_MAGIC:
        if data.startswith(magic):
            return fmt
    return None


def _unidentified_message(data: bytes, label: str) -> str:
    """Say what the bytes look like when no image decoder accepted them."""
    head = data[:4096]
    fmt = _sniff_format(head)
    if fmt is not None:
        return f"{label} starts like a {fmt} file but is truncated or corrupt; please re-download or re-export it."

    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return (
            f"{label} is a HEIC/HEIF photo, which is not supported; "
            "please convert it to JPEG or PNG (or set your phone camera to 'Most Compatible')."
        )
    if head.startswith(b"%PDF"):
        return f"{label} is a PDF document, not an image; please export the page as PNG or JPEG."

    text = _as_text(head)
    if text is not None:
        lowered = text.lstrip().lower()
        if "<svg" in lowered:
            return (
                f"{label} is an SVG vector graphic, which is not supported; "
                "please convert it to PNG and upload that instead."
            )
        if lowered.startswith(("<!doctype html", "<html", "<head", "<body")) or "<html" in lowered:
            return (
                f"{label} is a web page (HTML), not an image; "
                "please save the picture itself (right-click, 'Save image as') and upload that."
            )
        return f"{label} contains text, not image data; please upload {_FORMATS_HINT}."
    return f"{label} is not in a recognised image format; please upload {_FORMATS_HINT}."


def _as_text(head: bytes) -> str | None:
    """Decode ``head`` as text if it plausibly is text, else None."""
    for bom, codec in ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be")):
        if head.startswith(bom):
            return head[len(bom) :].decode(codec, errors="ignore")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the 4 KiB boundary is still text.
        if exc.start < len(head) - 4:
            return None
        text = head[: exc.start].decode("utf-8")
    if not text:
        return None
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return text if printable / len(text) > 0.95 else None


def _label(name: str | None) -> str:
    if not name:
        return "The image"
    # Upload names are user-controlled: keep the message on one line and of sane length.
    clean = " ".join(str(name).split())
    if len(clean) > 80:
        clean = clean[:38] + "..." + clean[-39:]
    return f"The file '{clean}'"


def _lower_first(label: str) -> str:
    return label[:1].lower() + label[1:]


def _describe(exc: BaseException) -> str:
    """A short, single-line description of an exception, safe to show to a user."""
    text = " ".join(str(exc).split())
    if len(text) > 120:
        text = text[:117] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
