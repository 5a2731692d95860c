"""``explain.audit(engine="ray")`` on a local Ray (2 CPUs) gives the local engine's rows and maps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import explain
from explain import demo

ray = pytest.importorskip("ray", reason="Ray is an optional extra (requirements-dev.txt installs it)")

pytestmark = pytest.mark.slow  # starting Ray and its actor takes 10-20 s here


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()


def test_ray_equals_local_and_writes_the_same_files(local_ray, tmp_path):
    m = explain.load_model("digits_shortcut")
    items = demo.shortcut_set()[:70]
    items.append(("3/broken.png", b"not a picture", 3))
    out = tmp_path / "out"
    on_ray = explain.audit(m, items, engine="ray", batch_size=16, out=out)
    local = explain.audit(m, items, engine="local", batch_size=16)
    pd.testing.assert_frame_equal(on_ray.table, local.table)
    np.testing.assert_array_equal(np.asarray(on_ray.maps), local.maps)
    assert on_ray.summary["failed"] == 1 and on_ray.summary["settings"]["engine"] == "ray"
    assert [f.cls for f in on_ray.shortcuts()] == [f.cls for f in local.shortcuts()]
    # The same settings key whatever the engine: a local run over Ray's output has nothing left to do.
    again = explain.audit(m, items, engine="local", batch_size=16, out=out)
    assert again.summary["done_this_run"] == 0 and again.summary["skipped_already_done"] == len(items)
    pd.testing.assert_frame_equal(again.table, local.table)
