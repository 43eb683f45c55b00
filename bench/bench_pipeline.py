"""Clean-evaluation pipeline throughput on real ImageNet JPEGs, side by side in one run.

    python bench/bench_pipeline.py [--n 200] [--batch-size 50] [--repeats 4] [--cb-repeats 21] \
        [--ranks] [--data ../shared/datasets/imagenet-sample] [--out results/bench/pipeline.md]

Data: the first ``--n`` files (in cbbench's fixed order) of the ImageNet sample set
(1000 real val-style JPEGs, one per class; see its README), linked into a temporary
``imagenet/val`` tree so every pipeline reads exactly the same files. Model: timm
``deit_tiny_patch16_224`` with seeded random weights (no download is possible here;
speed does not depend on the weights) and its CB twin (cbbench.cb), both wrapped as
cbbench models ([0, 1] input, normalization inside), eval transform from timm's
config (Resize 248 bicubic, CenterCrop 224).

Measured, interleaved (A B C A B C ...), median and range over ``--repeats``:

a. cbbench's clean-eval path: ``ImageFolderDataset`` (DataLoader workers decode and
   transform) + ``run_batches`` (forward, outcomes), images/s wall clock, over the
   same model's bare forward on the same images preloaded as tensors (goal >= 0.9);
b. timm's validation-loop style on the same files and network: ``create_dataset`` +
   ``resolve_data_config`` + ``create_loader`` (same worker count, no prefetcher: CPU)
   + forward + top-1/top-5 (goal: cbbench not slower);
c. CB twin over its baseline: bare forward of one batch, process CPU time (goal >= 0.98);
d. with ``--ranks``: ``cbbench run --tasks imagenet_clean`` in 1 process vs 2 torchrun
   ranks (gloo), the cell's own compute time from the store;
e. memory the batch loop holds per sample for its outcomes (synthetic 10^6 samples).

(a) and (e) wire ``run_batches`` to a results store as the runner does, so the
outcome streaming (every 30 s) is part of what is measured.

Wall-clock times on this shared machine move with the other jobs' load: read
ratios of interleaved medians, not single numbers.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from imagenet_sample import SAMPLE

ROOT = Path(__file__).resolve().parents[1]
ARCH = "deit_tiny_patch16_224"


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def link_tree(data: Path, n: int, dest: Path) -> Path:
    """dest/imagenet/val/<wnid> -> the sample's first n images in cbbench's order (one per class here)."""
    from cbbench.data import classes
    from cbbench.data.folders import scan_image_folders

    ds = scan_image_folders(data, classes.wnid_to_index(), name="imagenet-sample", num_classes=1000,
                            ignore_unknown=True)
    if len(ds) < n:
        raise SystemExit(f"error: {data} holds {len(ds)} images, fewer than --n {n}")
    val = dest / "imagenet" / "val"
    for path in ds.paths[:n]:
        folder = val / Path(path).parent.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / Path(path).name).symlink_to(path)
    return val


def models():
    from cbbench.models.build import load_model
    from cbbench.models.spec import ModelSpec

    spec = ModelSpec(name="deit_tiny_random", arch=ARCH, weights="random", description="seeded random init")
    base = load_model(spec)
    cb = load_model(ModelSpec(name="deit_tiny_random_cb", arch=ARCH, weights="random", cb=True,
                              baseline=spec.name, description="CB twin"))
    return base, cb


def med(values):
    return statistics.median(values)


def spread(values, fmt="{:.1f}"):
    return f"{fmt.format(min(values))}-{fmt.format(max(values))}"


def measure_pipelines(base, val: Path, n: int, b: int, repeats: int, workers: int):
    """(a) and (b): images/s of the bare forward, cbbench's pipeline and timm's loop, interleaved."""
    import timm.data

    from cbbench.data.folders import load_rgb
    from cbbench.data.imagenet import imagenet_val
    from cbbench.runner import stream_every_s
    from cbbench.store import Store
    from cbbench.tasks.base import TaskContext, run_batches
    from cbbench.tasks.context import CellStore, RunSettings

    store = Store(tempfile.mkdtemp(dir=val.parents[2]))  # fresh: no repeat reads back another's outcomes

    os.environ["CBBENCH_IMAGENET_VAL"] = str(val)
    ds = imagenet_val(None)
    ds.num_workers = workers
    tf = base.eval_transform
    t0 = time.perf_counter()
    c0 = time.process_time()
    images = torch.stack([tf(load_rgb(p)) for p in ds.paths])  # preloaded, decoded once, outside the timings
    decode_ms = 1000 * (time.process_time() - c0) / n
    decode_wall_ms = 1000 * (time.perf_counter() - t0) / n

    net = base.net
    cfg = timm.data.resolve_data_config({}, model=net)

    def bare():
        with torch.inference_mode():
            for s in range(0, n, b):
                base(images[s:s + b])

    outcomes, stamps = {}, []

    class Stamps:  # run_batches' progress bar: when each batch's outcomes are done
        def update(self, k=1):
            stamps[-1].append(time.perf_counter())

        def close(self):
            pass

    def cbbench_pipeline():  # as the runner wires it: outcomes streamed to a results store every 30 s
        stamps.append([time.perf_counter()])
        key = f"repeat{len(stamps)}"  # a new cell each repeat: nothing is read back from an earlier one
        outcomes["cbbench"] = run_batches(base, TaskContext(
            ds, RunSettings(batch_size=b), CellStore(store, key, stream_every_s()), transform=tf,
            progress=lambda total, desc: Stamps()))

    def timm_loop():  # timm's validate.py, minus its logging: loader -> model -> top-1/top-5
        dataset = timm.data.create_dataset("", root=str(val), split="validation", is_training=False)
        loader = timm.data.create_loader(
            dataset, input_size=cfg["input_size"], batch_size=b, use_prefetcher=False,
            interpolation=cfg["interpolation"], mean=cfg["mean"], std=cfg["std"], num_workers=workers,
            crop_pct=cfg["crop_pct"], crop_mode=cfg.get("crop_mode"), pin_memory=False, device=torch.device("cpu"))
        preds, correct = [], 0
        with torch.no_grad():
            for x, y in loader:
                out = net(x)
                top5 = out.topk(5, 1).indices
                correct += int((top5[:, 0] == y).sum())
                preds.append(top5[:, 0])
        outcomes["timm"] = torch.cat(preds).numpy()

    runs = {"bare": [], "cbbench": [], "timm": []}
    bare()  # warm-up
    for _ in range(repeats):
        for name, fn in (("bare", bare), ("cbbench", cbbench_pipeline), ("timm", timm_loop)):
            t = time.perf_counter()
            fn()
            runs[name].append(n / (time.perf_counter() - t))
    agree = float((outcomes["cbbench"]["pred"] == outcomes["timm"]).mean())
    # first batch: worker start + decoding one whole batch (in one worker) + its forward; then steady state
    first = [s[1] - s[0] for s in stamps]
    steady = [(n - b) / (s[-1] - s[1]) for s in stamps] if n > b else []
    return runs, decode_ms, decode_wall_ms, agree, cfg, first, steady


def measure_cb(base, cb, images: torch.Tensor, repeats: int):
    """(c): process CPU seconds of one batch's bare forward, CB twin vs baseline, interleaved."""
    times = {"base": [], "cb": []}
    with torch.inference_mode():
        base(images)
        cb(images)
        for r in range(repeats):  # ABBA order: a drift in the machine's speed falls on both alike
            for name, model in (("base", base), ("cb", cb))[::1 if r % 2 == 0 else -1]:
                c = time.process_time()
                model(images)
                times[name].append(time.process_time() - c)
        # Where CB's time goes: its op alone, on activations of this model's shape, once per block,
        # as implemented now (mean + one fused pass) and as the paper's formula reads (three passes).
        from cbbench.cb import ContextBroadcast

        blocks = base.net.blocks
        acts = torch.randn(len(images), base.net.patch_embed.num_patches + base.net.num_prefix_tokens,
                           base.net.embed_dim)
        ops = {"cb op now": ContextBroadcast(), "cb op, 0.5x + 0.5 mean(x)": lambda x: 0.5 * x + 0.5 * x.mean(
            dim=1, keepdim=True)}
        for name in ops:
            times[name] = []
        for _ in range(repeats):
            for name, op in ops.items():
                c = time.process_time()
                for _ in blocks:
                    op(acts)
                times[name].append(time.process_time() - c)
    return times


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure_ranks(base, data_root: Path, n: int, b: int, work: Path):
    """(d): `cbbench run --tasks imagenet_clean` in 1 process vs 2 torchrun ranks; the cell's compute time."""
    from cbbench.store import Store

    ckpt = work / "deit_tiny_random.pth"
    torch.save(base.net.state_dict(), ckpt)
    args = ["-m", "cbbench", "run", "--suite", "robustness_imagenet", "--models", f"timm:{ARCH}@{ckpt}",
            "--tasks", "imagenet_clean", "--limit", str(n), "--batch-size", str(b), "--data-root", str(data_root)]
    env = {k: v for k, v in os.environ.items() if k != "CBBENCH_IMAGENET_VAL"}
    env["HF_HUB_OFFLINE"] = "1"
    result = {}
    for label, prefix in (("1 process", []),
                          ("2 ranks", ["-m", "torch.distributed.run", "--nproc_per_node", "2",
                                       "--master_port", str(free_port())])):
        results = work / label.replace(" ", "_")
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, *prefix, *args, "--results", str(results)], env=env,
                              capture_output=True, text=True, timeout=900)
        total = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(f"error: {label} run failed:\n{proc.stderr[-3000:]}")
        with Store(results) as store:
            run_id, _ = store.latest_run("robustness_imagenet")
            (cell,) = store.run_cells(run_id)
        result[label] = (cell.wall_s, total, cell.metrics["images"], cell.samples["pred"])
    same = bool((result["1 process"][3] == result["2 ranks"][3]).all())
    return result, same


def measure_outcome_memory(n: int = 1_000_000, b: int = 128) -> tuple[float, float]:
    """(e): peak RSS during run_batches over resident before it, per sample; and the bytes per sample it returns.

    An upper bound on what the outcomes hold: it includes allocator slack and the transient batch tensors.
    The loop is wired to a results store as the runner wires it (outcomes streamed every 30 s)."""
    code = f"""
import tempfile
import torch
from cbbench.runner import stream_every_s
from cbbench.store import Store
from cbbench.tasks.base import TaskContext, run_batches
from cbbench.tasks.context import CellStore, RunSettings
class Synthetic:  # an EvalDataset that holds nothing: zero images made per batch
    name, num_classes, description, class_subset, num_workers = "synthetic", 10, "", None, 0
    def __init__(self, n): self.n, self.corrupt, self.decode_fallbacks = n, {{}}, {{}}
    def __len__(self): return self.n
    def batches(self, batch_size, limit=None, transform=None, pin_memory=None, only=None, decode_device=None):
        x = torch.zeros(batch_size, 3, 1, 1)
        for k in (only if only is not None else range(-(-self.n // batch_size))):
            s, e = k * batch_size, min((k + 1) * batch_size, self.n)
            yield x[:e - s], torch.arange(s, e) % 10, torch.arange(s, e)
class Fake(torch.nn.Module):
    def forward(self, x):
        return torch.arange(10.0).expand(len(x), 10) + x.flatten(1)[:, :1]
torch.set_num_threads(1)
store = Store(tempfile.mkdtemp())
def ctx(n, key):
    return TaskContext(Synthetic(n), RunSettings(batch_size={b}), CellStore(store, key, stream_every_s()))
run_batches(Fake(), ctx(10 * {b}, "warm-up"))
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current resident size
before = status("VmHWM")
out = run_batches(Fake(), ctx({n}, "measured"))
grown = status("VmHWM") - before
print(grown / {n}, sum(v.nbytes for v in out.values()) / {n})
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    peak, kept = map(float, out.stdout.split())
    return peak, kept


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200, help="images (default 200)")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=4, help="interleaved repeats of (a)/(b)")
    ap.add_argument("--cb-repeats", type=int, default=21, help="interleaved repeats of (c)")
    ap.add_argument("--ranks", action="store_true", help="also (d): 1 process vs 2 torchrun ranks")
    ap.add_argument("--data", type=Path, default=SAMPLE, help="the ImageNet sample folder")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"error: the ImageNet sample images are not at {args.data}. This benchmark needs real JPEGs in "
              "<wnid>/<file>.JPEG folders (the dev workspace's shared/datasets/imagenet-sample); pass "
              "--data DIR to point at them.", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import timm

    from cbbench.data.folders import default_num_workers

    t_start = time.perf_counter()
    load_before = os.getloadavg()
    n, b = args.n, args.batch_size
    workers = default_num_workers()
    base, cb = models()
    work = Path(tempfile.mkdtemp(prefix="cbbench-bench-"))
    try:
        val = link_tree(args.data, n, work / "data")
        runs, decode_ms, decode_wall_ms, agree, cfg, first, steady = measure_pipelines(
            base, val, n, b, args.repeats, workers)
        from cbbench.data.folders import load_rgb
        batch = torch.stack([base.eval_transform(load_rgb(p)) for p in sorted(val.rglob("*.JPEG"))[:b]])
        cb_times = measure_cb(base, cb, batch, args.cb_repeats)
        ranks = measure_ranks(base, work / "data", n, b, work) if args.ranks else None
        mem = {b_: measure_outcome_memory(b=b_) for b_ in (128, 1024)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    total = time.perf_counter() - t_start

    bare, ours, timm_ = (med(runs[k]) for k in ("bare", "cbbench", "timm"))
    ratio_a = [o / p for o, p in zip(runs["cbbench"], runs["bare"])]
    ratio_b = [o / t for o, t in zip(runs["cbbench"], runs["timm"])]
    cb_pairs = [bt / ct for bt, ct in zip(cb_times["base"], cb_times["cb"])]
    cb_ratio = med(cb_pairs)
    share_now = med(cb_times["cb op now"]) / med(cb_times["base"])
    share_old = med(cb_times["cb op, 0.5x + 0.5 mean(x)"]) / med(cb_times["base"])
    fwd_ms = 1000 / bare
    command = "python bench/bench_pipeline.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Clean-evaluation pipeline throughput (CPU)", "",
        f"Command (from the repository root): `{command.strip()}`", "",
        f"Machine: {cpu_name()}, {os.cpu_count()} CPU cores visible, SHARED with other jobs (noisy); torch threads "
        f"{torch.get_num_threads()}, DataLoader workers {workers} (cbbench's default: one per available core, "
        f"CBBENCH_NUM_WORKERS; timm's loop gets the same); load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after. Python "
        f"{platform.python_version()}, torch {torch.__version__}, timm {timm.__version__}. Total bench time "
        f"{total:.0f} s.", "",
        f"Data: the first {n} images of the ImageNet sample (real JPEGs, one per class, shorter side <= 256), "
        f"batch {b}. Model: {ARCH}, seeded random weights, eval transform {cfg['interpolation']} resize to "
        f"crop_pct {cfg['crop_pct']} + center crop {cfg['input_size'][-1]}. {args.repeats} interleaved repeats; "
        "median (range).", "",
        "## a/b. Images per second, wall clock", "",
        "| pipeline | images/s median | range |", "|---|---|---|",
        f"| bare forward on preloaded tensors (the ceiling) | {bare:.1f} | {spread(runs['bare'])} |",
        f"| cbbench: ImageFolderDataset + `run_batches` (decode, transform, forward, outcomes streamed to the store) | {ours:.1f} | "
        f"{spread(runs['cbbench'])} |",
        f"| timm validate-style: create_dataset + create_loader + forward + top-1/5 | {timm_:.1f} | "
        f"{spread(runs['timm'])} |", "",
        f"- (a) cbbench / bare forward: **{med(ratio_a):.2f}** (per repeat {', '.join(f'{r:.2f}' for r in ratio_a)}); "
        f"goal >= 0.9: **{'met' if med(ratio_a) >= 0.9 else 'NOT met'}**.",
        f"- (b) cbbench / timm loop: **{med(ratio_b):.2f}** (per repeat {', '.join(f'{r:.2f}' for r in ratio_b)}); "
        f"goal: not slower (>= ~0.95 given the noise): **{'met' if med(ratio_b) >= 0.95 else 'NOT met'}**. "
        f"Top-1 predictions of the two pipelines agree on {100 * agree:.1f}% of the images (same files, "
        "same resize/crop; normalization inside the model vs in the loader differs in float rounding, which "
        "can flip near-ties of a random-weight model).",
        f"- Where the time goes: decoding + resize + crop costs {decode_ms:.1f} ms CPU per image "
        f"({decode_wall_ms:.1f} ms wall) in one process, the bare forward {fwd_ms:.1f} ms wall per image "
        f"({torch.get_num_threads()} threads). cbbench's first batch is done {med(first):.2f} s after the call "
        f"(range {spread(first, '{:.2f}')}; worker start, one worker decoding all {b} images of the batch, then "
        f"its forward: {b * fwd_ms / 1000:.2f} s of bare forward), after which it runs at "
        f"{med(steady) if steady else float('nan'):.1f} images/s (steady state, "
        f"{med(steady) / bare if steady else float('nan'):.2f} of the bare forward): the DataLoader workers "
        f"decode the next batches while the model runs. The pipeline fill (about one batch of decoding) is paid "
        f"once per call; at {n} images it is a visible share, over a 50,000-image split it is not. On this "
        "2-core machine decoding also takes CPU from the forward (2 torch threads + 2 workers on 2 cores); "
        "with a GPU doing the forward it overlaps completely.", "",
        "## c. CB twin vs baseline, bare forward of one batch (process CPU s)", "",
        "| model | CPU s median | range |", "|---|---|---|",
        f"| {ARCH} | {med(cb_times['base']):.3f} | {spread(cb_times['base'], '{:.3f}')} |",
        f"| {ARCH} + CB | {med(cb_times['cb']):.3f} | {spread(cb_times['cb'], '{:.3f}')} |", "",
        f"CB throughput / baseline throughput: **{cb_ratio:.3f}** (median of the per-pair ratios, which range "
        f"{spread(cb_pairs, '{:.2f}')}; {args.cb_repeats} pairs in ABBA order); goal >= 0.98: "
        f"**{'met' if cb_ratio >= 0.98 else 'NOT met'}**. On this shared machine a single pair moves by +-10% "
        "(other tenants), so only the median over many pairs means anything.", "",
        f"Where CB's time goes: its op alone, once per block ({len(base.net.blocks)}) on activations of this "
        f"shape, costs {med(cb_times['cb op now']):.3f} s CPU, **{100 * share_now:.1f}%** of the baseline forward "
        f"(expected CB/baseline {1 / (1 + share_now):.3f}); written as the paper's formula "
        f"(`0.5 * x + 0.5 * x.mean(1)`, three passes over the activations) it cost "
        f"{med(cb_times['cb op, 0.5x + 0.5 mean(x)']):.3f} s ({100 * share_old:.1f}%, expected "
        f"{1 / (1 + share_old):.3f}); cbbench/cb.py now computes the bit-identical `add(0.5 * mean, x, alpha=0.5)` "
        "(two passes). What remains is memory traffic (the token mean and one elementwise pass), which a "
        "compiler could fuse (`--compile`); relative to the matmuls it shrinks as 1/embed_dim, so it is largest "
        "for the tiny model measured here (dim 192).", "",
    ]
    if ranks is not None:
        result, same = ranks
        one, two = result["1 process"], result["2 ranks"]
        lines += [
            "## d. 1 process vs 2 torchrun ranks (gloo, CPU)", "",
            f"`cbbench run --tasks imagenet_clean --limit {n}` on the same files; cell time = the task's own "
            "compute time recorded in the store (rank 0's, including the gather); process time includes "
            "startup (imports, model build) and the report.", "",
            "| run | cell s | images/s (cell) | whole command s |", "|---|---|---|---|",
            f"| 1 process ({torch.get_num_threads()} torch threads + {workers} loader workers) | {one[0]:.1f} | "
            f"{one[2] / one[0]:.1f} | {one[1]:.1f} |",
            f"| 2 ranks (torchrun: 1 torch thread each + {workers} loader workers each) | {two[0]:.1f} | "
            f"{two[2] / two[0]:.1f} | {two[1]:.1f} |", "",
            f"Predictions identical between the two: {'yes' if same else 'NO'}. On this 2-core machine two ranks "
            "do not add compute: they split the batches between two processes that share the same two cores "
            "(each with one torch thread instead of two, which can use the cores better than one process's two "
            "threads do); the measurement checks that sharding costs little, not that it scales. Single "
            "measurement of each.", "",
        ]
    lines += [
        "## e. Per-sample outcomes held by the batch loop", "",
        "`run_batches` over 1,000,000 synthetic samples (trivial model), wired to a results store as the runner "
        "wires it (outcomes streamed every 30 s): peak resident memory during the call over resident before it, "
        "per sample, and the bytes per sample of the returned arrays (index, label, pred as int64, correct, "
        "correct_top5, finite as bool, confidence as float32).", "",
        "| batch | peak growth during the call | returned arrays |", "|---|---|---|",
        *[f"| {b_} | **{mem[b_][0]:.0f}** B/sample | {mem[b_][1]:.0f} B/sample |" for b_ in (128, 1024)], "",
        "The peak is about twice the payload because the per-batch arrays and their concatenation coexist at "
        "the end: the outcomes grow with the dataset at this rate (docs/design.md, Memory of the outcomes).", "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
