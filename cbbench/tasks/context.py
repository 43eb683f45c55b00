"""What a task gets besides the model: the run's settings, one cell's store handle, the data and the model pair.

Three things with three lifetimes: ``RunSettings`` are fixed for a whole run
(device, batch size, limit, seed, pipeline), ``CellStore`` is the store as one
cell sees it (its named partial results: what makes an interrupted cell
resumable), and ``TaskContext`` holds them with what a task may swap per call
(``dataclasses.replace(ctx, dataset=...)``: the dataset and the PIL transform).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cbbench import distributed
from cbbench.data.base import EvalDataset

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Pipeline:
    """How the evaluation forward in ``run_batches`` runs (``cbbench run --amp/--channels-last/--compile``).

    All off by default, and then the numbers are exactly those of a plain fp32
    eager forward. Only the evaluation forward is affected: perturbations
    (corruptions, attacks) run outside autocast and on the eager model, so attack
    gradients stay fp32. Anything other than the default can change logits in the
    last bits (bf16/fp16 by much more), so a non-default pipeline is part of the
    cell key and of the provenance.
    """

    amp: str = "off"  # off | bf16 | fp16: autocast dtype of the evaluation forward
    channels_last: bool = False  # NHWC input (the runner converts the model's 4-D weights too)
    compile: bool = False  # torch.compile the model for the evaluation forward; eager if compiling fails

    def __post_init__(self):
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"unknown --amp {self.amp!r}; use one of {', '.join(AMP_DTYPES)}")

    @property
    def is_default(self) -> bool:
        return self == Pipeline()

    def describe(self) -> dict:
        return {"amp": self.amp, "channels_last": self.channels_last, "compile": self.compile}


def pipeline_key(pipeline: Pipeline, decode_on_device: bool = False) -> dict | None:
    """What of the way a cell ran enters its key: None for the defaults (plain fp32 forward, PIL decoding), so
    those keys stay what they always were; a non-default pipeline, and device decoding where it changes pixels."""
    key = None if pipeline.is_default else pipeline.describe()
    return dict(key or {}, decode="gpu") if decode_on_device else key


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class RunSettings:
    """What the runner fixes for every cell of a run (the runner builds it once per run)."""

    device: torch.device = torch.device("cpu")
    batch_size: int = 128
    limit: int | None = None  # the first N samples of each dataset; None: all
    seed: int = 0
    # Root of the datasets (--data-root / CBBENCH_DATA); None: the embedded default only.
    data_root: Path | None = None
    pipeline: Pipeline = Pipeline()
    # --decode gpu: image files are decoded (and generated ImageNet-C's JPEG round trip runs) with torchvision
    # on ``device`` instead of PIL on the host (data/device_decode.py); it enters the cell key.
    decode_on_device: bool = False
    # DataLoader workers for datasets read from files; None: theirs (one per core, CBBENCH_NUM_WORKERS).
    num_workers: int | None = None


class CellStore:
    """One cell's named partial results in the store (None: a context without a store keeps nothing).

    ``store`` is a ``cbbench.store.Store`` (or the follower ranks' read-nothing stand-in) and ``key`` the
    cell's key. ``stream_every_s``: seconds between writes of ``run_batches``' outcomes (tasks/stream.py);
    None: no streaming.
    """

    def __init__(self, store: Any = None, key: str | None = None, stream_every_s: float | None = None):
        self._store, self._key = store, key
        self.stream_every_s = stream_every_s if store is not None else None

    def get(self, name: str) -> dict[str, np.ndarray] | None:
        return None if self._store is None else self._store.get_part(self._key, name)

    def put(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        if self._store is not None:
            self._store.put_part(self._key, name, arrays)

    def get_all(self, prefix: str) -> list[dict[str, np.ndarray]]:
        """Every stored part whose name starts with ``prefix`` (run_batches' streamed outcomes)."""
        return [] if self._store is None else self._store.get_parts(self._key, prefix)

    def get_or_compute(self, name: str, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The stored part ``name``, or ``compute()`` stored under it. No collective: safe where each torchrun
        rank asks for its own parts (only rank 0 holds a real store; the others recompute theirs)."""
        stored = self.get(name)
        if stored is None:
            stored = compute()
            self.put(name, stored)
        return stored


@dataclass
class TaskContext:
    """What a task gets besides the model."""

    dataset: EvalDataset | None
    run: RunSettings = RunSettings()
    store: CellStore = field(default_factory=CellStore)
    # The model's own eval transform (PIL image -> [0,1] tensor) for datasets read from files.
    transform: Callable | None = None
    # The model this one is compared with (a CB model's baseline, a baseline's CB twin), e.g.
    # as the source of transfer attacks; None when the run has no such pair.
    partner: torch.nn.Module | None = None
    progress: Callable[..., Any] = lambda total, desc: _NoProgress()
    streams: set[str] = field(default_factory=set)  # stream names used in this cell (must be unique)
    # What the batch loop had to do differently (an out-of-memory split); shared by replace()d copies,
    # the runner puts it in the cell's provenance.
    pipeline_notes: list[str] = field(default_factory=list)

    def with_run(self, **changes) -> "TaskContext":
        """This context with some run settings changed (e.g. a task's own image limit)."""
        return dataclasses.replace(self, run=dataclasses.replace(self.run, **changes))

    @property
    def num_samples(self) -> int:
        n = len(self.dataset)
        return n if self.run.limit is None else min(self.run.limit, n)

    def part(self, name: str, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Resume support: a named sub-result computed once and kept even if the task is interrupted.
        Under torchrun every rank gets rank 0's stored value (all ranks must ask together)."""
        return self.parts([name], lambda todo: {name: compute()})[name]

    def parts(self, names: list[str], compute: Callable[[list[str]], dict[str, dict[str, np.ndarray]]]
              ) -> dict[str, dict[str, np.ndarray]]:
        """``part`` for sub-results computed together in one pass over the data (``run_batches(cells=...)``):
        the stored ones are read back, the others computed by one ``compute(missing names)`` call and kept."""
        got = {name: distributed.from_main(self.store.get(name)) for name in names}
        todo = [name for name in names if got[name] is None]
        if todo:
            computed = compute(todo)
            for name in todo:
                if distributed.is_main():
                    self.store.put(name, computed[name])
                got[name] = computed[name]
        return got
