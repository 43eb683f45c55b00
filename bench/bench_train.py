"""Training throughput of the ImageNet pair trainer (cbbench/training), side by side in one run.

    python bench/bench_train.py [--device cpu|cuda] [--arch deit_tiny_patch16_224] [--batch 8] [--pairs 7] \
        [--data ../shared/datasets/imagenet-sample] [--out results/bench/train.md]

Data: real JPEGs of the ImageNet sample (one per class), through the `smoke` recipe's
augmentation (timm's RandAugment, random erasing, ...) and mixup/cutmix, prepared
once before any timing, so every timed step sees the same tensors. Model: the
architecture's seeded random initialization (speed does not depend on the weights).

Measured, interleaved in ABBA order (A B B A per pair), median of the per-pair ratios:

a. training images/s of the CB arm over the baseline arm: one optimizer step of each
   ``cbbench.training.arm.Arm`` (forward, loss, backward, AdamW, lr update) on the same
   batch (goal >= 0.97);
b. cbbench's training step (the baseline arm) over timm's own training loop on the same
   network, optimizer, schedule, loss and batches (goal >= 0.95). timm's train.py is not
   in the pip wheel, so ``timm_step`` below transcribes the core of its train_one_epoch
   (forward under autocast, loss, zero_grad, backward, optimizer step, EMA update,
   lr_scheduler.step_update) from huggingface/pytorch-image-models train.py;
c. the data pipeline: cbbench's seeded loader (per-sample seeds, RepeatAugSampler order)
   over a plain DataLoader with timm's same train transform and no per-sample seeding,
   images/s with the same worker count.

Wall-clock times on a shared machine move with the other jobs' load: read ratios of
interleaved medians, not single numbers. GPU rows are written only from a GPU run.
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from imagenet_sample import SAMPLE

ROOT = Path(__file__).resolve().parents[1]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def abba(fa, fb, pairs: int, device) -> tuple[list[float], list[float], list[float]]:
    """(times of A, times of B, per-pair ratio time_A / time_B, i.e. speed of B over speed of A)."""
    ta, tb, ratios = [], [], []
    for _ in range(pairs):
        a1, b1, b2, a2 = timed(fa, device), timed(fb, device), timed(fb, device), timed(fa, device)
        ta += [a1, a2]
        tb += [b1, b2]
        ratios.append((a1 + a2) / (b1 + b2))
    return ta, tb, ratios


def timm_step(model, x, target, optimizer, loss_fn, lr_scheduler, model_ema, num_updates, amp_autocast):
    """The core of timm train.py's train_one_epoch for one batch (no logging, no saver); returns num_updates."""
    with amp_autocast():
        output = model(x)
        loss = loss_fn(output, target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if model_ema is not None:
        model_ema.update(model, step=num_updates)
    num_updates += 1
    lr_scheduler.step_update(num_updates=num_updates)
    return num_updates


def prepared_batches(data: Path, recipe, net, n_batches: int, device):
    """``n_batches`` mixed micro-batches from the sample images, through cbbench's seeded pipeline."""
    from cbbench.data import classes
    from cbbench.data.folders import scan_image_folders
    from cbbench.training.data import MicroBatches, Mixer, derive_seed, epoch_plan, train_loader, train_transform

    ds = scan_image_folders(data, classes.wnid_to_index(), name="sample", num_classes=1000, ignore_unknown=True)
    plan = epoch_plan(len(ds), 0, 0, 1, recipe.micro_batch, 1, n_batches)
    sampler = MicroBatches(0, 1, 1)
    sampler.set_position(plan, 0)
    mix = Mixer(recipe, 1000)
    out = []
    for step, (x, y, _) in enumerate(train_loader(ds, train_transform(net, recipe), sampler, 2, False)):
        out.append(mix(x.to(device), y.to(device), derive_seed(0, 0, step, 0, "mix")))
    return ds, out


def measure_data(ds, recipe, net, n_images: int, workers: int, pairs: int):
    """(c): images/s of cbbench's seeded loader and of a plain DataLoader with the same timm transform."""
    from torch.utils.data import DataLoader, Dataset

    from cbbench.data.folders import load_rgb
    from cbbench.training.data import MicroBatches, epoch_plan, train_loader, train_transform

    transform = train_transform(net, recipe)
    steps = n_images // recipe.micro_batch

    class Plain(Dataset):  # timm's ImageDataset in effect: decode, RGB, transform; global RNG, no seeding
        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            return transform(load_rgb(ds.paths[i])), int(ds.labels[i])

    def ours():
        sampler = MicroBatches(0, 1, 1)
        sampler.set_position(epoch_plan(len(ds), 0, 0, 1, recipe.micro_batch, recipe.aug_repeats, steps), 0)
        for _ in train_loader(ds, transform, sampler, workers, False):
            pass

    def plain():
        loader = DataLoader(Plain(), batch_size=recipe.micro_batch, shuffle=True, num_workers=workers, drop_last=True)
        for k, _ in enumerate(loader):
            if k + 1 == steps:
                break

    return abba(plain, ours, pairs, torch.device("cpu"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (GPU rows only from a GPU run)")
    ap.add_argument("--arch", default="deit_tiny_patch16_224")
    ap.add_argument("--batch", type=int, default=8, help="images per timed step (even: mixup pairs)")
    ap.add_argument("--pairs", type=int, default=7, help="ABBA pairs per comparison")
    ap.add_argument("--data-images", type=int, default=96, help="images per timed pass of (c)")
    ap.add_argument("--data", type=Path, default=SAMPLE, help="the ImageNet sample folder")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"error: no sample images at {args.data} (pass --data)", file=sys.stderr)
        return 2
    from timm.loss import SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    from cbbench.runner import pick_device, provenance
    from cbbench.training.arm import Arm
    from cbbench.training.recipe import get_recipe
    from cbbench.training.start import cb_twin, starting_network

    device = pick_device(args.device)
    amp = device.type == "cuda"  # the trainer's default: bf16 autocast on CUDA only
    t_start, load_before = time.perf_counter(), os.getloadavg()
    recipe = get_recipe("smoke", {"batch_size": args.batch, "micro_batch": args.batch})
    net, _ = starting_network(args.arch, {"drop_path_rate": recipe.drop_path_for(args.arch)}, 0, False, None,
                              recipe.name, "scratch")
    twin = cb_twin(net, args.arch)
    timm_net = copy.deepcopy(net).to(device)  # the same starting weights for timm's loop
    arms = {name: Arm(name, n.to(device), recipe, 1000, device, amp=amp) for name, n in
            (("baseline", net), ("cb", twin))}
    ds, batches = prepared_batches(args.data, recipe, arms["baseline"].net, 4, device)
    counter = {"baseline": 0, "cb": 0, "timm": 0}

    def arm_step(name):
        def run():
            x, target = batches[counter[name] % len(batches)]
            counter[name] += 1
            arm = arms[name]
            arm.forward_backward(x, target, seed=counter[name], last=True, scale=1.0)
            arm.step(counter[name])
        return run

    optimizer = create_optimizer_v2(timm_net, opt=recipe.opt, lr=recipe.lr, weight_decay=recipe.weight_decay,
                                    momentum=recipe.momentum, eps=recipe.opt_eps)
    scheduler, _ = create_scheduler_v2(optimizer, sched=recipe.sched, num_epochs=recipe.epochs,
                                       warmup_epochs=recipe.warmup_epochs, warmup_lr=recipe.warmup_lr,
                                       min_lr=recipe.min_lr, step_on_epochs=False, updates_per_epoch=1000)
    loss_fn = SoftTargetCrossEntropy()
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else nullcontext
    timm_net.train()

    def timm_run():
        x, target = batches[counter["timm"] % len(batches)]
        counter["timm"] = timm_step(timm_net, x, target, optimizer, loss_fn, scheduler, None, counter["timm"],
                                    autocast)

    for fn in (arm_step("baseline"), arm_step("cb"), timm_run):  # warm-up (allocator, kernels)
        fn(), fn()
    base_t, cb_t, cb_ratios = abba(arm_step("baseline"), arm_step("cb"), args.pairs, device)
    timm_t, ours_t, step_ratios = abba(timm_run, arm_step("baseline"), args.pairs, device)
    plain_t, seeded_t, data_ratios = measure_data(ds, recipe, arms["baseline"].net, args.data_images, 2,
                                                  max(2, args.pairs // 2))
    prov = provenance(device)
    load_after = os.getloadavg()
    total = time.perf_counter() - t_start
    b = args.batch
    med = statistics.median

    def ips(times):
        return f"{b / med(times):.2f}"

    def verdict(value, goal):
        return "**met**" if value >= goal else "**not met**"

    cb_ratio, step_ratio = med(cb_ratios), med(step_ratios)
    cpu = prov.get("cpu") or platform.processor() or platform.machine()
    lines = [
        f"# Training throughput of the pair trainer ({device.type.upper()})", "",
        "Command (from the repository root): `python bench/bench_train.py " + " ".join(argv or sys.argv[1:]) + "`",
        "",
        f"Machine: {prov['device']}, CPU {cpu}, {os.cpu_count()} CPU cores visible; torch "
        f"threads {torch.get_num_threads()}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after. "
        f"Python {prov['python']}, torch {torch.__version__}, timm {prov['versions']['timm']}. "
        f"Total bench time {total:.0f} s.", "",
        f"Model: {args.arch}, seeded random init, drop path {recipe.drop_path_for(args.arch)}, AdamW, "
        f"{'bf16 autocast' if amp else 'fp32 (no autocast: the trainer default on CPU)'}. Data: {len(batches)} "
        f"batches of {b} real sample images through the `smoke` recipe's augmentation and mixup/cutmix, prepared "
        f"before timing. {args.pairs} ABBA pairs per comparison; median (range) per step.", "",
        "## a. CB arm over baseline arm (one optimizer step each, same batch)", "",
        "| arm | s per step median | range | images/s |", "|---|---|---|---|",
        f"| baseline | {med(base_t):.3f} | {min(base_t):.3f}-{max(base_t):.3f} | {ips(base_t)} |",
        f"| CB | {med(cb_t):.3f} | {min(cb_t):.3f}-{max(cb_t):.3f} | {ips(cb_t)} |", "",
        f"CB images/s over baseline images/s: **{cb_ratio:.3f}** (median of {len(cb_ratios)} pairs, per pair "
        f"{min(cb_ratios):.3f}-{max(cb_ratios):.3f}); goal >= 0.97: {verdict(cb_ratio, 0.97)}.", "",
        "## b. cbbench's step over timm's train.py loop (same network, optimizer, schedule, loss, batches)", "",
        "| loop | s per step median | range | images/s |", "|---|---|---|---|",
        f"| timm train_one_epoch core (transcribed, see the script) | {med(timm_t):.3f} | "
        f"{min(timm_t):.3f}-{max(timm_t):.3f} | {ips(timm_t)} |",
        f"| cbbench `Arm.forward_backward` + `Arm.step` | {med(ours_t):.3f} | {min(ours_t):.3f}-{max(ours_t):.3f} | "
        f"{ips(ours_t)} |", "",
        f"cbbench images/s over timm's: **{step_ratio:.3f}** (median of {len(step_ratios)} pairs, per pair "
        f"{min(step_ratios):.3f}-{max(step_ratios):.3f}); goal >= 0.95: {verdict(step_ratio, 0.95)}. What cbbench "
        "adds per micro-batch: a `torch.manual_seed` (drop-path draws as a function of the step, for exact "
        "resume and identical masks in both arms), an autocast context even when disabled, and a loss sum kept "
        "on the device (no `.item()` sync per step).", "",
    ]
    n = args.data_images
    lines += [
        "## c. Data pipeline: seeded loader over a plain DataLoader (same transform, 2 workers)", "",
        "| loader | s per pass median | range | images/s |", "|---|---|---|---|",
        f"| plain DataLoader, timm's train transform, global RNG | {med(plain_t):.2f} | "
        f"{min(plain_t):.2f}-{max(plain_t):.2f} | {n / med(plain_t):.1f} |",
        f"| cbbench: per-sample seeds, RepeatAugSampler order | {med(seeded_t):.2f} | "
        f"{min(seeded_t):.2f}-{max(seeded_t):.2f} | {n / med(seeded_t):.1f} |", "",
        f"Seeded over plain images/s: **{med(data_ratios):.3f}** (median of {len(data_ratios)} pairs, per pair "
        f"{min(data_ratios):.3f}-{max(data_ratios):.3f}); each pass of {n} images includes starting the "
        "workers.", "",
    ]
    if device.type == "cpu":
        lines += ["No GPU numbers: this run had no GPU. `--device cuda` measures the same on a GPU "
                  "(with bf16 autocast, the trainer's default there).", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
