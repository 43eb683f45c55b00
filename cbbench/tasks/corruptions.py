"""Common corruptions (ImageNet-C's 15 x 5) applied on the fly to the test images.

Two engines: the reference functions (PyPI ``imagecorruptions`` 1.1.2, via
cbbench.corruptions.reference, each image seeded by (seed, sample index), so the
same inputs are produced whatever the batch size), or cbbench's batched torch
engine (cbbench.corruptions.engine, faithful to the reference in value or in
distribution, seeded by (seed, first index of the batch)). Corrupted batches are
kept in a bounded in-memory cache, so the CB twin is evaluated on exactly the
images its baseline saw without corrupting them twice. All cells are evaluated in
one pass over the data (``corruption_cells``): each batch is read once for the 75
cells, with the numbers of a cell-by-cell loop (tests/test_one_pass.py).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from cbbench.corruptions.reference import BENCHMARK_CORRUPTIONS, SEVERITIES, reference_corrupt
from cbbench.tasks.base import TASKS, Metric, Task, TaskContext, TaskResult, run_batches

CACHE_BYTES = 512 * 2**20
_cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()


ENGINES = ("imagecorruptions-1.1.2", "cbbench-torch")


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ValueError(f"unknown corruption engine {engine!r}; choose one of {ENGINES}")


def engine_seeds_per_batch(engine: str) -> bool:
    """Whether ``engine``'s draws follow the batch boundaries (``corrupt_batch``: the torch engine draws from
    one generator per batch; the reference seeds each image), so a task using it is ``seeded_per_batch``."""
    return engine == "cbbench-torch"


def corrupt_batch(x: torch.Tensor, idx: torch.Tensor, name: str, severity: int, seed: int,
                  engine: str = ENGINES[0]) -> torch.Tensor:
    """Corrupt a batch of sample indices ``idx``, reproducibly from ``seed`` and those indices (uint8 grid).

    Torch engine: one generator per batch, seeded by (seed, first index). Reference:
    each image seeded by (seed, its own index), so gaps left by undecodable files
    change nothing for the others.
    """
    if engine == "cbbench-torch":
        from cbbench.corruptions.engine import corrupt

        batch_seed = int(np.random.SeedSequence([seed, int(idx[0])]).generate_state(1)[0])
        return corrupt(x, name, severity, torch.Generator(x.device).manual_seed(batch_seed), quantize=True)
    if torch.equal(idx.cpu(), torch.arange(int(idx[0]), int(idx[0]) + len(idx))):
        return reference_corrupt(x.cpu(), name, severity, seed, index_offset=int(idx[0])).to(x.device)
    return torch.cat([reference_corrupt(x[j:j + 1].cpu(), name, severity, seed, index_offset=int(i))
                      for j, i in enumerate(idx.tolist())]).to(x.device)


def _corrupted(dataset: str, x: torch.Tensor, idx: torch.Tensor, name: str, severity: int, seed: int,
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


def corruption_cells(model, ctx: TaskContext, names: list[str], engine: str, prefix: str = ""
                     ) -> dict[str, dict[str, np.ndarray]]:
    """{"<c>/<s>": outcomes} for cells named "<corruption>/<severity>" (or "clean"), in one pass over the data.

    Each cell's outcomes (and its stream of stored batches, named "<prefix><c> s<s>") are those of
    a run_batches call of its own: the corruption of a batch depends only on (seed, sample indices).
    """
    def perturb(c: str, s: int):
        return lambda x, y, idx: _corrupted(ctx.dataset.name, x, idx, c, s, ctx.seed, engine)

    descs = {}
    for name in names:
        c, _, s = name.partition("/")
        descs[name] = (f"{prefix}clean", None) if name == "clean" else (f"{prefix}{c} s{s}", perturb(c, int(s)))
    out = run_batches(model, ctx, cells=dict(descs.values()))
    return {name: out[desc] for name, (desc, _) in descs.items()}


@dataclass(frozen=True)
class CorruptionTask(Task):
    corruptions: tuple[str, ...] = tuple(BENCHMARK_CORRUPTIONS)
    severities: tuple[int, ...] = tuple(SEVERITIES)
    engine: str = ENGINES[0]
    task_name: str = ""

    version = 1

    def __post_init__(self):
        check_engine(self.engine)

    @property
    def name(self) -> str:
        return self.task_name or "corruptions"

    @property
    def headline(self) -> Metric:
        label = "corruption acc. (mean 15x5)" if self.engine == ENGINES[0] else "corruption acc. (torch engine)"
        return Metric("mean_accuracy", label, True)

    @property
    def seeded_per_batch(self) -> bool:
        return engine_seeds_per_batch(self.engine)

    @property
    def protocol(self) -> str:
        return (f"ImageNet-C corruptions generated on the fly with {self.engine} (uint8-quantized), top-1 "
                f"averaged over {len(self.corruptions)} corruptions x {len(self.severities)} severities; "
                "no AlexNet normalization")

    def evaluate(self, model, ctx: TaskContext) -> TaskResult:
        samples: dict[str, np.ndarray] = {}
        metrics: dict[str, float] = {}
        cell_acc = []
        parts = ctx.parts([f"{c}/{s}" for c in self.corruptions for s in self.severities],
                          lambda todo: corruption_cells(model, ctx, todo, self.engine))
        for c in self.corruptions:
            per_severity = []
            for s in self.severities:
                out = parts[f"{c}/{s}"]
                for key in ("correct", "pred", "confidence"):
                    samples[f"{c}.{s}.{key}"] = out[key]
                acc = float(out["correct"].mean())
                metrics[f"accuracy/{c}/{s}"] = acc
                metrics["nonfinite"] = metrics.get("nonfinite", 0.0) + float((~out["finite"]).sum())
                per_severity.append(acc)
            metrics[f"accuracy/{c}"] = float(np.mean(per_severity))
            cell_acc += per_severity
        for s_i, s in enumerate(self.severities):
            metrics[f"accuracy/severity{s}"] = float(np.mean(cell_acc[s_i::len(self.severities)]))
        metrics["mean_accuracy"] = float(np.mean(cell_acc))
        metrics["mean_error"] = 1.0 - metrics["mean_accuracy"]
        # Per-sample mean accuracy over all cells: what paired statistics resample.
        samples["correct"] = np.mean([samples[f"{c}.{s}.correct"] for c in self.corruptions
                                      for s in self.severities], axis=0)
        return TaskResult(metrics, samples)


TASKS.register("corruptions", CorruptionTask())
TASKS.register("corruptions_torch", CorruptionTask(engine="cbbench-torch", task_name="corruptions_torch"))
