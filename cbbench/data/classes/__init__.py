"""ImageNet class lists shipped with cbbench: the 1000 wnids in class-index order, ImageNet-A/R's 200.

Read with importlib.resources (they live in this package, see README.md here for
their source) and checked once on first use. Everything returned is immutable.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources
from types import MappingProxyType
from typing import Mapping, Sequence

__all__ = [
    "imagenet_wnids", "imagenet_class_names", "wnid_to_index",
    "imagenet_a_wnids", "imagenet_r_wnids", "subset_indices", "robustbench_imagenet_5000",
]


def _read(filename: str) -> list[str]:
    text = resources.files(__name__).joinpath(filename).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


@lru_cache(maxsize=None)
def _imagenet() -> tuple[tuple[str, ...], tuple[str, ...]]:
    rows = [line.split("\t") for line in _read("imagenet_wnids.tsv")]
    if len(rows) != 1000 or any(len(r) != 2 for r in rows):
        raise RuntimeError("cbbench/data/classes/imagenet_wnids.tsv must hold 1000 lines 'wnid<TAB>name'")
    wnids = tuple(r[0] for r in rows)
    if list(wnids) != sorted(set(wnids)):
        raise RuntimeError("imagenet_wnids.tsv: wnids must be unique and sorted (sorted order is the class order)")
    return wnids, tuple(r[1] for r in rows)


def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids; position = class index (sorted wnid order)."""
    return _imagenet()[0]


def imagenet_class_names() -> tuple[str, ...]:
    """Readable class names, aligned with imagenet_wnids()."""
    return _imagenet()[1]


@lru_cache(maxsize=None)
def wnid_to_index() -> Mapping[str, int]:
    """wnid -> ImageNet-1k class index (read-only)."""
    return MappingProxyType({w: i for i, w in enumerate(imagenet_wnids())})


@lru_cache(maxsize=None)
def _subset(filename: str) -> tuple[str, ...]:
    wnids = tuple(_read(filename))
    known = wnid_to_index()
    if len(wnids) != 200 or list(wnids) != sorted(set(wnids)) or any(w not in known for w in wnids):
        raise RuntimeError(f"cbbench/data/classes/{filename}: expected 200 unique, sorted ImageNet-1k wnids")
    return wnids


def imagenet_a_wnids() -> tuple[str, ...]:
    """ImageNet-A's 200 wnids, sorted; an A image's label is its wnid's position here."""
    return _subset("imagenet_a_wnids.txt")


def imagenet_r_wnids() -> tuple[str, ...]:
    """ImageNet-R's 200 wnids, sorted; an R image's label is its wnid's position here."""
    return _subset("imagenet_r_wnids.txt")


def subset_indices(wnids: Sequence[str]) -> tuple[int, ...]:
    """Positions of ``wnids`` in the 1000-class list: the logits to keep (in this order)."""
    table = wnid_to_index()
    return tuple(table[w] for w in wnids)


@lru_cache(maxsize=None)
def robustbench_imagenet_5000() -> tuple[str, ...]:
    """RobustBench's fixed ImageNet evaluation list: 5,000 ``<wnid>/<file>.JPEG`` val paths, in its order.

    The order matters: RobustBench evaluates the first n of this list, so a prefix
    here is the same prefix there.
    """
    paths = tuple(_read("robustbench_imagenet_5000.txt"))
    known = wnid_to_index()
    if len(paths) != 5000 or len(set(paths)) != 5000 or any(
            p.count("/") != 1 or p.split("/")[0] not in known for p in paths):
        raise RuntimeError("cbbench/data/classes/robustbench_imagenet_5000.txt: expected 5,000 unique "
                           "'<ImageNet wnid>/<file>' lines")
    return paths
