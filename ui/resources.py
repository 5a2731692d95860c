"""Cached resources: models (shared by every session) and decoded images (by content).

A model the user built from their own weights (the *Your model* page) is the exception: it lives
in that user's session state only (:class:`UploadedModel`), and :func:`get_model` returns it for
its name in that session.

Models go through ``st.cache_resource``: one instance per name for the whole server, shared by
all sessions, which is safe because ``explain.Model`` never mutates its module after loading.
The Model also keeps recent forward passes (captures) itself, so nothing here caches
explanations: changing class, method or colours reuses the engine's capture, and tests can count
forward passes on the very object the app uses (:func:`get_model` in the test process returns it).
"""

from __future__ import annotations

import gc
import hashlib
import os
import pathlib
from collections.abc import Callable
from dataclasses import dataclass

import streamlit as st
from PIL import Image, ImageOps

import explain
from ui import streamlit_compat
from ui.state import UPLOADED as UPLOADED_KEY

# What is imported by now (torch, Streamlit, the engine: about half a million objects) lives as long
# as the server. Frozen, it is no longer walked by every full garbage collection (~300 ms each on a
# 2-core machine, the biggest cost of a rerun before runner.postScriptGC was switched off in
# .streamlit/config.toml). Once per process: modules are imported once.
gc.freeze()

#: How many models stay loaded at once (each EfficientNet/ResNet is tens to hundreds of MB).
MODEL_CACHE_ENTRIES = 3
#: Decoded images kept (by content hash); photos are small next to models.
IMAGE_CACHE_ENTRIES = 16
THUMBNAIL_SIZE = 96
#: Set by deploy/serve.sh to the replica's name (r1, r2, ...), so that its log says which replica it is.
REPLICA_ENV = "CAM_EXPLORER_REPLICA"

_log = streamlit_compat.server_logger(__name__)


@st.cache_resource(max_entries=MODEL_CACHE_ENTRIES, show_spinner=False)
def _load_model(name: str, _progress: Callable[[int, int], None] | None = None) -> explain.Model:
    # No st.* calls in here: cached functions replay their elements, and a progress bar drawn
    # from inside would be replayed (or rejected) on every cache hit.
    model = explain.load_model(name, progress=_progress)
    # One line per load in the server log: an operator (and tests/test_deploy.py) can see that each
    # replica loads each model once.
    _log.info("loaded model %s (replica %s, pid %d)", name, os.environ.get(REPLICA_ENV, "-"), os.getpid())
    return model


def get_model(name: str, progress: Callable[[int, int], None] | None = None) -> explain.Model:
    """The model ``name``: this session's uploaded model if that is its name, else the shared, cached one.

    Raises the engine's errors (e.g. WeightsUnavailableError).
    """
    mine = uploaded_model()
    if mine is not None and mine.name == name:
        return mine.model
    return _load_model(name, _progress=progress)


@dataclass(frozen=True)
class UploadedModel:
    """A model built from one user's uploaded weights: kept in that session's state, never shared."""

    model: explain.Model
    arch: str
    weights_name: str
    labels_name: str  # "" when the classes are numbered
    digest: str  # of the weights, labels and options it was built from

    @property
    def name(self) -> str:
        """The model's (unique) name, which is also its value in the model picker."""
        return self.model.name

    @property
    def label(self) -> str:
        """Model picker text: ``"my_weights.pth · resnet18 (uploaded)"``."""
        return f"{self.weights_name} · {self.arch} (uploaded)"


def uploaded_model() -> UploadedModel | None:
    """This session's uploaded model, if any (``None`` outside a script run, e.g. in tests)."""
    if not streamlit_compat.in_script_run():
        return None
    mine = st.session_state.get(UPLOADED_KEY)
    return mine if isinstance(mine, UploadedModel) else None


def model_infos() -> dict[str, explain.ModelInfo]:
    """Every model the picker offers, embedded ones first, by name (checks the disk each call)."""
    return {info.name: info for info in explain.list_models()}


def needs_download(name: str) -> bool:
    """True when loading ``name`` would first have to download its weights."""
    try:
        spec = explain.get_spec(name)
    except explain.UnknownModelError:
        return False  # e.g. this session's uploaded model: nothing to download
    return not spec.cached()


def load_with_progress(name: str, where: st.delta_generator.DeltaGenerator) -> explain.Model:
    """Load ``name`` through :func:`get_model`, with a spinner, or a progress bar while downloading.

    The download runs in a worker thread so that this (script) thread can redraw the bar; the
    engine's progress callback only writes numbers, which the loop below turns into the bar.
    """
    if not needs_download(name):
        with where, st.spinner(f"Loading {name}…"):
            return get_model(name)
    seen = {"done": 0, "total": 0}
    outcome: dict[str, object] = {}

    def report(done: int, total: int) -> None:
        seen["done"], seen["total"] = done, total

    def work() -> None:
        try:
            outcome["model"] = get_model(name, progress=report)
        except BaseException as exc:  # noqa: BLE001 - handed to the script thread below
            outcome["error"] = exc

    worker = streamlit_compat.script_thread(work, name=f"load-{name}")
    bar = where.progress(0.0, text=f"Downloading the weights of {name}…")
    worker.start()
    while worker.is_alive():
        worker.join(0.2)
        total = seen["total"]
        if total:
            mb = seen["done"] / 2**20
            bar.progress(min(1.0, seen["done"] / total), text=f"Downloading {name}: {mb:.0f} of {total / 2**20:.0f} MB")
    bar.empty()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["model"]  # type: ignore[return-value]


@dataclass(frozen=True)
class Decoded:
    """The outcome of decoding some bytes: an image, or the loader's one-line error."""

    image: Image.Image | None
    error: str | None
    digest: str


def digest_of(data: bytes) -> str:
    """Short content hash used to recognise the same picture across reruns."""
    return hashlib.blake2b(data, digest_size=12).hexdigest()


@st.cache_data(max_entries=IMAGE_CACHE_ENTRIES, show_spinner=False)
def decode_image(data: bytes, name: str) -> Decoded:
    """``explain.load_image`` keyed by the bytes (and the name its messages use); errors are kept too."""
    digest = digest_of(data)
    try:
        return Decoded(explain.load_image(data, name=name), None, digest)
    except explain.ImageLoadError as err:
        return Decoded(None, str(err), digest)


@st.cache_data(show_spinner=False)
def read_sample(filename: str) -> bytes:
    """Bytes of a bundled sample (by file name)."""
    for _title, path in explain.list_samples():
        if path.name == filename:
            return pathlib.Path(path).read_bytes()
    raise explain.ImageLoadError(f"There is no sample called {filename!r}.")


@st.cache_data(show_spinner=False)
def sample_gallery() -> list[tuple[str, str, bytes]]:
    """``(title, file name, thumbnail PNG bytes)`` for every bundled sample.

    Encoded once: ``st.cache_data`` hands out a copy on every call, and bytes copy and send far
    faster than PIL images (which ``st.image`` would re-encode on every rerun).
    """
    out = []
    for title, path in explain.list_samples():
        try:
            img = explain.load_image(path)
        except explain.ImageLoadError:
            continue  # a damaged sample must not take the gallery down
        # Square crops, so that the gallery lines up in a grid.
        thumb = ImageOps.fit(img, (THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        out.append((title, path.name, explain.render.to_png_bytes(thumb, compress_level=6)))
    return out

