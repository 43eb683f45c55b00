"""Engine vs reference corruption speed: ms per image per corruption, side by side.

    python bench/bench_corruptions.py [--size 224] [--batch 16] [--severity 3]
                                      [--device cpu|cuda] [--out results/bench/corruptions.md]

Images: real ImageNet sample images (Resize 256 + CenterCrop 224, then resized to
--size if different); random images only if the sample folder is missing (said so
in the output). Each corruption is timed for the engine (one batched call on
--device, after a warm-up call) and for the reference adapter (imagecorruptions
1.1.2, per image, always CPU) in the same run, interleaved; best of --repeats.
The goal (issue #4) is the 19 together at >= 20x the reference on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cbbench.corruptions.engine import ALL_CORRUPTIONS, corrupt
from cbbench.corruptions.reference import reference_corrupt

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "imagenet-sample"


def load_images(n: int, size: int) -> tuple[torch.Tensor, str]:
    files = sorted(SAMPLE.glob("*/*.JPEG")) if SAMPLE.is_dir() else []
    if not files:
        g = torch.Generator().manual_seed(0)
        return torch.round(torch.rand(n, 3, size, size, generator=g) * 255) / 255, (
            f"RANDOM images (sample folder {SAMPLE} missing)")
    from PIL import Image

    out = []
    for f in files[:: max(1, len(files) // n)][:n]:
        im = Image.open(f).convert("RGB")
        s = 256 / min(im.size)
        im = im.resize((max(256, round(im.width * s)), max(256, round(im.height * s))), Image.BILINEAR)
        left, top = (im.width - 224) // 2, (im.height - 224) // 2
        im = im.crop((left, top, left + 224, top + 224))
        if size != 224:
            im = im.resize((size, size), Image.BILINEAR)
        out.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255)
    return torch.stack(out), f"{len(out)} real ImageNet sample images ({SAMPLE.name})"


def best_ms(fn, repeats: int, device: torch.device = torch.device("cpu")) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t)
    return best * 1000


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)} (engine); reference on {os.cpu_count()} CPU cores"
    return (f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
            f"{torch.get_num_threads()} torch threads, no GPU")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--severity", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--ref-max", type=int, default=None,
                    help="time the reference on at most this many images (glass_blur is slow)")
    ap.add_argument("--device", default="cpu", help="device of the engine (the reference is numpy, CPU)")
    ap.add_argument("--out", default=None, help="append a markdown section to this file")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    load_start = os.getloadavg()[0]
    x, what = load_images(a.batch, a.size)
    xd = x.to(device)
    b = x.shape[0]
    nref = min(b, a.ref_max or b)
    rows, tot_e, tot_r = [], 0.0, 0.0
    for name in ALL_CORRUPTIONS:
        g = torch.Generator(device).manual_seed(0)
        corrupt(xd[:2], name, a.severity, g)  # warm-up (caches, lazy imports, kernels)
        reference_corrupt(x[:1], name, a.severity)
        e = best_ms(lambda: corrupt(xd, name, a.severity, g), a.repeats, device) / b
        r = best_ms(lambda: reference_corrupt(x[:nref], name, a.severity), a.repeats if nref * 50 < 2000 else 1) / nref
        rows.append((name, e, r))
        tot_e, tot_r = tot_e + e, tot_r + r
        print(f"{name:18s} engine {e:8.2f}  reference {r:8.2f} ms/img  x{r / e:6.1f}", flush=True)
    cmd = "python bench/bench_corruptions.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"## {a.size}x{a.size}, batch {b}, severity {a.severity}",
        "",
        f"- command: `{cmd.strip()}`",
        f"- machine: {machine(device)}; torch {torch.__version__}; 1-minute load average {load_start:.1f} at "
        f"start, {os.getloadavg()[0]:.1f} at the end (a shared machine: other jobs above the core count "
        f"distort torch's thread pool far more than the single-threaded reference)",
        f"- images: {what}; reference timed on {nref} of them; best of {a.repeats}",
        "",
        "| corruption | engine ms/img | reference ms/img | speedup |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {n} | {e:.2f} | {r:.2f} | {r / e:.1f}x |" for n, e, r in rows]
    lines += [f"| **all 19** | **{tot_e:.1f}** | **{tot_r:.1f}** | **{tot_r / tot_e:.1f}x** |", ""]
    glass = next((e, r) for n, e, r in rows if n == "glass_blur")
    rest = (tot_r - glass[1]) / (tot_e - glass[0])
    lines += [
        f"All 19 together: **{tot_r / tot_e:.1f}x** the reference's throughput"
        + (f" (goal >= 20x on 2 CPU cores: **{'met' if tot_r / tot_e >= 20 else 'NOT met'}**)."
           if device.type == "cpu" else "."),
        f"glass_blur's pixel-by-pixel Python loop is {100 * glass[1] / tot_r:.0f}% of the reference's time; "
        f"the other 18 together are {rest:.1f}x.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        with open(a.out, "a") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
