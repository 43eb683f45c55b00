"""Training the demo and CIFAR models: a small DeiT-spirited recipe, deterministic on CPU and resumable.

On CPU each model trains on one thread, so its weights do not depend on how many
cores the machine has; several models train at once in worker processes
(``train_missing``), one per core. The float kernels still differ between CPU
types (AVX2 vs AVX-512), so the weights do too: conclusions rest on several seeds.

AdamW, linear warmup then cosine decay (set per step, so resuming needs no
scheduler state), label smoothing, random shifts (zero padding, i.e. the usual
CIFAR "pad and random crop") and, for natural images, random horizontal flips as
light augmentation. Data order and augmentation come from a generator seeded by
(seed, epoch), so an interrupted run resumes from its last epoch checkpoint and
ends with the same weights as an uninterrupted one.

Digits are embedded; CIFAR-10/100 are read from the data root (``--data-root`` /
CBBENCH_DATA, see cbbench/data/cifar.py), kept uint8 and converted per batch.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from cbbench.errors import DatasetMissingError
from cbbench.models.spec import ModelSpec
from cbbench.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    dataset: str
    epochs: int
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 2
    label_smoothing: float = 0.1
    max_shift: int = 3
    hflip: bool = False  # random horizontal flips: right for natural images, not for digits


RECIPES: Registry[Recipe] = Registry("recipe")
RECIPES.register("digits_tiny", Recipe(dataset="digits", epochs=30))
# CIFAR from scratch: 100 epochs (a GPU job: docs/paper.md has the measured CPU cost), batch 128,
# lr 1e-3 and 5 warmup epochs as in ViT-for-small-datasets recipes; pad-4 shifts and flips.
for _dataset in ("cifar10", "cifar100"):
    RECIPES.register(f"{_dataset}_tiny", Recipe(dataset=_dataset, epochs=100, batch_size=128, lr=1e-3,
                                                warmup_epochs=5, max_shift=4, hflip=True))


def load_train_split(dataset: str, data_root: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Training images (N, 3, 32, 32) and labels (N,) int64 of ``dataset``.

    Digits come as float [0,1]; CIFAR as uint8 (150 MB instead of 600 MB of float32),
    which the training loop converts per batch (``unit_float``). ``data_root`` (None:
    CBBENCH_DATA) is only read for datasets that live there.
    """
    if dataset == "digits":
        from cbbench.data.digits import load_digits_split

        return load_digits_split("train")
    from cbbench.data.cifar import CIFAR, load_cifar

    if dataset in CIFAR:
        ds = load_cifar(dataset, "train", data_root)
        return ds.images, ds.labels
    raise ValueError(f"no training data loader for dataset {dataset!r}; available: digits, {', '.join(CIFAR)}")


def unit_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 [0,1] (as the CIFAR eval batches); float images unchanged."""
    return x.float() / 255 if x.dtype == torch.uint8 else x


def lr_at(step: int, total: int, warmup: int, base_lr: float) -> float:
    if step < warmup:
        return base_lr * (step + 1) / warmup
    return 0.5 * base_lr * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero padding), independently."""
    if max_shift == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])


def random_hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2, drawn from ``generator`` (deterministic)."""
    flip = torch.rand(len(x), generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def train_step(net, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer, lr: float,
               label_smoothing: float, what: str) -> tuple[float, int]:
    """One optimizer step at learning rate ``lr``; (summed loss, number correct) of the batch.

    Shared by the demo training and fine-tuning, so both recipes run the same step.
    """
    for group in opt.param_groups:
        group["lr"] = lr
    logits = net(x)
    loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{what}: loss became {loss.item()}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item() * len(y), int((logits.argmax(1) == y).sum().item())


# Bump when a change to the training code changes the weights it produces, so cached checkpoints of the
# old code are not reused (2: single-threaded CPU training).
TRAINING_CODE_VERSION = 2


def checkpoint_path(spec: ModelSpec, checkpoint_dir: str | Path | None = None) -> Path:
    """Named by the spec, its recipe's values and the training code version: a change to any retrains."""
    from cbbench.paths import checkpoint_dir as default_dir

    root = Path(checkpoint_dir) if checkpoint_dir else default_dir()
    recipe = json.dumps({"recipe": asdict(RECIPES.get(spec.recipe)), "code": TRAINING_CODE_VERSION}, sort_keys=True)
    return root / f"{spec.name}-{spec.identity()}-{hashlib.sha256(recipe.encode()).hexdigest()[:8]}.pth"


@contextmanager
def one_thread(device: torch.device):
    """One intra-op thread for CPU training: thread count changes float reductions, hence the weights."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def training_machine(device: torch.device) -> dict:
    """What the trained weights depend on besides the recipe: device, CPU and its float kernels, torch."""
    from cbbench.machine import cpu_model

    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "torch": str(torch.__version__)}


def train_missing(specs: Iterable[ModelSpec], checkpoint_dir: str | Path | None = None,
                  device: str | torch.device = "cpu", data_root: str | Path | None = None,
                  say: Callable[[str], None] = lambda msg: None, progress: Callable | None = None) -> None:
    """Train every spec with a recipe whose checkpoint is not cached yet, in parallel on CPU.

    One worker process per core (``python -m cbbench.train JOB``, each on one thread, so
    the weights equal those of a lone ``train``); on a GPU, one after the other in this
    process. A model whose data is missing is left untrained: loading it reports the
    reason. Finished epochs survive an interrupt (each worker resumes its .partial file).
    """
    device = torch.device(device)
    todo = [s for s in specs if s.weights == "train" and not checkpoint_path(s, checkpoint_dir).is_file()]
    if not todo:
        return
    workers = min(len(todo), os.cpu_count() or 1) if device.type == "cpu" else 1
    epochs = sum(RECIPES.get(s.recipe).epochs for s in todo)
    say(f"training {len(todo)} model(s) on first use ({epochs} epochs in all, {workers} at a time on {device}); "
        f"checkpoints go to {checkpoint_path(todo[0], checkpoint_dir).parent}")
    bar = progress(total=epochs, desc="training", unit="epoch") if progress else None
    try:
        if workers == 1:
            for spec in todo:
                try:
                    train(spec, checkpoint_path(spec, checkpoint_dir), device=device, data_root=data_root,
                          progress=(lambda entry: bar.update(1)) if bar else None)
                except DatasetMissingError:
                    continue
        else:
            _train_in_workers(todo, checkpoint_dir, data_root, workers, bar)
    finally:
        if bar:
            bar.close()


def _train_in_workers(todo: list[ModelSpec], checkpoint_dir, data_root, workers: int, bar) -> None:
    """Run ``workers`` processes ``python -m cbbench.train JOB``, each training its share of the models one after
    the other (torch is imported once per worker) and printing a line per finished epoch.

    Plain subprocesses rather than a multiprocessing pool: nothing re-imports the caller's
    main module, and every worker still running is stopped when this returns or raises.
    """
    import pickle
    import subprocess
    import sys
    import tempfile
    import threading
    from queue import Empty, Queue

    lines: Queue = Queue()
    running: dict[subprocess.Popen, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for w in range(workers):
                share = todo[w::workers]
                job = Path(tmp) / f"worker{w}.job"
                job.write_bytes(pickle.dumps([{"spec": s, "recipe": RECIPES.get(s.recipe), "data_root": data_root,
                                               "out": checkpoint_path(s, checkpoint_dir)} for s in share]))
                proc = subprocess.Popen([sys.executable, "-m", "cbbench.train", str(job)], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
                threading.Thread(target=lambda p=proc: [lines.put(line) for line in p.stdout], daemon=True).start()
                running[proc] = [s.name for s in share]
            while running:
                try:
                    lines.get(timeout=0.5)
                    if bar:
                        bar.update(1)
                except Empty:
                    pass
                for proc in [p for p in running if p.poll() is not None]:
                    names = running.pop(proc)
                    if proc.returncode != 0:
                        err = proc.stderr.read().strip().splitlines()
                        raise RuntimeError(f"training {', '.join(names)} failed in a worker process (exit "
                                           f"{proc.returncode}): {err[-1] if err else 'no message'}")
            while bar is not None and not lines.empty():  # epochs reported just before the last exit
                lines.get()
                bar.update(1)
        finally:
            for proc in running:
                proc.kill()
                proc.wait()


def _worker_main(job_file: str) -> int:
    """Entry of a training worker: its models one after the other, on one thread, a JSON line per epoch.
    A model whose data is missing is skipped (loading it later reports the reason)."""
    import pickle

    jobs = pickle.loads(Path(job_file).read_bytes())  # written just now by _train_in_workers, same user
    parent = os.getppid()

    def report(entry: dict) -> None:
        if os.getppid() != parent:  # the parent is gone: stop; the .partial checkpoint keeps the epochs
            raise SystemExit(1)
        print(json.dumps({"model": entry["model"], "epoch": entry["epoch"]}), flush=True)

    for job in jobs:
        try:
            train(job["spec"], Path(job["out"]), progress=report, data_root=job["data_root"], recipe=job["recipe"])
        except DatasetMissingError:
            continue
    return 0


def trained_checkpoint(spec: ModelSpec, checkpoint_dir: str | Path | None = None,
                       progress: Callable[[dict], None] | None = None, device: str | torch.device = "cpu",
                       data_root: str | Path | None = None) -> Path:
    """The cached checkpoint of ``spec``, training it first when absent (CIFAR needs ``data_root``)."""
    path = checkpoint_path(spec, checkpoint_dir)
    if not path.is_file():
        log.info("training %s (first use) on %s; checkpoint goes to %s", spec.name, device, path)
        train(spec, path, progress=progress, device=device, data_root=data_root)
    return path


def train(spec: ModelSpec, out: Path, progress: Callable[[dict], None] | None = None,
          device: str | torch.device = "cpu", data_root: str | Path | None = None,
          recipe: Recipe | None = None) -> Path:
    """Train ``spec`` with its recipe, checkpointing every epoch to ``out``.partial; resumes from it.

    Bit-for-bit deterministic on one CPU type (one thread, whatever the core count);
    another CPU type or a GPU gives other weights. ``data_root`` (None: CBBENCH_DATA)
    is where CIFAR is read from; digits ignore it. ``recipe`` defaults to the spec's registered one.
    """
    device = torch.device(device)
    with one_thread(device):
        return _train(spec, out, progress, device, data_root, recipe or RECIPES.get(spec.recipe))


def _train(spec: ModelSpec, out: Path, progress, device: torch.device, data_root, recipe: Recipe) -> Path:
    from cbbench.models.build import build_network

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial.pth")
    try:
        x_train, y_train = load_train_split(recipe.dataset, data_root)
    except DatasetMissingError as exc:
        raise DatasetMissingError(f"cannot train {spec.name} (recipe {spec.recipe}): {exc}") from exc
    net = build_network(spec).to(device)
    mean = torch.tensor(spec.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, -1, 1, 1)
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = math.ceil(len(x_train) / recipe.batch_size)
    total, warmup = recipe.epochs * steps_per_epoch, recipe.warmup_epochs * steps_per_epoch
    history: list[dict] = []
    start_epoch = 0
    if partial.is_file():
        state = torch.load(partial, map_location=device, weights_only=True)
        net.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"], state["log"]
        log.info("resuming %s from epoch %d", spec.name, start_epoch)
    for epoch in range(start_epoch, recipe.epochs):
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(spec.seed * 100_003 + epoch)
        net.train()
        order = torch.randperm(len(x_train), generator=gen)
        loss_sum = correct = 0.0
        for i, start in enumerate(range(0, len(x_train), recipe.batch_size)):
            idx = order[start:start + recipe.batch_size]
            x = random_shift(unit_float(x_train[idx]), recipe.max_shift, gen)
            if recipe.hflip:
                x = random_hflip(x, gen)
            x = x.to(device, non_blocking=True)
            y = y_train[idx].to(device, non_blocking=True)
            batch_loss, batch_correct = train_step(
                net, (x - mean) / std, y, opt, lr_at(epoch * steps_per_epoch + i, total, warmup, recipe.lr),
                recipe.label_smoothing, f"training {spec.name} at epoch {epoch + 1}")
            loss_sum += batch_loss
            correct += batch_correct
        entry = {"epoch": epoch + 1, "loss": loss_sum / len(x_train),
                 "train_acc": correct / len(x_train), "seconds": time.perf_counter() - t0}
        history.append(entry)
        _atomic_save({"state_dict": net.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                      "log": history}, partial)
        if progress:
            progress({"model": spec.name, "epochs": recipe.epochs, **entry})
    state_dict = {k: v.cpu() for k, v in net.state_dict().items()}
    _atomic_save({"state_dict": state_dict, "spec": spec.identity(), "recipe": asdict(recipe),
                  "log": history, "device": str(device), "trained_on": training_machine(device)}, out)
    partial.unlink(missing_ok=True)
    return out


def _atomic_save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


if __name__ == "__main__":
    import sys

    sys.exit(_worker_main(sys.argv[1]))
