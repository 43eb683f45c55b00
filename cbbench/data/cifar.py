"""CIFAR-10 / CIFAR-100 from a data root: the train split trains the CIFAR models, the test split evaluates them.

Read through the downstream loader (:mod:`cbbench.data.downstream`: torchvision's
classes with ``download=False``, which check the files' md5), so training,
evaluation and the transfer tasks share one reader and one cached in-memory copy
per process. Layout (torchvision's download format, the root passed unchanged):

    cifar10     <root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    cifar100    <root>/cifar-100-python/{train, test, meta}

Images stay uint8 (N, 3, 32, 32) in memory (180 MB for all 60,000); batches come
out as [0, 1] float32. A missing root or missing files raise
:class:`cbbench.errors.DatasetMissingError` naming the expected tree and the fix.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from cbbench.data.downstream import DOWNSTREAM, ResizedTensorDataset, load_downstream
from cbbench.errors import DatasetMissingError

IMAGE_SIZE = 32
# name -> (torchvision class, display name, number of classes)
CIFAR = {"cifar10": ("CIFAR10", "CIFAR-10", 10), "cifar100": ("CIFAR100", "CIFAR-100", 100)}


def load_cifar(name: str, split: str, data_root: Path | str | None) -> ResizedTensorDataset:
    """Split ``train`` (50,000 images) or ``test`` (10,000) of ``cifar10`` / ``cifar100``.

    ``data_root`` None falls back to CBBENCH_DATA (cbbench.paths.data_root), so the
    library resolves the root the same way as the command line.
    """
    from cbbench.paths import data_root as resolve_data_root

    if split not in ("train", "test"):
        raise ValueError(f"{name} has splits 'train' and 'test', not {split!r}")
    tv_class, display, _ = CIFAR[name]
    tree = DOWNSTREAM.get(name).expected_tree
    fix = (f"download it once (python -c \"import torchvision; torchvision.datasets.{tv_class}('DIR', "
           "download=True)\") and pass --data-root DIR or set CBBENCH_DATA=DIR")
    root = resolve_data_root(data_root)
    if root is None:
        raise DatasetMissingError(f"{display} ({name}) needs a data root laid out as {tree.format(root='DIR')}; "
                                  f"{fix}")
    try:
        data = load_downstream(name, root, IMAGE_SIZE)
    except DatasetMissingError as exc:
        raise DatasetMissingError(f"{display} ({name}) not found or incomplete under data root {root}: expected "
                                  f"{tree.format(root=root)}; {fix} (torchvision: {exc.__cause__ or exc})") from exc
    ds = data.train if split == "train" else data.test
    description = f"{display} {split} split ({len(ds)} images, 32x32 RGB), torchvision format under {root}"
    return dataclasses.replace(ds, name=name if split == "test" else f"{name}-train", description=description)


def _test_split(name: str):
    def load(data_root: Path | None) -> ResizedTensorDataset:
        return load_cifar(name, "test", data_root)
    return load


# name -> factory of its test split (registered by cbbench.data.registry)
FACTORIES = {_name: _test_split(_name) for _name in CIFAR}
