"""A corpus of awkward and broken image files, built in code so it needs no fixtures or network.

Each :class:`Case` is either ``"ok"`` (``load_image`` must return an RGB image, and ``check``
verifies size/content) or ``"error"`` (``load_image`` must raise ``ImageLoadError``, whose
message must match ``match`` when given). Everything is deterministic: the random bytes come
from fixed seeds and PIL's encoders are deterministic.
"""

from __future__ import annotations

import io
import pathlib
import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

Check = Callable[[Image.Image], None]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
PHOTO_TOP_RIGHT = (255, 0, 143)  # photo_like() at (63, 0): full red, no green, (63 + 0) / 112 blue


@dataclass(frozen=True)
class Case:
    """One input file and what ``load_image`` must do with it."""

    name: str
    filename: str
    data: bytes
    expect: str  # "ok" or "error"
    check: Check | None = None
    match: str | None = None  # regex the error message must contain (case-insensitive)


# ---------------------------------------------------------------------------------------------
# Helpers to build files
# ---------------------------------------------------------------------------------------------


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def png_chunk(kind: bytes, payload: bytes, *, crc: int | None = None) -> bytes:
    """A PNG chunk with a correct CRC (or the given, possibly wrong, one)."""
    if crc is None:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_ihdr(width: int, height: int, *, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    return struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)


def bomb_png(width: int, height: int) -> bytes:
    """A ~60 byte PNG whose header declares ``width`` x ``height`` RGB pixels."""
    idat = zlib.compress(b"\x00" * 16)
    return (
        PNG_SIGNATURE + png_chunk(b"IHDR", png_ihdr(width, height)) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


def gradient(width: int, height: int, dtype=np.uint8, top: float = 255) -> np.ndarray:
    """Horizontal ramp from 0 (left) to ``top`` (right)."""
    row = np.linspace(0, top, width)
    return np.tile(row, (height, 1)).astype(dtype)


def marked_landscape(width: int = 40, height: int = 20, marker: int = 8) -> Image.Image:
    """White image with a red square in the stored top-left corner."""
    img = Image.new("RGB", (width, height), WHITE)
    img.paste(RED, (0, 0, marker, marker))
    return img


def jpeg_with_orientation(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=95, exif=exif)


def photo_like(width: int = 64, height: int = 48) -> Image.Image:
    """A smooth colourful picture (compresses realistically, unlike flat colour)."""
    y, x = np.mgrid[0:height, 0:width]
    arr = np.stack(
        [x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) * 255 // (width + height)],
        axis=-1,
    ).astype(np.uint8)
    return Image.fromarray(arr)


# ---------------------------------------------------------------------------------------------
# Checks (each raises AssertionError with a useful message)
# ---------------------------------------------------------------------------------------------


def pixel_close(img: Image.Image, xy: tuple[int, int], expected: tuple[int, int, int], tol: int = 40) -> None:
    got = img.getpixel(xy)
    assert all(abs(int(g) - e) <= tol for g, e in zip(got, expected)), f"pixel {xy} is {got}, expected about {expected}"


def size_is(width: int, height: int) -> Check:
    def check(img: Image.Image) -> None:
        assert img.size == (width, height), f"size {img.size}, expected {(width, height)}"

    return check


def all_of(*checks: Check) -> Check:
    def check(img: Image.Image) -> None:
        for c in checks:
            c(img)

    return check


def uniform(colour: tuple[int, int, int], tol: int = 40) -> Check:
    def check(img: Image.Image) -> None:
        pixel_close(img, (img.width // 2, img.height // 2), colour, tol)
        pixel_close(img, (0, 0), colour, tol)

    return check


def frames(n: int) -> Check:
    def check(img: Image.Image) -> None:
        assert img.info.get("cam_explorer_frames") == n, (
            f"cam_explorer_frames={img.info.get('cam_explorer_frames')}, expected {n}"
        )

    return check


def is_gradient(min_span: int = 200) -> Check:
    """Left-to-right ramp survived: monotonic, not clipped to one value, spans most of 0..255."""

    def check(img: Image.Image) -> None:
        row = np.asarray(img)[img.height // 2, :, 0].astype(int)
        assert np.all(np.diff(row) >= -2), f"not monotonic: {row.tolist()}"
        assert row[-1] - row[0] >= min_span, f"span {row[0]}..{row[-1]} too small (crushed or clipped)"
        assert len(np.unique(row)) > 16, "gradient collapsed into a few levels"
        mid = row[len(row) // 2]
        assert 90 <= mid <= 165, f"middle of the ramp is {mid}: scaling is not linear"

    return check


def grey(img: Image.Image) -> None:
    arr = np.asarray(img).astype(int)
    assert np.abs(arr[..., 0] - arr[..., 1]).max() <= 2 and np.abs(arr[..., 1] - arr[..., 2]).max() <= 2


def marker_at(corner: str, marker: int = 8) -> Check:
    """The red marker must sit in ``corner`` ("tl", "tr", "bl", "br") and nowhere else."""

    def check(img: Image.Image) -> None:
        w, h = img.size
        c = marker // 2
        points = {"tl": (c, c), "tr": (w - 1 - c, c), "bl": (c, h - 1 - c), "br": (w - 1 - c, h - 1 - c)}
        for where, xy in points.items():
            pixel_close(img, xy, RED if where == corner else WHITE, tol=60)

    return check


# ---------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------


def build_cases() -> list[Case]:
    """All cases, in a fixed order, without touching the file system."""
    cases: list[Case] = []

    def ok(name: str, filename: str, data: bytes, check: Check | None = None) -> None:
        cases.append(Case(name, filename, data, "ok", check))

    def error(name: str, filename: str, data: bytes, match: str | None = None) -> None:
        cases.append(Case(name, filename, data, "error", None, match))

    photo = photo_like()
    jpeg = encode(photo, "JPEG", quality=90)
    png = encode(photo, "PNG")
    rng = random.Random(1234)

    # --- empty, not an image ------------------------------------------------------------------
    error("zero_bytes", "empty.png", b"", r"empty \(0 bytes\)")
    error("text_named_png", "notes.png", b"These are my holiday notes.\nDay 1: beach.\n" * 5, r"text")
    error(
        "html_named_png",
        "page.png",
        b"<!DOCTYPE html>\n<html><head><title>Cat</title></head><body><img src='cat.png'></body></html>\n",
        r"HTML",
    )
    error(
        "svg",
        "logo.svg",
        b'<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="64" '
        b'height="64"><circle cx="32" cy="32" r="30" fill="red"/></svg>\n',
        r"SVG.*not supported.*PNG",
    )
    error(
        "svg_no_xml_declaration", "icon.svg", b'<svg viewBox="0 0 10 10"><rect width="10" height="10"/></svg>', r"SVG"
    )
    error(
        "random_bytes", "noise.jpg", bytes(rng.getrandbits(8) for _ in range(2048)), r"not in a recognised image format"
    )
    error("pdf_header", "scan.pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", r"PDF")
    error("zip_archive", "photos.zip", b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(range(64)), r"recognised")
    error(
        "heic_header",
        "IMG_0001.HEIC",
        struct.pack(">I", 24) + b"ftypheic" + b"\x00\x00\x00\x00mif1heic" + bytes(64),
        r"HEIC",
    )
    error("psd_like_garbage", "design.psd", b"8BPS\x00\x01" + bytes(rng.getrandbits(8) for _ in range(200)), r"corrupt")

    # --- truncated / corrupt ------------------------------------------------------------------
    error("truncated_jpeg", "cut.jpg", jpeg[: len(jpeg) // 2], r"truncated or corrupt")
    error("truncated_jpeg_in_header", "cut_header.jpg", jpeg[:40], r"truncated or corrupt")
    error("truncated_png", "cut.png", png[: len(png) * 2 // 3], r"truncated or corrupt")
    error("png_signature_only", "sig.png", PNG_SIGNATURE, r"truncated or corrupt")
    error(
        "jpeg_magic_then_garbage",
        "garbage.jpg",
        b"\xff\xd8\xff\xe0" + bytes(rng.getrandbits(8) for _ in range(1000)),
        r"corrupt",
    )
    ihdr = png_ihdr(32, 32)
    error(
        "png_bad_ihdr_crc",
        "badcrc.png",
        PNG_SIGNATURE
        + png_chunk(b"IHDR", ihdr, crc=(zlib.crc32(b"IHDR" + ihdr) ^ 0xDEADBEEF) & 0xFFFFFFFF)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * (32 * 3 + 1) * 32))
        + png_chunk(b"IEND", b""),
        r"corrupt",
    )
    error(
        "png_corrupt_idat_stream",
        "badzlib.png",
        PNG_SIGNATURE
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", b"this is not zlib data at all")
        + png_chunk(b"IEND", b""),
        r"corrupt",
    )
    # Logical screen 32x32 and then nothing: no image descriptor, no frame.
    error("gif_no_frames", "empty_anim.gif", b"GIF89a" + struct.pack("<HHBBB", 32, 32, 0, 0, 0) + b";", r"corrupt")
    error("gif_garbage", "garbage.gif", b"GIF89a" + bytes(rng.getrandbits(8) for _ in range(300)), r"corrupt")
    error("bmp_magic_only", "tiny.bmp", b"BM\x00\x00", r"corrupt")

    # --- decompression bombs and silly shapes -------------------------------------------------
    error("bomb_100k_x_100k_header", "bomb.png", bomb_png(100_000, 100_000), r"megapixel|too large")
    # Under PIL's own limit (~89 MP) but over ours (40 MP): our header check must catch it.
    error("bomb_48mp_header", "big.png", bomb_png(8000, 6000), r"too large.*8000x6000")
    error("one_by_one", "pixel.png", encode(Image.new("RGB", (1, 1), RED), "PNG"), r"too small.*at least 8")
    error("one_by_10000", "column.png", encode(Image.new("L", (1, 10_000), 128), "PNG"), r"too small")
    error("10000_by_one", "row.png", encode(Image.new("L", (10_000, 1), 128), "PNG"), r"too small")
    error("seven_pixels_high", "strip.png", encode(Image.new("RGB", (100, 7), RED), "PNG"), r"too small")
    error("aspect_60_to_1", "banner.png", encode(Image.new("RGB", (1200, 20), RED), "PNG"), r"elongated|aspect")
    ok(
        "eight_by_eight_minimum",
        "tiny.png",
        encode(Image.new("RGB", (8, 8), BLUE), "PNG"),
        all_of(size_is(8, 8), uniform(BLUE, 0)),
    )
    ok("aspect_50_to_1_allowed", "wide.png", encode(Image.new("RGB", (400, 8), GREEN), "PNG"), size_is(400, 8))

    # --- colour modes -------------------------------------------------------------------------
    ok(
        "plain_jpeg",
        "photo.jpg",
        jpeg,
        all_of(size_is(64, 48), lambda im: pixel_close(im, (63, 0), PHOTO_TOP_RIGHT, 30)),
    )
    ok("progressive_jpeg", "progressive.jpg", encode(photo, "JPEG", quality=90, progressive=True), size_is(64, 48))
    ok(
        "grayscale_jpeg",
        "grey.jpg",
        encode(Image.fromarray(gradient(64, 32)), "JPEG", quality=95),
        all_of(size_is(64, 32), grey, is_gradient()),
    )
    ok(
        "cmyk_jpeg",
        "print.jpg",
        encode(Image.new("CMYK", (32, 32), (255, 0, 0, 0)), "JPEG", quality=95),
        all_of(size_is(32, 32), uniform((0, 255, 255))),  # pure cyan ink -> (0, 255, 255)
    )
    ok(
        "png_16bit_grey_gradient",
        "scan16.png",
        encode(Image.fromarray(gradient(256, 16, np.uint16, 65535)), "PNG"),
        all_of(size_is(256, 16), grey, is_gradient(250)),
    )
    ok(
        "png_16bit_grey_dark",
        "dark16.png",
        # Only the bottom quarter of the 16-bit range: must stay dark, not be stretched to white.
        encode(Image.fromarray(gradient(64, 16, np.uint16, 16383)), "PNG"),
        lambda im: (grey(im), pixel_close(im, (63, 8), (64, 64, 64), 3)),
    )
    ok(
        "tiff_float32_unit_range",
        "depth.tif",
        encode(Image.fromarray(gradient(128, 16, np.float32, 1.0)), "TIFF"),
        all_of(size_is(128, 16), grey, is_gradient(250)),
    )
    ok(
        "tiff_float32_wide_range",
        "elevation.tif",
        encode(Image.fromarray((gradient(128, 16, np.float32, 2000.0) - 1000.0).astype(np.float32)), "TIFF"),
        all_of(grey, is_gradient(250)),
    )
    ok(
        "tiff_int32_mode_i",
        "counts.tif",
        encode(Image.fromarray(gradient(128, 16, np.int32, 65535)), "TIFF"),
        all_of(grey, is_gradient(250)),
    )
    ok(
        "one_bit_bmp",
        "mono.bmp",
        encode(Image.fromarray(np.indices((16, 16)).sum(0) % 2 == 0), "BMP"),
        all_of(
            size_is(16, 16),
            lambda im: (pixel_close(im, (0, 0), WHITE, 0), pixel_close(im, (1, 0), BLACK, 0)),
        ),
    )

    rgba = np.zeros((16, 32, 4), np.uint8)
    rgba[:, :16] = (0, 0, 255, 255)  # opaque blue on the left
    rgba[:, 16:] = (0, 0, 0, 0)  # fully transparent black on the right
    rgba[0, :] = (255, 0, 0, 128)  # half-transparent red top row
    ok(
        "rgba_png",
        "logo.png",
        encode(Image.fromarray(rgba), "PNG"),
        all_of(
            size_is(32, 16),
            lambda im: pixel_close(im, (4, 8), BLUE, 0),
            lambda im: pixel_close(im, (28, 8), WHITE, 0),  # transparent -> white, not black
            lambda im: pixel_close(im, (28, 0), (255, 127, 127), 2),
        ),
    )
    la = np.zeros((16, 32, 2), np.uint8)
    la[:, 16:, 1] = 255  # left transparent, right opaque black
    ok(
        "la_png",
        "la.png",
        encode(Image.merge("LA", [Image.fromarray(la[..., 0]), Image.fromarray(la[..., 1])]), "PNG"),
        lambda im: (pixel_close(im, (4, 8), WHITE, 0), pixel_close(im, (28, 8), BLACK, 0)),
    )
    pal = Image.new("P", (32, 16), 0)
    pal.putpalette([255, 0, 0, 0, 0, 0] + [0, 0, 0] * 254)
    pal.paste(1, (16, 0, 32, 16))
    ok(
        "palette_png_with_transparency",
        "palette.png",
        encode(pal, "PNG", transparency=1),
        lambda im: (pixel_close(im, (4, 8), RED, 0), pixel_close(im, (28, 8), WHITE, 0)),
    )
    rgb_trns = Image.new("RGB", (32, 16), (0, 255, 0))
    rgb_trns.paste((10, 20, 30), (16, 0, 32, 16))
    ok(
        "rgb_png_with_trns_colour_key",
        "keyed.png",
        encode(rgb_trns, "PNG", transparency=(10, 20, 30)),
        lambda im: (pixel_close(im, (4, 8), GREEN, 0), pixel_close(im, (28, 8), WHITE, 0)),
    )
    ok("palette_png_opaque", "pal.png", encode(photo.convert("P"), "PNG"), size_is(64, 48))

    # --- multi-frame --------------------------------------------------------------------------
    rgb_frames = [Image.new("RGB", (24, 16), c) for c in (RED, GREEN, BLUE)]
    ok(
        "animated_gif_3_frames",
        "anim.gif",
        encode(rgb_frames[0], "GIF", save_all=True, append_images=rgb_frames[1:], duration=100, loop=0),
        all_of(size_is(24, 16), uniform(RED, 0), frames(3)),
    )
    ok(
        "multipage_tiff",
        "pages.tif",
        encode(rgb_frames[1], "TIFF", save_all=True, append_images=[rgb_frames[2], rgb_frames[0]]),
        all_of(uniform(GREEN, 0), frames(3)),
    )
    ok(
        "apng",
        "anim.png",
        encode(rgb_frames[0], "PNG", save_all=True, append_images=rgb_frames[1:2], duration=100),
        all_of(uniform(RED, 0), frames(2)),
    )
    ok("single_frame_gif", "still.gif", encode(rgb_frames[2], "GIF"), all_of(uniform(BLUE, 0), frames(1)))

    # --- EXIF orientation ---------------------------------------------------------------------
    # Stored 40x20 with a red marker in the stored top-left corner.
    marked = marked_landscape()
    # 6: the camera was turned clockwise; viewing rotates 90 deg clockwise, top-left -> top-right.
    ok(
        "exif_orientation_6",
        "portrait6.jpg",
        jpeg_with_orientation(marked, 6),
        all_of(size_is(20, 40), marker_at("tr")),
    )
    # 8: rotate 90 deg counter-clockwise to view, top-left -> bottom-left.
    ok(
        "exif_orientation_8",
        "portrait8.jpg",
        jpeg_with_orientation(marked, 8),
        all_of(size_is(20, 40), marker_at("bl")),
    )
    # 3: upside down, top-left -> bottom-right, size unchanged.
    ok(
        "exif_orientation_3",
        "upside_down.jpg",
        jpeg_with_orientation(marked, 3),
        all_of(size_is(40, 20), marker_at("br")),
    )
    # An out-of-range orientation value is ignored, not fatal.
    ok(
        "exif_orientation_invalid",
        "weird_exif.jpg",
        jpeg_with_orientation(marked, 42),
        all_of(size_is(40, 20), marker_at("tl")),
    )

    # --- content, not extension, decides the format -------------------------------------------
    ok(
        "png_named_jpg",
        "actually_png.jpg",
        png,
        all_of(size_is(64, 48), lambda im: pixel_close(im, (63, 0), PHOTO_TOP_RIGHT, 2)),
    )
    ok("jpeg_named_gif", "actually_jpeg.gif", jpeg, size_is(64, 48))
    ok("no_extension", "upload", png, size_is(64, 48))

    # --- other formats ------------------------------------------------------------------------
    ok("webp_lossy", "photo.webp", encode(photo, "WEBP", quality=90), size_is(64, 48))
    ok(
        "webp_lossless_alpha",
        "alpha.webp",
        encode(Image.fromarray(rgba), "WEBP", lossless=True),
        lambda im: pixel_close(im, (28, 8), WHITE, 0),
    )
    ok(
        "bmp_24bit",
        "photo.bmp",
        encode(photo, "BMP"),
        all_of(size_is(64, 48), lambda im: pixel_close(im, (63, 0), PHOTO_TOP_RIGHT, 2)),
    )
    ok("ico", "favicon.ico", encode(Image.new("RGB", (32, 32), BLUE), "ICO"), all_of(size_is(32, 32), uniform(BLUE, 0)))

    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "duplicate case names"
    filenames = [c.filename for c in cases]
    assert len(filenames) == len(set(filenames)), "duplicate file names"
    return cases


def bad_input_corpus(tmp_dir: pathlib.Path) -> list[Case]:
    """Build the corpus and write every case to ``tmp_dir / case.filename`` (for path-based loads)."""
    tmp_dir = pathlib.Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    cases = build_cases()
    for case in cases:
        (tmp_dir / case.filename).write_bytes(case.data)
    return cases
