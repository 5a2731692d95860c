"""The whole bad-input corpus through the command line, in one invocation.

``python -m explain`` is run in-process (``explain.cli.main``) on every corpus file plus a good
photo at the end. Good files must produce exactly what the engine computes for them; bad files must
each give one readable ``error:`` line that names the file, never a traceback; the exit code is 1;
and the good photo after all the bad ones is still explained. The EXIF-rotated JPEGs must be
explained upright (the engine's view and the written overlay), not as the sensor stored them.
"""

from __future__ import annotations

import contextlib
import io
import json
import pathlib
import re
from typing import Any

import numpy as np
import pytest
from corpus import RED, WHITE, Case, bad_input_corpus, build_cases
from PIL import Image

import explain
from explain import cli
from explain.samples import SAMPLES_DIR

CASES = build_cases()
GOOD = SAMPLES_DIR / "cat.jpg"
EXIF_CASES = [c for c in CASES if c.name.startswith("exif_orientation_")]


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory: pytest.TempPathFactory, lite0: explain.Model) -> dict[str, Any]:
    """Run the CLI once over the corpus (+ the cat at the end); return the paths, streams and code."""
    folder = tmp_path_factory.mktemp("corpus")
    out = tmp_path_factory.mktemp("corpus_out")
    cases = bad_input_corpus(folder)
    assert [c.name for c in cases] == [c.name for c in CASES]
    paths = [folder / c.filename for c in cases] + [GOOD]

    real = cli.load_model

    def shared(name: str = explain.DEFAULT_MODEL, weights: str | None = "default", **kw: Any) -> explain.Model:
        # The session's efficientnet_lite0 (same name, real weights) instead of a second copy.
        if name == lite0.name and weights == "default" and not kw:
            return lite0
        return real(name, weights=weights, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(cli, "load_model", shared)
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = cli.main([*map(str, paths), "--out", str(out), "--targets", "top2"])
    finally:
        mp.undo()
    summaries = {}
    for js in out.glob("*.json"):
        summary = json.loads(js.read_text(encoding="utf-8"))
        summaries[summary["image"]] = summary
    return {
        "folder": folder,
        "out": out,
        "code": code,
        "stdout": stdout.getvalue(),
        "stderr": stderr.getvalue(),
        "summaries": summaries,
    }


def _path(run: dict[str, Any], case: Case) -> pathlib.Path:
    return run["folder"] / case.filename


def test_corpus_covers_the_issue() -> None:
    """Every kind of awkward file the issue names is in the corpus, with the expected outcome."""
    by_name = {c.name: c for c in CASES}
    wanted = {
        "zero_bytes": "error",
        "truncated_jpeg": "error",
        "truncated_png": "error",
        "text_named_png": "error",
        "html_named_png": "error",
        "svg": "error",
        "bomb_100k_x_100k_header": "error",
        "one_by_one": "error",
        "one_by_10000": "error",
        "png_16bit_grey_gradient": "ok",
        "cmyk_jpeg": "ok",
        "palette_png_with_transparency": "ok",
        "rgba_png": "ok",
        "animated_gif_3_frames": "ok",
        "multipage_tiff": "ok",
        "exif_orientation_6": "ok",
        "png_named_jpg": "ok",
        "jpeg_named_gif": "ok",
    }
    missing = sorted(set(wanted) - set(by_name))
    assert not missing, f"corpus lacks {missing}"
    assert {n: by_name[n].expect for n in wanted} == wanted
    assert len(CASES) >= 30


def test_exit_code_is_one_and_nothing_escapes(corpus_run: dict[str, Any]) -> None:
    assert corpus_run["code"] == cli.EXIT_IMAGE_FAILED, corpus_run["stderr"]
    both = corpus_run["stdout"] + corpus_run["stderr"]
    assert "Traceback" not in both
    assert not re.search(r"<[\w.]+ object at 0x", both)


def test_each_bad_file_is_one_line_naming_it(corpus_run: dict[str, Any]) -> None:
    lines = corpus_run["stderr"].splitlines()
    errors = [c for c in CASES if c.expect == "error"]
    assert len(lines) == len(errors), "\n".join(lines)
    assert all(line.startswith("error: ") for line in lines), lines
    for case, line in zip(errors, lines):  # in the order the files were given
        path = str(_path(corpus_run, case))
        assert line.startswith(f"error: {path}: "), (case.name, line)
        # The CLI line carries the loader's own message, not a generic one.
        with pytest.raises(explain.ImageLoadError) as info:
            explain.load_image(_path(corpus_run, case))
        message = " ".join(str(info.value).split())
        assert line.endswith(message), (case.name, line, message)
        if case.match:
            assert re.search(case.match, line, re.IGNORECASE), (case.name, line)
        assert len(line) < 500


def test_bad_files_write_nothing(corpus_run: dict[str, Any]) -> None:
    written_for = set(corpus_run["summaries"])
    for case in CASES:
        if case.expect == "error":
            assert str(_path(corpus_run, case)) not in written_for, case.name
    expected = sum(c.expect == "ok" for c in CASES) + 1
    assert len(list(corpus_run["out"].glob("*.json"))) == expected
    assert len(list(corpus_run["out"].glob("*_maps.npy"))) == expected


@pytest.mark.parametrize("case", [c for c in CASES if c.expect == "ok"] + [None], ids=lambda c: c.name if c else "cat")
def test_good_files_match_the_engine(case: Case | None, corpus_run: dict[str, Any], lite0: explain.Model) -> None:
    path = GOOD if case is None else _path(corpus_run, case)
    summary = corpus_run["summaries"].get(str(path))
    assert summary is not None, f"no summary for {path}; stderr: {corpus_run['stderr']}"
    out: pathlib.Path = corpus_run["out"]

    # The engine on the same file, the same way the CLI does it (top2 targets).
    image = explain.load_image(path)
    r = explain.explain(lite0, image, None, top_k=5)
    chosen = [i for i, _n, _p in r.predictions[:2]]
    r = explain.explain(lite0, image, chosen, top_k=5)

    assert [p["index"] for p in summary["predictions"]] == [i for i, _n, _p in r.predictions]
    np.testing.assert_allclose(
        [p["prob"] for p in summary["predictions"]], [p for _i, _n, p in r.predictions], rtol=1e-5, atol=1e-7
    )
    assert [t["index"] for t in summary["targets"]] == r.targets
    maps = np.load(out / summary["maps"])
    assert maps.dtype == np.float32 and list(maps.shape) == summary["map_shape"] == list(r.maps.shape)
    np.testing.assert_allclose(maps, r.maps.numpy(), rtol=1e-4, atol=1e-6 * float(np.abs(maps).max() or 1.0))

    expected = r.overlays()
    assert len(summary["overlays"]) == len(expected) == 2
    for name, want in zip(summary["overlays"], expected):
        with Image.open(out / name) as pic:
            assert pic.format == "PNG" and pic.size == want.size == r.image.size
            got = np.asarray(pic.convert("RGB"), dtype=np.int16)
        # Same picture as the engine draws (maps equal up to float noise: allow a grey level or two).
        assert np.abs(got - np.asarray(want, dtype=np.int16)).max() <= 2, name
    assert f"{path.name}: " in corpus_run["stdout"]


def red_corner(img: Image.Image) -> str | None:
    """Which corner ("tl", "tr", "bl", "br") of ``img`` is red while the other three are white."""
    arr = np.asarray(img.convert("RGB"), dtype=np.int16)
    h, w = arr.shape[:2]
    dx, dy = max(1, w // 20), max(1, h // 20)  # a little inside, away from resampling at the edge
    spots = {"tl": arr[dy, dx], "tr": arr[dy, w - 1 - dx], "bl": arr[h - 1 - dy, dx], "br": arr[h - 1 - dy, w - 1 - dx]}

    def near(px: np.ndarray, colour: tuple[int, int, int]) -> bool:
        return bool(np.abs(px - np.array(colour)).max() <= 60)

    red = [k for k, px in spots.items() if near(px, RED)]
    white = [k for k, px in spots.items() if near(px, WHITE)]
    return red[0] if len(red) == 1 and len(white) == 3 else None


# EXIF orientation (the standard): where the stored top-left corner is seen.
EXPECTED_CORNER = {
    "exif_orientation_6": "tr",
    "exif_orientation_8": "bl",
    "exif_orientation_3": "br",
    "exif_orientation_invalid": "tl",
}


@pytest.mark.parametrize("case", EXIF_CASES, ids=lambda c: c.name)
def test_exif_rotated_photo_is_explained_upright(case: Case, corpus_run: dict[str, Any], lite0: explain.Model) -> None:
    path = _path(corpus_run, case)
    upright = explain.load_image(path)
    with Image.open(path) as raw:
        stored = raw.convert("RGB")  # as the sensor stored it, EXIF ignored
    assert red_corner(stored) == "tl"
    corner = EXPECTED_CORNER[case.name]
    assert red_corner(upright) == corner
    rotated = corner in ("tr", "bl")
    assert upright.size == (stored.size[::-1] if rotated else stored.size)

    # The engine's view (square for fit=squash) keeps the marker in the upright corner.
    r = explain.explain(lite0, upright, fit="squash")
    side = lite0.preprocess.input_size
    assert r.image.size == (side, side)
    assert red_corner(r.image) == corner, f"{case.name}: marker at {red_corner(r.image)} in the model's view"

    # The CLI's overlay is drawn on the upright view, not on the stored one.
    summary = corpus_run["summaries"][str(path)]
    name = summary["overlays"][0]
    with Image.open(corpus_run["out"] / name) as pic:
        got = np.asarray(pic.convert("RGB"), dtype=np.int16)
    target = summary["targets"][0]["index"]
    on_upright = explain.explain(lite0, upright, [target]).overlays()[0]
    assert np.abs(got - np.asarray(on_upright, dtype=np.int16)).max() <= 2
    if corner != "tl":
        on_stored = explain.explain(lite0, stored, [target]).overlays()[0]
        diff = np.abs(got - np.asarray(on_stored, dtype=np.int16)).max()
        assert diff > 60, f"{case.name}: the overlay looks like the stored (unrotated) picture"
