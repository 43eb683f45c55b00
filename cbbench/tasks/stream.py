"""Per-sample outcomes streamed into the results store while a batch loop runs.

A cell over 50,000 images (or 3.75 million ImageNet-C images) takes hours on a
CPU; without this, a killed or failed run would redo the whole cell. Every
``every_s`` seconds, and whenever the loop stops (normally or by an exception),
the outcomes of the batches finished since the last write go to the cell's
parts in the store, one chunk per write. The next attempt at the same cell
reads the chunks back and evaluates only the batches they lack, so a kill -9
loses at most ``every_s`` seconds of work. The chunks are deleted when the
cell is stored.

Skipping batches gives the same numbers because nothing in a batch depends on
the batches before it: perturbations are seeded from (run seed, the batch's
first sample index). A loop whose batches do carry state (AutoAttack's
warnings, a probe trained inside the task) runs with ``stream=False``.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

PREFIX = "batches:"
_BATCH = "_batch"  # per sample: the number of its batch (sample index // batch size)
_CORRUPT = ("_corrupt_index", "_corrupt_error")  # undecodable files found in the chunk's batches


class OutcomeStream:
    """The outcomes of one batch loop: what earlier attempts stored, plus what this one adds."""

    def __init__(self, ctx: Any, desc: str, enabled: bool):
        self.ctx, self.desc, self.enabled = ctx, desc, enabled
        self.name = f"{PREFIX}{desc}|batch_size={ctx.run.batch_size}|"
        self.pieces: list[dict[str, np.ndarray]] = []  # per batch (or stored chunk), each with _BATCH
        self.pending: list[dict[str, np.ndarray]] = []  # batches not yet written to the store
        self.done: set[int] = set()  # batch numbers whose outcomes are in ``pieces``
        self.resumed_samples = 0
        self._written_corrupt: set[int] = set()
        self._last_write = time.monotonic()
        if enabled:
            if self.name in ctx.streams:
                raise RuntimeError(f"two batch loops of one task are both named {desc!r}: their stored "
                                   "outcomes would mix; give each run_batches call its own desc")
            ctx.streams.add(self.name)
            self._read_back()

    def _read_back(self) -> None:
        corrupt = self.ctx.dataset.corrupt
        for chunk in self.ctx.store.get_all(self.name):
            index, error = (chunk.pop(k) for k in _CORRUPT)
            corrupt.update(zip(index.tolist(), error.tolist()))
            self._written_corrupt.update(index.tolist())
            new = ~np.isin(chunk[_BATCH], list(self.done))  # concurrent runs may have written overlapping chunks
            if new.any():
                self.pieces.append({k: v[new] for k, v in chunk.items()})
                self.done.update(np.unique(chunk[_BATCH][new]).tolist())
                self.resumed_samples += int(new.sum())
        if self.resumed_samples:
            log.info("%s: %d samples (%d batches) read back from an interrupted attempt at this cell",
                     self.desc or "batch loop", self.resumed_samples, len(self.done))

    def add(self, batch: int, arrays: dict[str, np.ndarray]) -> None:
        piece = dict(arrays, **{_BATCH: np.full(len(arrays["index"]), batch, dtype=np.int32)})
        self.pieces.append(piece)
        self.done.add(batch)
        if self.enabled:
            self.pending.append(piece)
            if time.monotonic() - self._last_write >= self.ctx.store.stream_every_s:
                self.write()

    def write(self) -> None:
        """Store the pending batches as one chunk (named by its first batch number)."""
        if not self.pending:
            return
        chunk = _concat(self.pending)
        corrupt = self.ctx.dataset.corrupt
        found = sorted(set(corrupt) - self._written_corrupt)
        chunk[_CORRUPT[0]] = np.array(found, dtype=np.int64)
        chunk[_CORRUPT[1]] = np.array([corrupt[i] for i in found], dtype=str)
        self.ctx.store.put(f"{self.name}{int(chunk[_BATCH].min()):09d}", chunk)
        self._written_corrupt.update(found)
        self.pending = []
        self._last_write = time.monotonic()

    def outcomes(self) -> dict[str, np.ndarray]:
        """All outcomes in batch order, as if every batch had been evaluated in this attempt."""
        if not self.pieces:
            return {}
        fields = [sorted(p) for p in self.pieces]
        if any(f != fields[-1] for f in fields):
            raise RuntimeError(
                f"the outcomes stored by an earlier attempt at {self.desc!r} hold other fields "
                f"({fields[0]}) than this attempt's ({fields[-1]}): the task changed without a version bump; "
                "bump the task's version (or delete the results store) and rerun")
        merged = _concat(self.pieces)
        self.pieces = self.pending = []  # handed over: the per-batch arrays are freed as soon as possible
        batch = merged.pop(_BATCH)
        if np.all(batch[1:] >= batch[:-1]):  # evaluated in order, nothing read back: no reordering copy
            return merged
        order = np.argsort(batch, kind="stable")
        return {k: v[order] for k, v in merged.items()}


def _concat(pieces: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}
