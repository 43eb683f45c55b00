"""Training data for ImageNet pairs: the train tree, the held-out set, and a sample order that resumes exactly.

Every random draw of training is a function of where it happens, never of what
ran before: the epoch's order comes from timm's RepeatAugSampler seeded by
(seed, epoch); each sample's augmentation (crop, flip, RandAugment, random
erasing) from a seed of (seed, epoch, micro-batch stream, position); mixup/cutmix
and drop path from (seed, epoch, step, micro-batch). So a run resumed from any
step, with any number of DataLoader workers, gives the uninterrupted run's batches.

The ``micro_batches`` of one optimizer step (global batch / micro-batch) are
the "replicas" the sampler splits the epoch into; a run with W processes handles
micro-batches rank, rank + W, ... of each step and accumulates the rest. Which
images and augmentations make up a step therefore depends on the recipe, not on
the number of processes.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from cbbench.data import classes
from cbbench.data.folders import ImageFolderDataset, load_rgb, scan_image_folders
from cbbench.data.imagenet import Layout
from cbbench.errors import DatasetMissingError

TRAIN = Layout("imagenet_train", "ImageNet-1k train", "imagenet/train", "CBBENCH_IMAGENET_TRAIN",
               "<wnid>/<file>.JPEG (1000 wnid folders, 1,281,167 images, 732 to 1,300 per class)")


def train_dir(data_root: Path | None) -> tuple[Path | None, str]:
    """(folder, where it came from) of ImageNet train, found as the eval sets are."""
    from cbbench.data.imagenet import layout_dir

    return layout_dir(TRAIN, data_root)


def imagenet_train(data_root: Path | None) -> ImageFolderDataset:
    """The train tree (labels: the wnid's ImageNet class index), or DatasetMissingError naming the fix."""
    path, source = train_dir(data_root)
    where = f"{path}" if path is not None else f"<data root>/{TRAIN.subdir}"
    fix = f"Expected {where}/{TRAIN.tree}, or the folder named by {TRAIN.env}. How to get it: {TRAIN.card}"
    if path is None:
        raise DatasetMissingError(f"{TRAIN.title} not found: no --data-root / CBBENCH_DATA and {TRAIN.env} is not "
                                  f"set. {fix}")
    if not path.is_dir():
        raise DatasetMissingError(f"{TRAIN.title} not found: {path} is not a folder"
                                  f"{f' ({source})' if source != 'data root' else ''}. {fix}")
    ds = scan_image_folders(path, classes.wnid_to_index(), name=TRAIN.name, num_classes=1000,
                            description="ImageNet-1k train (wnid folders -> class index)")
    if len(ds) == 0:
        raise DatasetMissingError(f"{TRAIN.title}: no images in wnid class folders under {path}. {fix}")
    return ds


def held_out(data_root: Path | None, n: int | None) -> ImageFolderDataset | None:
    """ImageNet val (``<data root>/imagenet/val``) or None when absent; ``n`` evenly spaced images of it."""
    from cbbench.data.imagenet import imagenet_val

    try:
        ds = imagenet_val(data_root)
    except DatasetMissingError:
        return None
    if n is None or n >= len(ds):
        return ds
    keep = list(range(0, len(ds), len(ds) // n))[:n]  # spread over the classes, not the first few
    return replace(ds, paths=[ds.paths[i] for i in keep], labels=ds.labels[keep], corrupt={},
                   description=f"{n} evenly spaced images of {ds.description}")


def files_digest(ds: ImageFolderDataset) -> str:
    """sha256 of the sorted relative paths and labels: resuming on other data would not be a resume."""
    h = hashlib.sha256()
    for i, label in enumerate(ds.labels.tolist()):
        h.update(f"{ds.relpath(i)}\t{label}\n".encode())
    return h.hexdigest()[:16]


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from where a draw happens, e.g. (seed, epoch, step, micro-batch, 'mix')."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seed_everything(seed: int) -> None:
    """Seed the three generators timm's transforms and mixup draw from (python, numpy, torch)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class EpochPlan:
    """Which samples (and augmentation seeds) each micro-batch of every step of one epoch holds."""

    seed: int
    epoch: int
    streams: tuple[tuple[int, ...], ...]  # per micro-batch position u: its samples, RepeatAugSampler rank u
    micro_batch: int
    steps: int

    def micro(self, step: int, u: int) -> list[tuple[int, int]]:
        """(sample index, augmentation seed) of micro-batch ``u`` of ``step``."""
        start = step * self.micro_batch
        return [(i, derive_seed(self.seed, self.epoch, u, start + k, "aug"))
                for k, i in enumerate(self.streams[u][start:start + self.micro_batch])]


def epoch_plan(n_samples: int, seed: int, epoch: int, micro_batches: int, micro_batch: int, aug_repeats: int,
               max_steps: int | None) -> EpochPlan:
    """The epoch's order from timm's RepeatAugSampler, one "replica" per micro-batch position of a step.

    The sampler seeds its permutation with ``set_epoch``: passing a seed derived from
    (seed, epoch) makes the order depend on the seed too (timm's own depends on the epoch only).
    ``aug_repeats`` 1 makes it a plain shuffled, padded split (DistributedSampler's behaviour).
    """
    from timm.data.distributed_sampler import RepeatAugSampler

    streams = []
    for u in range(micro_batches):
        sampler = RepeatAugSampler(range(n_samples), num_replicas=micro_batches, rank=u, shuffle=True,
                                   num_repeats=aug_repeats, selected_round=0)
        sampler.set_epoch(derive_seed(seed, epoch, "order"))
        streams.append(tuple(sampler))
    steps = len(streams[0]) // micro_batch
    if max_steps is not None:
        steps = min(steps, max_steps)
    if steps == 0:
        raise ValueError(f"{n_samples} training images make no full step of {micro_batches} x {micro_batch} "
                         "images; add images or lower batch_size / micro_batch (--set)")
    return EpochPlan(seed, epoch, tuple(streams), micro_batch, steps)


class SeededSamples(torch.utils.data.Dataset):
    """(sample index, seed) -> (augmented image, label, index); the transform's draws come from the seed."""

    def __init__(self, ds: ImageFolderDataset, transform):
        self.paths, self.labels, self.transform = ds.paths, ds.labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]):
        i, seed = key
        seed_everything(seed)
        try:
            image = load_rgb(self.paths[i])
        except OSError as exc:  # a training set should have no broken files: skipping would shift every batch
            raise ValueError(f"training image {self.paths[i]} cannot be decoded ({exc}); replace or remove it") from exc
        return self.transform(image), int(self.labels[i]), i


class MicroBatches(torch.utils.data.Sampler):
    """This process's micro-batches, in step order: for each step, ``u = a * world + rank`` for a < accum."""

    def __init__(self, rank: int, world: int, accum: int):
        self.rank, self.world, self.accum = rank, world, accum
        self.plan: EpochPlan | None = None
        self.start_step = 0

    def set_position(self, plan: EpochPlan, start_step: int) -> None:
        self.plan, self.start_step = plan, start_step

    def __iter__(self):
        for step in range(self.start_step, self.plan.steps):
            for a in range(self.accum):
                yield self.plan.micro(step, a * self.world + self.rank)

    def __len__(self) -> int:
        return (self.plan.steps - self.start_step) * self.accum


def train_loader(ds: ImageFolderDataset, transform, batches: MicroBatches, workers: int, pin_memory: bool):
    """One DataLoader for the whole run (workers persist across epochs; ``batches`` says what to read)."""
    return torch.utils.data.DataLoader(SeededSamples(ds, transform), batch_sampler=batches, num_workers=workers,
                                       pin_memory=pin_memory, persistent_workers=workers > 0)


def train_transform(net: torch.nn.Module, recipe) -> object:
    """timm's ImageNet train transform for ``net``'s input size and normalization, with the recipe's augmentation."""
    from timm.data import create_transform

    from cbbench.data.transforms import data_config

    cfg = data_config(net)
    transform = create_transform(
        cfg["input_size"], is_training=True, scale=recipe.scale, ratio=recipe.ratio, hflip=recipe.hflip,
        color_jitter=recipe.color_jitter, auto_augment=recipe.aa, interpolation=recipe.train_interpolation,
        mean=cfg["mean"], std=cfg["std"], re_prob=recipe.reprob, re_mode=recipe.remode, re_count=recipe.recount)
    for step in getattr(transform, "transforms", []):
        for op in getattr(step, "ops", []):  # RandAugment's / AutoAugment's AugmentOps
            if op.aug_fn is _timm_posterize():
                op.aug_fn = posterize_zero_bits_black
    return transform


def _timm_posterize():
    from timm.data import auto_augment

    return auto_augment.posterize


def posterize_zero_bits_black(img, bits_to_keep, **kwargs):
    """timm's posterize, with 0 bits giving the black image older Pillow gave, not Pillow 13's ValueError.

    timm's PosterizeIncreasing asks for 0 bits when a magnitude draw reaches 10 (with
    rand-m9-mstd0.5: about 2% of its draws); Pillow 13 refuses that, which stopped the first
    full epoch on the sample.
    """
    if bits_to_keep <= 0:
        from PIL import Image

        return Image.new(img.mode, img.size)
    return _timm_posterize()(img, bits_to_keep, **kwargs)


class Mixer:
    """timm's Mixup/CutMix (with label smoothing), its draws seeded per micro-batch; without mixing, hard labels."""

    def __init__(self, recipe, num_classes: int):
        from timm.data import Mixup

        self.mixup = Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, prob=recipe.mixup_prob,
                           switch_prob=recipe.mixup_switch_prob, mode=recipe.mixup_mode,
                           label_smoothing=recipe.smoothing, num_classes=num_classes) if recipe.mixing else None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mixup is None:
            return x, y
        np.random.seed(seed % 2**32)  # timm's Mixup draws lambda, the switch and the box from numpy
        return self.mixup(x, y)

