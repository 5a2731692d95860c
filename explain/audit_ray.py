"""The audit on Ray Data (``explain.audit(..., engine="ray")``): for sets one machine cannot do.

The pictures become a Ray dataset (one row per picture: a small pickled reference, never the
decoded image), ``map_batches`` runs :class:`AuditActor`, which builds the model once per worker
(GPUs when ``ray_options={"num_gpus": 1}``) and explains each batch with the same
:class:`explain.audit.Worker` as the local engine, so rows and maps are the same. Results are written
with Ray's Parquet writer (same columns as ``audit.parquet`` plus the map as bytes) and merged into
the usual output files.

Ray is optional and imported only here. ``ray.init()`` is called only when no Ray is running;
it joins the cluster named by ``RAY_ADDRESS`` when that is set, else starts a local one (and shuts
it down afterwards). Cancel is not supported on this engine.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import uuid

import numpy as np
import pandas as pd

from .audit import COLUMNS, Entry, Worker, frame
from .sources import AuditError

MAP_COLUMN, SHAPE_COLUMN = "map", "map_shape"


class AuditActor:
    """A Ray Data actor: one model per worker, one :class:`Worker` call per batch."""

    def __init__(self, model_bytes: bytes, method: str, layer, target: str, fit: str, settings_key: str,
                 done: list[str], limits) -> None:
        import torch

        torch.set_num_threads(max(1, int(os.environ.get("CAM_EXPLORER_THREADS", "1"))))
        model = pickle.loads(model_bytes)
        self.worker = Worker(model, method, layer, target, fit, settings_key, done, limits)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        entries = [pickle.loads(b) for b in batch["entry"]]
        rows, maps = self.worker.process(entries)
        df = frame(rows)
        blobs, shapes = [], []
        for k in df["map_index"].to_numpy(dtype=np.int64):
            if k >= 0:
                blobs.append(np.ascontiguousarray(maps[k], dtype=np.float32).tobytes())
                shapes.append(list(maps[k].shape))
            else:
                blobs.append(b"")
                shapes.append([0, 0])
        df[MAP_COLUMN] = blobs
        df[SHAPE_COLUMN] = shapes
        return df


def split_frame(df: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """A Ray result frame → (table, maps) with ``map_index`` into those maps."""
    ok = [i for i, b in enumerate(df[MAP_COLUMN]) if len(b)]
    if ok:
        shape = tuple(int(v) for v in df[SHAPE_COLUMN].iloc[ok[0]])
        maps = np.stack([np.frombuffer(df[MAP_COLUMN].iloc[i], np.float32).reshape(shape) for i in ok])
    else:
        maps = np.zeros((0, 1, 1), np.float32)
    index = np.full(len(df), -1, np.int64)
    index[ok] = np.arange(len(ok))
    table = df.drop(columns=[MAP_COLUMN, SHAPE_COLUMN]).astype(COLUMNS)
    table["map_index"] = pd.array(index, dtype="Int64")
    return table.reset_index(drop=True), maps


def run_ray(model, entries: list[Entry], method, layer, target, fit, settings_key, done, batch_size, limits,
            progress, options: dict, store):
    """Run the audit's batches on Ray Data; returns what the local engine returns."""
    try:
        import ray
    except ImportError:
        raise AuditError("engine='ray' needs Ray: pip install 'ray[data]' (or use engine='local').") from None
    started = False
    if not ray.is_initialized():
        init = {k: options[k] for k in ("num_cpus", "num_gpus", "_node_ip_address", "include_dashboard") if k in options}
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, **init)  # RAY_ADDRESS: join that cluster
        started = True
    try:
        ds = ray.data.from_items([{"entry": pickle.dumps(e)} for e in entries],
                                 override_num_blocks=max(1, min(len(entries) // max(batch_size, 1), 64)))
        kwargs = dict(
            fn_constructor_kwargs=dict(model_bytes=pickle.dumps(model), method=method, layer=layer, target=target,
                                       fit=fit, settings_key=settings_key, done=sorted(done), limits=limits),
            batch_size=batch_size, batch_format="pandas", concurrency=int(options.get("concurrency", 1)),
        )
        if options.get("num_gpus"):
            kwargs["num_gpus"] = options["num_gpus"]
        results = ds.map_batches(AuditActor, **kwargs)
        tables: list[pd.DataFrame] = []
        map_sources: list[np.ndarray] = []
        if store is not None:
            where = store.dir / ".parts" / f"ray-{uuid.uuid4().hex[:8]}"
            results.write_parquet(str(where))  # Ray's own Parquet writer, streaming
            frames = [pd.read_parquet(p) for p in sorted(pathlib.Path(where).glob("*.parquet"))]
        else:
            frames = [results.to_pandas()]
        new = 0
        for df in frames:
            if len(df):
                t, m = split_frame(df)
                new += len(t)
                if store is not None:
                    store.tables.append(t)
                    store.map_sources.append(m)
                else:
                    tables.append(t)
                    map_sources.append(m)
        if progress is not None:
            progress(len(entries), len(entries))
        # Rows skipped as done were not returned by the actors: count them here.
        skipped = len(entries) - new
        return tables, map_sources, new, skipped, False
    finally:
        if started:
            ray.shutdown()
