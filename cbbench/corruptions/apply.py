"""Corrupting a batch of dataset samples reproducibly, with either engine, and a bounded cache of the results.

Used by the corruption tasks (cbbench.tasks) and by ``cbbench datasets make-c`` (cbbench.data.make_c); it sits
below both and imports neither.
"""
from __future__ import annotations

from collections import OrderedDict

import torch

from cbbench.corruptions.catalog import ENGINES, TORCH_ENGINE
from cbbench.corruptions.reference import reference_corrupt
from cbbench.seeding import batch_seed

__all__ = ["CACHE_BYTES", "ENGINES", "check_engine", "clear_cache", "corrupt_batch", "corrupt_batch_cached",
           "engine_seeds_per_batch"]


CACHE_BYTES = 512 * 2**20
_cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ValueError(f"unknown corruption engine {engine!r}; choose one of {ENGINES}")


def engine_seeds_per_batch(engine: str) -> bool:
    """Whether ``engine``'s draws follow the batch boundaries (``corrupt_batch``: the torch engine draws from
    one generator per batch; the reference seeds each image), so a task using it is ``seeded_per_batch``."""
    return engine == TORCH_ENGINE


def corrupt_batch(x: torch.Tensor, idx: torch.Tensor, name: str, severity: int, seed: int,
                  engine: str = ENGINES[0]) -> torch.Tensor:
    """Corrupt a batch of sample indices ``idx``, reproducibly from ``seed`` and those indices (uint8 grid).

    Torch engine: one generator per batch, seeded by (seed, first index). Reference:
    each image seeded by (seed, its own index), so gaps left by undecodable files
    change nothing for the others.
    """
    if engine == TORCH_ENGINE:
        from cbbench.corruptions.engine import corrupt

        generator = torch.Generator(x.device).manual_seed(batch_seed(seed, idx[0]))
        return corrupt(x, name, severity, generator, quantize=True)
    if torch.equal(idx.cpu(), torch.arange(int(idx[0]), int(idx[0]) + len(idx))):
        return reference_corrupt(x.cpu(), name, severity, seed, index_offset=int(idx[0])).to(x.device)
    return torch.cat([reference_corrupt(x[j:j + 1].cpu(), name, severity, seed, index_offset=int(i))
                      for j, i in enumerate(idx.tolist())]).to(x.device)


def corrupt_batch_cached(dataset: str, x: torch.Tensor, idx: torch.Tensor, name: str, severity: int, seed: int,
                         engine: str = ENGINES[0]) -> torch.Tensor:
    """``corrupt_batch`` through a bounded cache: a CB twin sees exactly its baseline's images, corrupted once.

    The cache stays on the images' device (uint8, at most CACHE_BYTES): on a GPU, no copy to the host and back
    (and no wait for it) per batch and cell.
    """
    key = (dataset, engine, name, severity, seed, tuple(idx.tolist()))
    if key not in _cache:
        out = corrupt_batch(x, idx, name, severity, seed, engine)
        _cache[key] = (out * 255).round().to(torch.uint8)
        while sum(t.numel() for t in _cache.values()) > CACHE_BYTES:
            _cache.popitem(last=False)
    _cache.move_to_end(key)
    return _cache[key].to(x.device, torch.float32) / 255


def clear_cache() -> None:
    """Forget every cached corrupted batch (tests; a caller that wants the memory back)."""
    _cache.clear()
