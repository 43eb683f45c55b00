"""Task interface and THE batch loop every task runs through.

Tasks declare what differs (a perturbation, which outcomes to keep, how to
aggregate); moving batches, running the model, checking logits and recording
per-sample outcomes happens once, here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from cbbench import distributed
from cbbench.registry import Registry


@dataclass(frozen=True)
class Metric:
    """How a metric is read: its label, direction (None: no better/worse), and protocol."""

    key: str
    label: str
    higher_is_better: bool | None
    percent: bool = True
    # The per-sample array whose mean over images is this metric (what paired statistics
    # resample); arrays with more axes are averaged per image. None: no per-image form.
    samples: str | None = "correct"


@dataclass
class TaskResult:
    metrics: dict[str, float]
    samples: dict[str, np.ndarray]
    notes: list[str] = field(default_factory=list)


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class TaskContext:
    """What a task gets besides the model: data, device, limits, seed, progress and partial results."""

    dataset: Any
    device: torch.device = torch.device("cpu")
    batch_size: int = 128
    limit: int | None = None
    seed: int = 0
    # Root of the datasets (--data-root / CBBENCH_DATA); None: the embedded default only.
    data_root: Path | None = None
    # The model's own eval transform (PIL image -> [0,1] tensor) for datasets read from files.
    transform: Callable | None = None
    # The model this one is compared with (a CB model's baseline, a baseline's CB twin), e.g.
    # as the source of transfer attacks; None when the run has no such pair.
    partner: torch.nn.Module | None = None
    progress: Callable[..., Any] = lambda total, desc: _NoProgress()
    load_part: Callable[[str], dict | None] = lambda part: None
    save_part: Callable[[str, dict], None] = lambda part, arrays: None

    @property
    def num_samples(self) -> int:
        n = len(self.dataset)
        return n if self.limit is None else min(self.limit, n)

    def part(self, name: str, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Resume support: a named sub-result computed once and kept even if the task is interrupted."""
        stored = distributed.from_main(self.load_part(name))
        if stored is not None:
            return stored
        arrays = compute()
        if distributed.is_main():
            self.save_part(name, arrays)
        return arrays


class Task:
    """A registered evaluation: name, version (bump on any logic change), params, headline metric."""

    name: ClassVar[str]
    version: ClassVar[int]
    headline: ClassVar[Metric]
    protocol: ClassVar[str]

    def params(self) -> dict:
        return asdict(self) if hasattr(self, "__dataclass_fields__") else {}

    def evaluate(self, model: torch.nn.Module, ctx: TaskContext) -> TaskResult:
        raise NotImplementedError


TASKS: Registry[Task] = Registry("task")


Perturb = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def run_batches(model: torch.nn.Module, ctx: TaskContext, perturb: Perturb | None = None,
                desc: str = "", class_subset: torch.Tensor | None = None,
                extras: Callable[[], dict[str, torch.Tensor]] | None = None) -> dict[str, np.ndarray]:
    """Evaluate ``model`` on ``ctx.dataset`` (optionally perturbed), keeping per-sample outcomes.

    ``class_subset`` (logit indices, e.g. ImageNet-A's 200 classes) restricts the
    logits BEFORE the argmax and softmax; labels are then positions in the subset.
    Returns arrays aligned with the samples: index, label, pred, correct,
    correct_top5 (label among the 5 largest logits), confidence (max softmax probability) and finite (all logits finite; a
    sample with non-finite logits counts as wrong and is reported by the task).
    ``extras`` is called after each forward pass and returns more per-sample
    tensors (e.g. attention statistics captured by hooks) to keep alongside.

    Under torch.distributed each rank takes every world-th batch and the
    outcomes are gathered and re-ordered by sample index, so the result is the
    same as in one process.
    """
    parts: dict[str, list] = {k: [] for k in ("index", "label", "pred", "correct", "correct_top5", "confidence",
                                              "finite")}
    rank, world_size = distributed.world()
    bar = ctx.progress(total=ctx.num_samples, desc=desc)
    try:
        batches = ctx.dataset.batches(ctx.batch_size, ctx.limit, transform=ctx.transform)
        for i, (x, y, idx) in enumerate(batches):
            if i % world_size != rank:
                bar.update(len(y))
                continue
            x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
            if perturb is not None:
                x = perturb(x, y, idx)
            with torch.inference_mode():
                logits = model(x).float()
            if class_subset is not None:
                logits = logits[:, class_subset.to(logits.device)]
            finite = torch.isfinite(logits).all(dim=1)
            probs = torch.nan_to_num(logits, nan=-torch.inf).softmax(dim=1)
            confidence, pred = probs.max(dim=1)
            correct = (pred == y) & finite
            top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
            correct_top5 = (top5 == y[:, None]).any(dim=1) & finite
            for key, value in (("index", idx), ("label", y), ("pred", pred), ("correct", correct),
                               ("correct_top5", correct_top5),
                               ("confidence", torch.nan_to_num(confidence, nan=0.0)), ("finite", finite)):
                parts[key].append(value.cpu())
            for key, value in (extras() if extras else {}).items():
                parts.setdefault(key, []).append(value.cpu())
            bar.update(len(y))
    finally:
        bar.close()
    local = {k: torch.cat(v).numpy() if v else np.empty(0) for k, v in parts.items()}
    outcomes = distributed.gather_outcomes(local)
    if not len(outcomes["index"]):
        raise ValueError(f"dataset {ctx.dataset.name} yielded no samples (limit={ctx.limit})")
    return outcomes


def accuracy_metrics(outcomes: dict[str, np.ndarray], prefix: str = "") -> dict[str, float]:
    """Accuracy plus the count of samples whose logits were not finite (0 when all is well)."""
    return {f"{prefix}accuracy": float(outcomes["correct"].mean()),
            f"{prefix}nonfinite": float((~outcomes["finite"]).sum())}
