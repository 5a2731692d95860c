"""Tests of ``explain.io.load_image`` against the bad-input corpus and random (fuzzed) bytes."""

from __future__ import annotations

import io
import pathlib
import re
import warnings

import numpy as np
import pytest
from corpus import Case, bad_input_corpus, build_cases, encode, photo_like
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image, ImageFile

from explain.errors import ExplainError, ImageLoadError
from explain.io import MAX_ASPECT_RATIO, MAX_IMAGE_MB, MIN_SIDE, SUPPORTED_EXTENSIONS, load_image
from explain.samples import SAMPLES_DIR

CASES = build_cases()
CASE_IDS = [c.name for c in CASES]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("corpus")
    bad_input_corpus(folder)
    return folder


class Upload(io.BytesIO):
    """Quacks like Streamlit's UploadedFile: a BytesIO with a ``name``."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name


class ReadOnlyStream:
    """A file-like object with ``read`` only (no ``getvalue``), like a socket or HTTP body."""

    def __init__(self, data: bytes, name: str | None = None) -> None:
        self._data = data
        if name is not None:
            self.name = name

    def read(self, size: int = -1) -> bytes:
        data, self._data = self._data, b""
        return data


class BrokenStream:
    name = "broken.jpg"

    def read(self, size: int = -1) -> bytes:
        raise OSError("connection reset by peer")


def assert_good_message(message: str, name: str | None) -> None:
    assert message.strip(), "empty error message"
    assert "Traceback" not in message
    assert "\n" not in message, f"multi-line message: {message!r}"
    assert len(message) < 400, f"message too long: {message!r}"
    assert not re.search(r"<[\w.]+ object at 0x", message), f"repr leaked into message: {message!r}"
    if name is not None:
        assert name in message, f"{name!r} not in {message!r}"
    else:
        assert "None" not in message, message


def check_case(case: Case, load) -> None:
    if case.expect == "ok":
        img = load()
        assert isinstance(img, Image.Image)
        assert img.mode == "RGB"
        assert img.width >= MIN_SIDE and img.height >= MIN_SIDE
        assert isinstance(img.info.get("cam_explorer_frames"), int)
        img.tobytes()  # fully decoded and usable
        if case.check is not None:
            case.check(img)
    else:
        assert case.expect == "error", case.expect
        with pytest.raises(ImageLoadError) as info:
            load()
        message = str(info.value)
        assert_good_message(message, case.filename)
        if case.match:
            assert re.search(case.match, message, re.IGNORECASE), f"{case.match!r} not in {message!r}"


# ---------------------------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------------------------


def test_corpus_is_substantial() -> None:
    assert len(CASES) >= 30
    assert sum(c.expect == "ok" for c in CASES) >= 15
    assert sum(c.expect == "error" for c in CASES) >= 15
    # Deterministic: building twice gives byte-identical files.
    assert [c.data for c in build_cases()] == [c.data for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_corpus_from_bytes(case: Case) -> None:
    check_case(case, lambda: load_image(case.data, name=case.filename))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_corpus_from_path(case: Case, corpus_dir: pathlib.Path) -> None:
    path = corpus_dir / case.filename
    assert path.read_bytes() == case.data
    check_case(case, lambda: load_image(path))  # the name comes from the path
    check_case(case, lambda: load_image(str(path)))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_corpus_from_file_objects(case: Case) -> None:
    check_case(case, lambda: load_image(Upload(case.data, case.filename)))
    check_case(case, lambda: load_image(ReadOnlyStream(case.data, case.filename)))


@pytest.mark.parametrize("case", [c for c in CASES if c.expect == "error"], ids=lambda c: c.name)
def test_errors_without_name_read_well(case: Case) -> None:
    with pytest.raises(ImageLoadError) as info:
        load_image(case.data)
    assert_good_message(str(info.value), None)
    assert str(info.value).startswith("The image")


def test_error_hierarchy() -> None:
    assert issubclass(ImageLoadError, ExplainError)
    assert issubclass(ImageLoadError, ValueError)


# ---------------------------------------------------------------------------------------------
# Sources and options
# ---------------------------------------------------------------------------------------------


def test_failing_stream_is_an_image_load_error() -> None:
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        load_image(BrokenStream())


def test_text_mode_stream_is_an_image_load_error() -> None:
    with pytest.raises(ImageLoadError, match="binary"):
        load_image(io.StringIO("not bytes"), name="notes.txt")


def test_missing_path(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ImageLoadError, match="nowhere.png.*not found"):
        load_image(tmp_path / "nowhere.png")


def test_directory_path(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ImageLoadError, match="folder"):
        load_image(tmp_path)


def test_explicit_name_wins_over_path(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="holiday.png"):
        load_image(path, name="holiday.png")


def test_file_object_name_is_base_name(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "nested" / "empty.jpg"
    path.parent.mkdir()
    path.write_bytes(b"")
    with path.open("rb") as fh, pytest.raises(ImageLoadError) as info:
        load_image(fh)
    assert "'empty.jpg'" in str(info.value)
    assert str(tmp_path) not in str(info.value)


def test_bytearray_and_memoryview() -> None:
    data = encode(photo_like(), "PNG")
    assert load_image(bytearray(data)).size == (64, 48)
    assert load_image(memoryview(data)).size == (64, 48)


def test_unsupported_source_type_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        load_image(42)  # type: ignore[arg-type]


def test_max_pixels_is_honoured() -> None:
    data = encode(photo_like(), "PNG")  # 64 x 48 = 3072 pixels
    assert load_image(data, max_pixels=3072).size == (64, 48)
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(data, max_pixels=3071, name="photo.png")


def test_bomb_handling_leaves_pil_globals_alone() -> None:
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters))
    bomb = next(c for c in CASES if c.name == "bomb_100k_x_100k_header")
    truncated = next(c for c in CASES if c.name == "truncated_jpeg")
    for case in (bomb, truncated):
        with pytest.raises(ImageLoadError):
            load_image(case.data)
    # Above PIL's own threshold, with our limit lifted: PIL's bomb check must still turn into ours.
    with pytest.raises(ImageLoadError, match="too large|megapixel"):
        load_image(bomb.data, max_pixels=10**12)
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters)) == before


def test_result_is_detached_from_the_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(encode(photo_like(), "PNG"))
    img = load_image(path)
    path.unlink()
    assert getattr(img, "fp", None) is None
    assert len(img.tobytes()) == 64 * 48 * 3


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


def test_the_limits_hold_at_their_edges() -> None:
    """Each limit accepts its edge and refuses one past it, saying which limit it is."""
    assert load_image(_png(MIN_SIDE, MIN_SIDE)).size == (MIN_SIDE, MIN_SIDE)
    with pytest.raises(ImageLoadError, match="small"):
        load_image(_png(MIN_SIDE - 1, MIN_SIDE + 5))
    long = int(MAX_ASPECT_RATIO * MIN_SIDE)
    assert load_image(_png(long, MIN_SIDE)).size == (long, MIN_SIDE)
    with pytest.raises(ImageLoadError, match=f"{MAX_ASPECT_RATIO:g}:1"):
        load_image(_png(long + 1, MIN_SIDE))


def test_pictures_over_the_size_limit_are_refused_with_the_limit_named(tmp_path: pathlib.Path) -> None:
    """PNG readers ignore bytes after the end chunk: a real picture padded to exactly the limit loads,
    one byte more is refused before decoding, by bytes, path or file object alike."""
    limit = MAX_IMAGE_MB * 2**20
    small = _png(32, 32)
    at_limit = small + b"\0" * (limit - len(small))
    assert load_image(at_limit).size == (32, 32)
    over = at_limit + b"\0"
    path = tmp_path / "huge.png"
    path.write_bytes(over)
    for source in (over, path, io.BytesIO(over)):
        with pytest.raises(ImageLoadError) as err:
            load_image(source, name="huge.png")
        message = str(err.value)
        assert "huge.png" in message and f"{MAX_IMAGE_MB} MB limit" in message and "20.0 MB" in message


@pytest.mark.parametrize("ext", SUPPORTED_EXTENSIONS)
def test_every_supported_extension_loads(ext: str) -> None:
    assert ext == ext.lower() and not ext.startswith(".")
    fmt = {"jpg": "JPEG", "jpeg": "JPEG", "tif": "TIFF", "tiff": "TIFF"}.get(ext, ext.upper())
    img = load_image(encode(photo_like(), fmt), name=f"photo.{ext}")
    assert img.mode == "RGB" and img.size == (64, 48)


def test_cat_sample_still_loads_after_the_corpus() -> None:
    img = load_image(SAMPLES_DIR / "cat.jpg")
    assert img.mode == "RGB" and img.size == (451, 300)


# ---------------------------------------------------------------------------------------------
# Properties (hypothesis)
# ---------------------------------------------------------------------------------------------

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

MAGIC = [
    b"\x89PNG\r\n\x1a\n",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    b"\xff\xd8\xff",
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    b"GIF89a",
    b"GIF87a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"RIFF\x00\x01\x00\x00WEBPVP8 ",
    b"\x00\x00\x01\x00",
    b"8BPS",
    b"P6\n",
    b"<svg",
]

_PHOTO = photo_like(24, 16)
SEEDS = [
    encode(_PHOTO, "PNG"),
    encode(_PHOTO, "JPEG", quality=80),
    encode(_PHOTO.convert("P"), "GIF"),
    encode(_PHOTO, "BMP"),
    encode(_PHOTO, "TIFF"),
    encode(_PHOTO, "WEBP", quality=80),
    encode(_PHOTO.convert("RGBA"), "PNG", save_all=True, append_images=[_PHOTO.convert("RGBA")]),
]


def assert_rgb_or_load_error(data: bytes, **kwargs) -> None:
    try:
        img = load_image(data, **kwargs)
    except ImageLoadError as exc:
        assert_good_message(str(exc), kwargs.get("name"))
    else:
        assert img.mode == "RGB"
        assert min(img.size) >= MIN_SIDE


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_never_escape(data: bytes) -> None:
    assert_rgb_or_load_error(data, name="upload.bin")


@FUZZ
@given(st.sampled_from(MAGIC), st.binary(max_size=2048))
def test_random_bytes_behind_real_magic_never_escape(magic: bytes, tail: bytes) -> None:
    assert_rgb_or_load_error(magic + tail, max_pixels=1_000_000)


@FUZZ
@given(
    st.sampled_from(range(len(SEEDS))),
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=6),
    st.one_of(st.none(), st.floats(0, 1)),
)
def test_mutated_real_files_never_escape(seed: int, edits: list[tuple[float, int]], cut: float | None) -> None:
    data = bytearray(SEEDS[seed])
    for where, value in edits:
        data[int(where * len(data))] = value
    if cut is not None:
        data = data[: int(cut * len(data))]
    assert_rgb_or_load_error(bytes(data), max_pixels=1_000_000)


@st.composite
def small_arrays(draw) -> np.ndarray:
    h = draw(st.integers(1, 40))
    w = draw(st.integers(1, 40))
    channels = draw(st.sampled_from([None, 3, 4]))
    shape = (h, w) if channels is None else (h, w, channels)
    return draw(hnp.arrays(np.uint8, shape, elements=st.integers(0, 255)))


@FUZZ
@given(small_arrays())
def test_small_arrays_as_png_load_to_rgb_of_same_size(arr: np.ndarray) -> None:
    h, w = arr.shape[:2]
    data = encode(Image.fromarray(arr), "PNG")
    usable = min(h, w) >= MIN_SIDE and max(h, w) <= MAX_ASPECT_RATIO * min(h, w)
    if not usable:
        with pytest.raises(ImageLoadError, match="too small|elongated"):
            load_image(data)
        return
    img = load_image(data)
    assert img.mode == "RGB"
    assert img.size == (w, h)
    out = np.asarray(img)
    if arr.ndim == 2:
        assert np.array_equal(out[..., 0], arr) and np.array_equal(out[..., 2], arr)
    elif arr.shape[2] == 3:
        assert np.array_equal(out, arr)
    else:
        alpha = arr[..., 3:].astype(np.float64) / 255.0
        expected = arr[..., :3] * alpha + 255.0 * (1.0 - alpha)  # over a white background
        assert np.abs(out.astype(np.float64) - expected).max() <= 1.0


def test_hostile_names_keep_the_message_on_one_short_line() -> None:
    for name in ("two\nlines.png", "x" * 500 + ".png"):
        with pytest.raises(ImageLoadError) as info:
            load_image(b"", name=name)
        message = str(info.value)
        assert "\n" not in message and len(message) < 200
        assert message.startswith("The file '") and ".png'" in message
