"""Audit benchmark: pictures per second of ``explain.audit`` against the limit and against peers.

    python bench/audit.py [--quick] [--pictures N] [--batches 1,8,32,64] [--ray] [--json PATH]

Grad-CAM of the top-1 class at the default layer, on ``efficientnet_lite0`` and ``resnet50``
(random weights: only the cost matters), CPU, one process, the same JPEG files for every case:

* **plain**: the limit: decode (``explain.load_image``), preprocess (``Model.view_and_tensor``'s
  arithmetic) and a batched ``torch.no_grad()`` forward of a hook-free copy of the model;
* **ours**: ``explain.audit(model, files, batch_size=B)`` (everything: listing, hashing, decoding,
  the batched forward and backward, the maps, the per-picture measures and the table);
* **explain loop**: ``explain.explain`` on each picture alone (batch size does not apply);
* **pytorch-grad-cam**: its ``GradCAM`` on the same batches (decode and preprocess included), on
  its own copy of the weights, top-1 targets (``targets=None``), as its users call it.

Each case runs ``--rounds`` times, interleaved, and the best round counts (least disturbed by
other load on the machine). Then peak memory (max RSS) of an audit streamed to ``--out`` for N and
10·N pictures in fresh processes, and with ``--ray`` the Ray engine's throughput on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import explain  # noqa: E402
from explain.model import plain_copy  # noqa: E402

TARGET_VS_PLAIN = 0.8
TARGET_VS_PGC = 2.5
TARGET_MEMORY = 1.10


def make_files(folder: str, n: int) -> list[str]:
    """``n`` distinct JPEGs (crops of the bundled photos), about 400×300 each."""
    photos = [explain.load_image(p) for _t, p in explain.list_samples() if not p.name.startswith("digit_")]
    files = []
    for i in range(n):
        img = photos[i % len(photos)]
        w, h = img.size
        k = i // len(photos)
        box = ((7 * k) % max(1, w // 4), (5 * k) % max(1, h // 4))
        crop = img.crop((box[0], box[1], box[0] + w * 3 // 4, box[1] + h * 3 // 4)).resize((400, 300))
        path = os.path.join(folder, f"pic_{i:05d}.jpg")
        crop.save(path, quality=90)
        files.append(path)
    return files


def batches(seq: list, size: int):
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def run_plain(m: explain.Model, module: torch.nn.Module, files: list[str], bs: int) -> None:
    pre = m.preprocess
    with torch.no_grad():
        for chunk in batches(files, bs):
            x = torch.cat([pre.to_tensor(pre.view(explain.load_image(f))) for f in chunk])
            module(x)


def run_ours(m: explain.Model, files: list[str], bs: int) -> None:
    explain.audit(m, files, batch_size=bs)


def run_loop(m: explain.Model, files: list[str], bs: int) -> None:
    for f in files:
        explain.explain(m, explain.load_image(f))
    m.clear_cache()


def make_pgc(m: explain.Model):
    from pytorch_grad_cam import GradCAM

    peer = plain_copy(m.module).eval()
    for p in peer.parameters():  # its own copy: pytorch-grad-cam back-propagates into the weights
        p.requires_grad_(True)
    layer = dict(peer.named_modules())[m.default_layer]
    return GradCAM(model=peer, target_layers=[layer])


def run_pgc(m: explain.Model, cam, files: list[str], bs: int) -> None:
    pre = m.preprocess
    for chunk in batches(files, bs):
        x = torch.cat([pre.to_tensor(pre.view(explain.load_image(f))) for f in chunk])
        cam(input_tensor=x, targets=None)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def throughput(name: str, files: list[str], sizes: list[int], rounds: int, with_loop: bool) -> list[dict]:
    m = explain.load_model(name, weights=None)
    module = plain_copy(m.module).eval()
    cam = make_pgc(m)
    rows = []
    loop_best = None
    if with_loop:
        run_loop(m, files[:4], 1)  # warm-up
        loop_best = min(timed(lambda: run_loop(m, files, 1)) for _ in range(rounds))
    for bs in sizes:
        run_plain(m, module, files[: bs], bs)  # warm-up of each case at this batch size
        run_ours(m, files[: bs], bs)
        run_pgc(m, cam, files[: bs], bs)
        best = {"plain": float("inf"), "ours": float("inf"), "pgc": float("inf")}
        for _ in range(rounds):
            best["plain"] = min(best["plain"], timed(lambda: run_plain(m, module, files, bs)))
            best["ours"] = min(best["ours"], timed(lambda: run_ours(m, files, bs)))
            best["pgc"] = min(best["pgc"], timed(lambda: run_pgc(m, cam, files, bs)))
        n = len(files)
        row = {
            "model": name, "batch": bs,
            "plain_pps": n / best["plain"], "ours_pps": n / best["ours"], "pgc_pps": n / best["pgc"],
            "loop_pps": n / loop_best if loop_best else None,
        }
        row["ours_vs_plain"] = row["ours_pps"] / row["plain_pps"]
        row["ours_vs_pgc"] = row["ours_pps"] / row["pgc_pps"]
        row["ours_vs_loop"] = row["ours_pps"] / row["loop_pps"] if loop_best else None
        rows.append(row)
        print(f"{name:18s} batch {bs:3d}: plain {row['plain_pps']:6.1f}/s  ours {row['ours_pps']:6.1f}/s "
              f"({row['ours_vs_plain']:.2f}× plain)  pytorch-grad-cam {row['pgc_pps']:6.1f}/s "
              f"(ours {row['ours_vs_pgc']:.2f}×)" + (f"  explain loop {row['loop_pps']:.1f}/s" if loop_best else ""),
              flush=True)
    return rows


_MEMORY_CHILD = """
import sys, torch
sys.path.insert(0, {root!r})
torch.set_num_threads({threads})
import explain
m = explain.load_model({model!r}, weights=None)
files = {files!r}
explain.audit(m, files, batch_size={bs}, out={out!r})
# VmHWM: this process's own peak (ru_maxrss would include the parent's peak, inherited at fork).
print([int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0])
"""


def peak_memory(model: str, files: list[str], bs: int, threads: int) -> float:
    """Max RSS (MB) of a fresh process that audits ``files`` streaming to a folder."""
    with tempfile.TemporaryDirectory() as out:
        code = _MEMORY_CHILD.format(root=ROOT, threads=threads, model=model, files=files, bs=bs, out=out)
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(res.stdout.strip().splitlines()[-1]) / 1024.0


def ray_throughput(name: str, files: list[str], bs: int) -> dict:
    import ray

    m = explain.load_model(name, weights=None)
    t0 = time.perf_counter()
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    started = time.perf_counter() - t0
    try:
        first = timed(lambda: explain.audit(m, files, batch_size=bs, engine="ray"))
        second = timed(lambda: explain.audit(m, files, batch_size=bs, engine="ray"))
    finally:
        ray.shutdown()
    local = timed(lambda: explain.audit(m, files, batch_size=bs))
    n = len(files)
    out = {"model": name, "batch": bs, "ray_init_s": started, "ray_pps_first": n / first, "ray_pps": n / second,
           "local_pps": n / local}
    print(f"ray {name} batch {bs}: {out['ray_pps']:.1f}/s (first call {out['ray_pps_first']:.1f}/s, ray.init "
          f"{started:.1f} s) vs local {out['local_pps']:.1f}/s: {out['ray_pps'] / out['local_pps']:.2f}×", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer pictures, batch sizes and rounds")
    ap.add_argument("--pictures", type=int, default=None, help="pictures per timed run (default 128; quick 48)")
    ap.add_argument("--batches", default=None, help="comma list of batch sizes (default 1,8,32,64; quick 1,16,48)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds per case (default 3; quick 1)")
    ap.add_argument("--models", default="efficientnet_lite0,resnet50")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    ap.add_argument("--memory", type=int, default=None, help="N for the memory check of N vs 10·N (default 200; quick 30)")
    ap.add_argument("--ray", action="store_true", help="also time engine='ray' on a local Ray")
    ap.add_argument("--json", default=None, help="write the raw figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n = args.pictures or (48 if args.quick else 128)
    sizes = [int(s) for s in (args.batches or ("1,16,48" if args.quick else "1,8,32,64")).split(",")]
    rounds = args.rounds or (1 if args.quick else 3)
    mem_n = args.memory or (30 if args.quick else 200)
    results: dict = {"pictures": n, "rounds": rounds, "threads": args.threads, "throughput": [], "memory": None}
    with tempfile.TemporaryDirectory() as folder:
        files = make_files(folder, max(n, 10 * mem_n))
        for name in args.models.split(","):
            results["throughput"] += throughput(name, files[:n], sizes, rounds, with_loop=True)
        small = peak_memory("efficientnet_lite0", files[:mem_n], 32, args.threads)
        big = peak_memory("efficientnet_lite0", files[: 10 * mem_n], 32, args.threads)
        results["memory"] = {"small_n": mem_n, "small_mb": small, "big_n": 10 * mem_n, "big_mb": big, "ratio": big / small}
        print(f"peak memory, efficientnet_lite0 streamed to a folder: {mem_n} pictures {small:.0f} MB, "
              f"{10 * mem_n} pictures {big:.0f} MB ({big / small:.2f}×; target ≤ {TARGET_MEMORY}×)", flush=True)
        if args.ray:
            results["ray"] = ray_throughput("efficientnet_lite0", files[:n], 16)
    print("\n| model | batch | plain (pics/s) | ours | ours / plain | explain loop | pytorch-grad-cam | ours / pgc |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["throughput"]:
        print(f"| {r['model']} | {r['batch']} | {r['plain_pps']:.1f} | {r['ours_pps']:.1f} | {r['ours_vs_plain']:.2f}× | "
              f"{r['loop_pps']:.1f} | {r['pgc_pps']:.1f} | {r['ours_vs_pgc']:.2f}× |")
    print(f"targets: ours ≥ {TARGET_VS_PLAIN}× plain, ≥ {TARGET_VS_PGC}× pytorch-grad-cam")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
