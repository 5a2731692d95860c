"""Corrupt cached weights, in the app: a clear message naming the file and the folder, the corrupt file
moved aside, the previous model still used; and the next attempt (the network back) succeeds."""

from __future__ import annotations

import glob
import pathlib
import urllib.error

import pytest
import torch
import torchvision
from app_helpers import escaped, main_images, new_app, run_ok, widget

import explain
from ui import resources, state

DEFAULT = explain.DEFAULT_MODEL


@pytest.fixture()
def hub_dir(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch):
    """A private TORCH_HOME; resnet18 is dropped from the app's model cache afterwards."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", torch.hub._hub_dir)  # restored on teardown
    torch.hub.set_dir(str(home / "hub"))
    resources._load_model.clear("resnet18")
    yield home / "hub" / "checkpoints"
    resources._load_model.clear("resnet18")  # other tests expect it not to be loaded


def test_corrupt_cached_weights_then_the_next_attempt_succeeds(hub_dir: pathlib.Path, monkeypatch) -> None:
    hub_dir.mkdir(parents=True)
    path = hub_dir / explain.weights_file("resnet18").split("/")[-1]
    path.write_bytes(b"half a download" * 1000)

    def offline(*_a, **_k):
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    at = run_ok(new_app())
    widget(at, "selectbox", state.MODEL).select("resnet18")
    at.run()
    assert not at.exception
    [error] = [e.value for e in at.error]
    assert "corrupt" in error and escaped(str(path)) in error and f"Still using {escaped(DEFAULT)}" in error
    assert not path.exists()
    [aside] = glob.glob(str(path) + ".corrupt-*")
    assert escaped(aside) in error
    assert widget(at, "selectbox", state.MODEL).value == DEFAULT and main_images(at) == 3

    # The network is back: choosing the model again downloads it and uses it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        weights = torchvision.models.resnet18(weights=None).state_dict()
    calls: list[str] = []

    def download(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        calls.append(url)
        torch.save(weights, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    widget(at, "selectbox", state.MODEL).select("resnet18")
    run_ok(at)
    assert len(calls) == 1 and path.is_file()
    assert widget(at, "selectbox", state.MODEL).value == "resnet18"
    assert widget(at, "selectbox", state.LAYER).value == "layer4" and main_images(at) == 3
    m = resources.get_model("resnet18")
    assert torch.equal(m.module.fc.weight, weights["fc.weight"])
