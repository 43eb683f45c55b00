"""``train_pair``: a baseline and its CB twin trained in lockstep from one data stream.

Each step, this process reads its micro-batches (its share of the step's global
batch), applies mixup/cutmix once, and gives the very same tensors to both arms;
each arm accumulates gradients and steps its own optimizer, schedule and EMA.
Under torchrun the micro-batches of a step are spread over the processes (DDP
averages the gradients), so 1 process with accumulation and N processes compute
the same step. Rank 0 writes everything; every rank evaluates its share of the
held-out set.
"""
from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from cbbench import distributed
from cbbench.training import card as cards
from cbbench.training.arm import Arm, held_out_top1
from cbbench.training.data import (Mixer, MicroBatches, derive_seed, epoch_plan, files_digest, held_out,
                                   imagenet_train, train_loader, train_transform)
from cbbench.training.recipe import get_recipe
from cbbench.training.start import cb_twin, check_arch, check_out, starting_network
from cbbench.training.state import STATE_FILE, check_same_run, read_state, save_state


@dataclass(frozen=True)
class Runtime:
    """How this session runs: not what is trained on, only float rounding (bf16 a lot, the others in the last bits)."""

    device: torch.device
    amp: bool = False  # bf16 autocast
    channels_last: bool = False
    compile: bool = False
    workers: int = 0
    save_every: int = 500  # optimizer steps between mid-epoch checkpoints (and one at each epoch end)
    progress: bool = True


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def train_pair(recipe_name: str, arch: str, data_root: Path | None, out: Path, runtime: Runtime, *,
               sets: dict | None = None, seed: int = 0, pretrained: bool = False, init: str | Path | None = None,
               resume: bool = False, say: Callable[[str], None] | None = None,
               trace: Callable[[dict], None] | None = None) -> dict:
    """Train the pair into ``out`` (baseline.pth, cb.pth, card.json/.md, log.csv/.json); returns the card.

    ``sets`` overrides recipe values; ``trace`` (tests) receives, for every micro-batch
    and arm, the sample indices and digests of the input and target tensors it saw.
    """
    out = Path(out)
    say = say or (lambda msg: None)
    recipe = get_recipe(recipe_name, sets)
    rank, world = distributed.world()
    main = rank == 0
    if recipe.micro_batches % world:
        raise ValueError(f"recipe {recipe.name}: a step of {recipe.batch_size} images is {recipe.micro_batches} "
                         f"micro-batches of {recipe.micro_batch}, which {world} processes cannot share evenly; "
                         f"use a process count dividing {recipe.micro_batches} or --set micro_batch=...")
    accum = recipe.micro_batches // world
    check_arch(arch)
    check_out(out)
    state_path = out / STATE_FILE
    if state_path.exists() and not resume:
        raise ValueError(f"{out} already holds a training run ({STATE_FILE}); pass --resume to continue it, "
                         "or train into a new --out")
    train_ds = imagenet_train(data_root)
    val_ds = held_out(data_root, recipe.eval_images)
    model_kwargs = {**recipe.model_kwargs, "drop_path_rate": recipe.drop_path_for(arch)}
    net, how = starting_network(arch, model_kwargs, seed, pretrained, init, recipe.name, recipe.init)
    device = runtime.device
    nets = {"baseline": net, "cb": cb_twin(net, arch)}
    config = {"recipe": recipe.to_dict(), "arch": arch, "seed": seed,  # what a resume must match
              "init": {"kind": how["kind"], "digest": how["digest"]},
              "train": {"images": len(train_ds), "classes": int(train_ds.labels.unique().numel()),
                        "digest": files_digest(train_ds)},
              "held_out": {"images": len(val_ds), "digest": files_digest(val_ds)} if val_ds is not None else None}

    def plan(epoch: int):
        return epoch_plan(len(train_ds), seed, epoch, recipe.micro_batches, recipe.micro_batch, recipe.aug_repeats,
                          recipe.steps_per_epoch)

    steps = plan(0).steps  # the same every epoch
    arms = {name: Arm(name, n.to(device), recipe, steps, device, amp=runtime.amp,
                      channels_last=runtime.channels_last, compile=runtime.compile) for name, n in nets.items()}
    epoch, start_step, num_updates, history, carried_seconds = 0, 0, 0, [], 0.0
    if resume and state_path.exists():
        state = read_state(state_path)
        check_same_run(state["config"], config, state_path)
        for name, arm in arms.items():
            arm.load_state_dict(state["arms"][name])
        epoch, start_step, num_updates = state["epoch"], state["step"], state["num_updates"]
        history, carried_seconds = state["history"], state["epoch_seconds"]
        say(f"resuming {out} at epoch {epoch + 1}, step {start_step + 1}/{steps}" if epoch < recipe.epochs
            else f"{out}: all {recipe.epochs} epochs already done; rewriting its files")
    elif resume:
        say(f"--resume: no {STATE_FILE} in {out} yet; starting from the beginning")

    batches = MicroBatches(rank, world, accum)
    loader = train_loader(train_ds, train_transform(nets["baseline"], recipe), batches, runtime.workers,
                          pin_memory=device.type == "cuda")
    mix = Mixer(recipe, num_classes=train_ds.num_classes)
    t_session = time.perf_counter()
    bar = None
    if main and runtime.progress and epoch < recipe.epochs:
        from tqdm.auto import tqdm

        done = epoch * steps + start_step
        bar = tqdm(total=recipe.epochs * steps * recipe.batch_size, initial=done * recipe.batch_size, unit="img",
                   unit_scale=True, desc=f"pair {arch}", file=sys.stderr, dynamic_ncols=True, smoothing=0.05)

    def checkpoint(next_epoch: int, next_step: int, seconds: float) -> None:
        if main:
            save_state(state_path, config=config, arms=arms, epoch=next_epoch, step=next_step,
                       num_updates=num_updates, history=history, epoch_seconds=seconds)
        distributed.barrier()

    for name, arm in arms.items():
        arm.net.train()
    while epoch < recipe.epochs:
        t_epoch = time.perf_counter() - carried_seconds
        p = plan(epoch)
        batches.set_position(p, start_step)
        stream = iter(loader)
        for step in range(start_step, steps):
            for a in range(accum):
                x, y, idx = next(stream)
                u = a * world + rank
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                x, target = mix(x, y, derive_seed(seed, epoch, step, u, "mix"))
                if runtime.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                drop_seed = derive_seed(seed, epoch, step, u, "drop")
                for name, arm in arms.items():
                    arm.forward_backward(x, target, drop_seed, last=a == accum - 1, scale=1 / accum)
                    if trace is not None:
                        trace({"arm": name, "epoch": epoch, "step": step, "micro": u, "indices": idx.tolist(),
                               "x": _digest(x), "target": _digest(target)})
            num_updates += 1
            for arm in arms.values():
                arm.step(num_updates)
            if bar is not None:
                bar.update(recipe.batch_size)
            if num_updates % runtime.save_every == 0 and step + 1 < steps:
                checkpoint(epoch, step + 1, time.perf_counter() - t_epoch)
        row = {"epoch": epoch + 1, "images": steps * recipe.batch_size, "lr": arms["baseline"].lr}  # at its end
        row.update({f"{name}_loss": arm.end_epoch(epoch) for name, arm in arms.items()})
        if val_ds is not None:
            evaluated = {name: arm.net for name, arm in arms.items()}
            evaluated.update({f"{name}_ema": arm.ema.module for name, arm in arms.items() if arm.ema is not None})
            top1 = held_out_top1(evaluated, val_ds, device, recipe.micro_batch, runtime.amp)
            row.update({f"{name}_top1": value for name, value in top1.items()})
        row["seconds"] = time.perf_counter() - t_epoch
        history.append(row)
        epoch, start_step, carried_seconds = epoch + 1, 0, 0.0
        checkpoint(epoch, 0, 0.0)
        if main:
            cards.write_logs(out, history)
            say(f"epoch {row['epoch']}/{recipe.epochs}: " + " | ".join(
                f"{name} loss {row[f'{name}_loss']:.4f}"
                + (f", top-1 {100 * row[f'{name}_top1']:.2f}%" if f"{name}_top1" in row else "") for name in arms)
                + f" | {row['seconds']:.0f} s")
    if bar is not None:
        bar.close()
    if not main:
        return {}
    return _finish(out, arms, config, history, num_updates, runtime, train_ds, val_ds, how["source"],
                   time.perf_counter() - t_session)


def _finish(out: Path, arms: dict, config: dict, history: list, num_updates: int, runtime: Runtime, train_ds, val_ds,
            init_source: str | None, wall: float) -> dict:
    """Write the plain state_dicts and the card (rank 0)."""
    from cbbench.runner import provenance
    from cbbench.train import _atomic_save

    files = {}
    for name, arm in arms.items():
        variants = [(f"{name}.pth", False)] + ([(f"{name}_ema.pth", True)] if arm.ema is not None else [])
        for filename, ema in variants:
            _atomic_save(arm.weights(ema=ema), out / filename)
            files[filename] = cards.sha256(out / filename)
    prov = provenance(runtime.device)
    card = {
        "config": config, "out": str(out.resolve()), "epochs_done": len(history), "optimizer_steps": num_updates,
        "history": history, "files": files,
        "data": {"train": str(train_ds.root), "held_out": str(val_ds.root) if val_ds is not None else None,
                 "init": init_source},
        "runtime": {"device": prov["device"], "cpu": prov.get("cpu"), "processes": distributed.world()[1],
                    "accumulation": config["recipe"]["batch_size"] // config["recipe"]["micro_batch"]
                    // distributed.world()[1], "amp": "bf16" if runtime.amp else "off",
                    "channels_last": runtime.channels_last, "compile": runtime.compile, "workers": runtime.workers,
                    "threads": prov["threads"]},
        "versions": prov["versions"], "python": prov["python"], "date": prov["date"], "wall_seconds": wall,
    }
    cards.write_card(out, card)
    return card
