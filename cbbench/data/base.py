"""Evaluation datasets: what a task iterates over, and the registry of them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from cbbench.registry import Registry


from cbbench.errors import DatasetMissingError  # noqa: F401 (re-exported)


@dataclass
class TensorDataset:
    """A labelled dataset held in memory as [0,1] float images (N, 3, H, W)."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    description: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int, limit: int | None = None, transform=None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(images, labels, sample indices) in a fixed order; ``limit`` keeps the first N samples.

        ``transform`` is for datasets read from image files; tensors here are already model-ready.
        """
        n = len(self) if limit is None else min(limit, len(self))
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            yield self.images[start:stop], self.labels[start:stop], torch.arange(start, stop)


# name -> factory(data_root or None) -> dataset
DATASETS: Registry[Callable[[Path | None], TensorDataset]] = Registry("dataset")


def _digits_test(data_root: Path | None) -> TensorDataset:
    from cbbench.data.digits import NUM_CLASSES, load_digits_split

    x, y = load_digits_split("test")
    return TensorDataset("digits", x, y, NUM_CLASSES,
                         "scikit-learn digits test split (360 images, 8x8 upsampled to 32x32, 3 channels)")


DATASETS.register("digits", _digits_test)


def load_dataset(name: str, data_root: Path | None = None) -> TensorDataset:
    return DATASETS.get(name)(data_root)


# Importing the ImageNet family and CIFAR registers their datasets (they import this module, so they come last).
from cbbench.data import cifar, imagenet  # noqa: E402,F401
