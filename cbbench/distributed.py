"""torch.distributed helpers: shard a task's batches across ranks, gather outcomes, let rank 0 decide.

Sharding is by whole batches, round robin (batch i goes to rank i % world), so
every batch keeps the boundaries and the per-batch seeds it has in a
single-process run, and the gathered outcomes, re-ordered by sample index, are
identical to a single-process run. Under ``torchrun`` the process group is
created from the environment (gloo on CPU, nccl with CUDA).
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist


@contextlib.contextmanager
def process_group(device_type: str) -> Iterator[None]:
    """Inside the block: in the process group torchrun describes (WORLD_SIZE > 1; gloo on CPU, nccl with
    CUDA); a no-op otherwise, or when the user made the group. On the way out a group made here is left
    (``_leave``)."""
    owns = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    finished = False
    try:
        yield
        finished = True
    finally:
        if owns:
            _leave(finished)


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialized process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def local_device(device: torch.device) -> torch.device:
    """One GPU per process: cuda -> cuda:LOCAL_RANK."""
    if device.type == "cuda" and device.index is None and world()[1] > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (e.g. 'is this cell in the store?'), so all ranks take the same path."""
    if world()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def _leave(finished: bool) -> None:
    """Leave the process group before the interpreter exits: a rank that exits with gloo's threads still
    alive aborts ("terminate called without an active exception", SIGABRT), which torchrun reports as a
    failed run. After a finished run the ranks first wait for each other; after an error they do not (a
    crashed rank would never arrive)."""
    if dist.is_available() and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def gather_outcomes(local: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenate every rank's per-sample arrays and sort them by sample index."""
    if world()[1] == 1:
        return local
    shards: list[dict[str, np.ndarray]] = [None] * world()[1]  # type: ignore[list-item]
    dist.all_gather_object(shards, local)
    shards = [s for s in shards if s and len(s["index"])]
    merged = {k: np.concatenate([s[k] for s in shards]) for k in shards[0]}
    order = np.argsort(merged["index"], kind="stable")
    return {k: v[order] for k, v in merged.items()}


def gathered_unique(items: list[str]) -> list[str]:
    """Every rank's messages (e.g. warnings), deduplicated in order; just ``items`` in one process."""
    if world()[1] == 1:
        return items
    shards: list[list[str]] = [None] * world()[1]  # type: ignore[list-item]
    dist.all_gather_object(shards, items)
    return list(dict.fromkeys(m for shard in shards for m in shard))


def merged(entries: dict) -> dict:
    """Every rank's ``entries`` merged into one dict (e.g. the undecodable files each rank found)."""
    if world()[1] == 1:
        return entries
    shards: list[dict] = [None] * world()[1]  # type: ignore[list-item]
    dist.all_gather_object(shards, entries)
    out: dict = {}
    for shard in shards:
        out.update(shard)
    return out
