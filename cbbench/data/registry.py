"""The registry of evaluation datasets: name -> factory(data_root or None) -> dataset.

The dataset families (digits, CIFAR, the ImageNet sets) only define their factories;
this module, above them, registers them, so no family imports the registry back.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from cbbench.data import cifar, imagenet
from cbbench.data.base import TensorDataset
from cbbench.registry import Registry

DATASETS: Registry[Callable[[Path | None], TensorDataset]] = Registry("dataset")


def _digits_test(data_root: Path | None) -> TensorDataset:
    from cbbench.data.digits import NUM_CLASSES, load_digits_split

    x, y = load_digits_split("test")
    return TensorDataset("digits", x, y, NUM_CLASSES,
                         "scikit-learn digits test split (360 images, 8x8 upsampled to 32x32, 3 channels)")


for _name, _factory in [("digits", _digits_test), *cifar.FACTORIES.items(), *imagenet.FACTORIES.items()]:
    DATASETS.register(_name, _factory)


def load_dataset(name: str, data_root: Path | None = None) -> TensorDataset:
    return DATASETS.get(name)(data_root)
