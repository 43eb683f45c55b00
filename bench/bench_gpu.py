"""GPU evaluation throughput against the bare forward (issue 20): is the GPU kept busy?

    python bench/bench_gpu.py                       # on a CUDA machine: writes results/bench/gpu.md
    python bench/bench_gpu.py --device cpu --smoke --out /tmp/bench_gpu_smoke.md   # the logic, on a CPU

Per model (DeiT-Ti/S/B, seeded random weights, bf16 autocast, channels-last, batch 256),
each as images/s and as a ratio to the bare forward:

* bare forward on preloaded device tensors (the ceiling);
* decode only: cbbench's val batches with --decode gpu, no model (the other ceiling);
* ``imagenet_clean`` with --decode gpu (and with --decode cpu, PIL in workers, for the first model);
* precomputed ``imagenet_c``: one cell written by ``make-c`` from the sample, read from its files;
* ``imagenet_c_generated``: the 15 benchmark corruptions at severity 3, one pass, per image-cell.

Data: the ImageNet sample (1000 JPEGs; ``.gpu-data/imagenet-sample`` on the offline GPU
machine, else ``../shared/datasets/imagenet-sample``), each file linked as many times as
--images needs. Targets on an H200, DeiT-B: imagenet_clean >= 0.7 of the bare forward,
generated >= 0.3 per image-cell. Made to fit in 5 minutes there (--budget-s stops early,
saying so). Without a CUDA device it exits with a message, except ``--smoke`` (tiny sizes,
any device), which never writes results/bench/gpu.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from imagenet_sample import SAMPLE, SAMPLES

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224")
RESULT = ROOT / "results" / "bench" / "gpu.md"


def link_val(sample: Path, n: int, dest: Path) -> Path:
    """dest/imagenet/val/<wnid>/: the sample's files, each linked until there are n (name suffix _k)."""
    from cbbench.data import classes
    from cbbench.data.folders import scan_image_folders

    ds = scan_image_folders(sample, classes.wnid_to_index(), name="sample", num_classes=1000, ignore_unknown=True)
    if not len(ds):
        raise SystemExit(f"error: no images in wnid folders under {sample}")
    for k in range(n):
        src = Path(ds.paths[k % len(ds)])
        folder = dest / "imagenet" / "val" / src.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{src.stem}_{k // len(ds):03d}{src.suffix}").symlink_to(src)
    return dest


def seconds(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


def bench_model(arch: str, a, data: Path, device: torch.device, pipeline, first: bool, deadline: float) -> list:
    """[(pipeline, images, seconds)] for one model; rows past the deadline are (name, images, None)."""
    from cbbench.corruptions.catalog import BENCHMARK_CORRUPTIONS
    from cbbench.data.registry import load_dataset
    from cbbench.data.folders import to_tensor_only
    from cbbench.data.imagenet import ImageNetC
    from cbbench.data.transforms import data_config
    from cbbench.models.build import load_model
    from cbbench.models.spec import ModelSpec
    from cbbench.tasks import TASKS
    from cbbench.tasks.base import TaskContext, _eval_forward, run_batches
    from cbbench.tasks.context import RunSettings
    from cbbench.tasks.imagenet_c_generated import GeneratedImageNetCTask

    model = load_model(ModelSpec(name=f"{arch}_random", arch=arch, weights="random"), device=device)
    if pipeline.channels_last:
        model.to(memory_format=torch.channels_last)
    ctx = TaskContext(None, RunSettings(device=device, batch_size=a.batch, data_root=data, pipeline=pipeline,
                                        decode_on_device=True), transform=model.eval_transform)
    rows = []

    def row(name: str, images: int, fn) -> None:
        if time.perf_counter() > deadline:
            rows.append((name, images, None))
            return
        rows.append((name, images, seconds(fn, device)))
        print(f"{arch}: {name}: {images} images in {rows[-1][2]:.2f} s", flush=True)

    size = data_config(model.net)["input_size"][-2:]
    x = torch.rand(a.batch, 3, *size, device=device)
    x = x.contiguous(memory_format=torch.channels_last) if pipeline.channels_last else x
    batches = max(1, a.images // a.batch)
    _eval_forward(model, x, ctx, False)  # warm-up: kernels, autotuning

    def bare():
        for _ in range(batches):
            _eval_forward(model, x, ctx, False)

    row("bare forward (preloaded device tensors)", batches * a.batch, bare)
    val = load_dataset("imagenet_val", data)
    row("decode only (--decode gpu, no model)", a.images,
        lambda: [None for _ in val.batches(a.batch, a.images, transform=model.eval_transform, decode_device=device)])
    clean = TASKS.get("imagenet_clean")
    row("imagenet_clean, --decode gpu", a.images,
        lambda: clean.evaluate(model, ctx.with_run(limit=a.images)))
    if first:
        row("imagenet_clean, --decode cpu (PIL in workers)", a.images,
            lambda: clean.evaluate(model, ctx.with_run(limit=a.images, decode_on_device=False)))
    cell = ImageNetC(data / "imagenet-c").cell(*a.c_cell)
    row(f"imagenet_c precomputed, cell {a.c_cell[0]}/{a.c_cell[1]} from files, --decode gpu", a.c_images,
        lambda: run_batches(model, dataclasses.replace(ctx.with_run(limit=a.c_images), dataset=cell,
                                                       transform=to_tensor_only())))
    corruptions = BENCHMARK_CORRUPTIONS[: a.corruptions]
    task = GeneratedImageNetCTask(corruptions=corruptions, holdout=(), severities=(3,))
    cells, _, _ = task._cells(model, ctx.with_run(limit=a.c_images))
    row(f"imagenet_c_generated, {len(corruptions)} corruptions x severity 3 in one pass, per image-cell",
        a.c_images * len(corruptions), lambda: cells([(c, 3) for c in corruptions]))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--images", type=int, default=10_000, help="val images for the forward, decode and clean rows")
    ap.add_argument("--c-images", type=int, default=1000, help="images for the ImageNet-C rows")
    ap.add_argument("--corruptions", type=int, default=15, help="the first N benchmark corruptions (generated row)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--amp", default="bf16")
    ap.add_argument("--budget-s", type=float, default=270, help="rows starting after this many seconds are skipped")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, any device: checks the logic, not the speed")
    ap.add_argument("--out", default=None, help=f"markdown file (default {RESULT.relative_to(ROOT)} on CUDA)")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    if device.type != "cuda" and not a.smoke:
        print("bench_gpu.py measures a CUDA GPU and none was asked for (--device); --device cpu --smoke checks "
              "the script's logic", file=sys.stderr)
        return 2
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu.py: no CUDA device is visible (torch.cuda.is_available() is False): nothing measured. "
              "Run it on a GPU machine, or --device cpu --smoke to check the script's logic", file=sys.stderr)
        return 2
    out = Path(a.out) if a.out else (RESULT if device.type == "cuda" and not a.smoke else None)
    if out is not None and out.resolve() == RESULT.resolve() and (device.type != "cuda" or a.smoke):
        print(f"refusing to write {RESULT.relative_to(ROOT)} from a {'smoke' if a.smoke else device.type} run: it "
              "holds GPU measurements only", file=sys.stderr)
        return 2
    if a.smoke:
        a.models, a.images, a.c_images, a.batch, a.corruptions = a.models[:1], 16, 8, 8, 2
        a.amp = a.amp if device.type == "cuda" else "off"
    a.c_cell = ("gaussian_noise", 3)
    sample = SAMPLE
    if not sample.is_dir():
        print(f"no ImageNet sample at {' or '.join(map(str, SAMPLES))} (shared/tools/gpu-prepare.sh copies it to "
              ".gpu-data/)", file=sys.stderr)
        return 2
    from cbbench.data.make_c import make_c
    from cbbench.tasks.context import Pipeline

    pipeline = Pipeline(amp=a.amp, channels_last=device.type == "cuda")
    t0 = time.perf_counter()
    deadline = t0 + a.budget_s
    with tempfile.TemporaryDirectory() as tmp:
        data = link_val(sample, a.images, Path(tmp))
        make_c(data / "imagenet" / "val", data / "imagenet-c", [a.c_cell[0]], [a.c_cell[1]], limit=a.c_images,
               batch_size=64, device=device)  # not timed: the precomputed cell the imagenet_c row reads
        results = {arch: bench_model(arch, a, data, device, pipeline, i == 0, deadline)
                   for i, arch in enumerate(a.models)}
    text = report(a, argv, device, pipeline, sample, results, time.perf_counter() - t0)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}", file=sys.stderr)
    return 0


def report(a, argv, device, pipeline, sample, results: dict, total_s: float) -> str:
    import timm
    import torchvision

    from cbbench.data.folders import default_num_workers

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"none (CPU {platform.machine()})"
    cmd = "python bench/bench_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# GPU evaluation throughput (issue 20)" + (" -- SMOKE RUN: tiny sizes, not a measurement" if a.smoke else ""),
        "",
        f"- command: `{cmd.strip()}`; total {total_s:.0f} s",
        f"- machine: GPU {gpu}; {len(os.sched_getaffinity(0))} CPU cores available, DataLoader workers "
        f"{default_num_workers()}; 1-minute load average {os.getloadavg()[0]:.1f} at the end",
        f"- versions: Python {platform.python_version()}, torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}, timm {timm.__version__}; {datetime.now(timezone.utc):%Y-%m-%d}",
        f"- evaluation: seeded random weights, amp {pipeline.amp}, channels-last "
        f"{'yes' if pipeline.channels_last else 'no'}, batch {a.batch}; images: {sample} linked up to {a.images}",
        "",
        "| model | pipeline | images | s | images/s | / bare forward |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for arch, rows in results.items():
        bare = rows[0][1] / rows[0][2] if rows[0][2] else None
        for name, n, s in rows:
            if s is None:
                lines.append(f"| {arch} | {name} | {n} | skipped (--budget-s) | | |")
                continue
            ratio = f"{n / s / bare:.2f}" if bare else ""
            lines.append(f"| {arch} | {name} | {n} | {s:.2f} | {n / s:,.0f} | {ratio} |")
    lines.append("")
    for arch, rows in results.items():
        got = {name.split(" (")[0].split(",")[0]: n / s for name, n, s in rows if s}
        if "bare forward" in got and "decode only" in got:
            limit = "decode" if got["decode only"] < got["bare forward"] else "forward"
            lines.append(f"- {arch}: decode alone {got['decode only']:,.0f} images/s, bare forward "
                         f"{got['bare forward']:,.0f} images/s: the ceiling is the {limit}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
