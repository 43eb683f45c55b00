"""Evaluation datasets: the one protocol every task iterates over (the registry is cbbench.data.registry).

``EvalDataset`` is what ``run_batches`` and the tasks may rely on, and all of it:
in-memory tensors (``TensorDataset``) and image folders (``folders.ImageFolderDataset``)
both implement it fully, so no caller probes a dataset for what it supports. Options
that mean nothing for in-memory tensors (a PIL ``transform``, a ``decode_device``)
are accepted and documented as ignored there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol, Sequence, runtime_checkable

import torch

from cbbench.errors import DatasetMissingError  # noqa: F401 (re-exported)

# (images, labels, sample indices) of one batch
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@runtime_checkable
class EvalDataset(Protocol):
    """A labelled evaluation set in a fixed order.

    ``corrupt``: sample index -> why its file could not be decoded (found while iterating; always empty in
    memory). ``decode_fallbacks``: sample index -> why the device decoder left that file to PIL.
    ``class_subset``: the logit indices outputs are restricted to (ImageNet-A/R), None for all.
    """

    name: str
    num_classes: int
    description: str
    class_subset: torch.Tensor | None
    corrupt: dict[int, str]
    decode_fallbacks: dict[int, str]
    num_workers: int

    def __len__(self) -> int: ...

    def batches(self, batch_size: int, limit: int | None = None, transform: Callable | None = None,
                pin_memory: bool | None = None, only: Sequence[int] | None = None,
                decode_device: torch.device | None = None) -> Iterator[Batch]:
        """Batches of ``batch_size`` over the first ``limit`` samples (all when None); ``only``: just these
        batch numbers (of those boundaries); ``pin_memory``: page-locked host tensors (for copies to a GPU);
        ``transform``/``decode_device``: how image files are decoded."""
        ...

    def corrupt_within(self, limit: int | None = None) -> list[int]:
        """Sample indices of the undecodable files among the first ``limit`` samples, sorted."""
        ...

    def relpath(self, i: int) -> str:
        """How sample ``i`` is named to a user (a file path under the dataset root, or its index)."""
        ...


@dataclass
class TensorDataset:
    """A labelled dataset held in memory as [0,1] float images (N, 3, H, W): an ``EvalDataset``."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    description: str = ""
    class_subset: torch.Tensor | None = None
    corrupt: dict[int, str] = field(default_factory=dict)  # nothing to decode: stays empty
    decode_fallbacks: dict[int, str] = field(default_factory=dict)  # likewise
    num_workers: int = 0  # batches are slices of memory: no loader processes

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int, limit: int | None = None, transform: Callable | None = None,
                pin_memory: bool | None = None, only: Sequence[int] | None = None,
                decode_device: torch.device | None = None) -> Iterator[Batch]:
        """Slices in a fixed order. ``transform`` and ``decode_device`` are ignored: the tensors are decoded
        and model-ready already."""
        n = len(self) if limit is None else min(limit, len(self))
        starts = range(0, n, batch_size)
        for start in (starts if only is None else [starts[b] for b in only]):
            stop = min(start + batch_size, n)
            x = self._ready(self.images[start:stop])
            yield (x.pin_memory() if pin_memory else x), self.labels[start:stop], torch.arange(start, stop)

    def _ready(self, images: torch.Tensor) -> torch.Tensor:
        """Stored images -> model-ready [0,1] floats (subclasses convert; here they are stored that way)."""
        return images

    def corrupt_within(self, limit: int | None = None) -> list[int]:
        return []

    def relpath(self, i: int) -> str:
        return f"{self.name}[{i}]"
