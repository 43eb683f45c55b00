"""Evaluation datasets: what a task iterates over (the registry is cbbench.data.registry)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

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
