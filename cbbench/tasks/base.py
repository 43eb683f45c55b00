"""Task interface and THE batch loop every task runs through.

Tasks declare what differs (a perturbation, which outcomes to keep, how to
aggregate); moving batches, running the model, checking logits and recording
per-sample outcomes happens once, here.
"""
from __future__ import annotations

import contextlib
import math
import logging
import weakref
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from cbbench import distributed
from cbbench.data.device_decode import fallback_note
from cbbench.registry import Registry
from cbbench.seeding import batch_seed
from cbbench.tasks.context import AMP_DTYPES, TaskContext
from cbbench.tasks.stream import OutcomeStream

log = logging.getLogger(__name__)


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


# What a task measures, for the report (which tables and figures its cells feed; detail sections follow this
# order); not part of any cell key. shift: natural distribution shift (ImageNet-A/-R/Sketch/V2); attack: every
# adversarial attack, white-box or transferred; analysis: a measurement of the model, not of its accuracy.
KINDS = ("clean", "corruption", "shift", "attack", "calibration", "cost", "analysis", "transfer_learning")


class Task:
    """A registered evaluation: everything the runner and the report need is declared here.

    name, version (bump on any logic change), ``params()`` (what enters the cell key), headline metric,
    protocol, ``kind`` (one of KINDS), the runner's flags below, and ``details``, the report's detail tables.
    A subclass may make a flag a property of its parameters.
    """

    name: ClassVar[str]
    version: ClassVar[int]
    headline: ClassVar[Metric]
    protocol: ClassVar[str]
    kind: ClassVar[str]
    # Whether its random draws are seeded per batch (from the batch's first sample index): its numbers then
    # depend on the batch size, which the runner adds to its cell key.
    seeded_per_batch: ClassVar[bool] = False
    # Whether its cells depend on the paired model (CB twin / baseline), whose name and digest the runner adds
    # to the cell key.
    uses_partner: ClassVar[bool] = False
    # Whether it loads its own data (from the data root): it runs even when the suite's dataset is absent.
    own_dataset: ClassVar[bool] = False
    # The report figure its cells are drawn in besides its kind's (attacks): "severity" (accuracy/<c>/<s> per
    # corruption and severity), "attention_layers" (entropy/layer<i>); None: none.
    figure: ClassVar[str | None] = None

    def params(self) -> dict:
        return asdict(self) if hasattr(self, "__dataclass_fields__") else {}

    def details(self, cells: dict, models: list[str]) -> list:
        """The report's detail section for this task from its stored cells ({(model, task): cell}, every status; models in
        report order): markdown lines, tables as ``cbbench.report.table.Table``. Default: none."""
        return []

    def evaluate(self, model: torch.nn.Module, ctx: TaskContext) -> TaskResult:
        raise NotImplementedError


class NamedByField:
    """For a task class registered in several configurations: each instance is named by its ``task_name``."""

    task_name: str

    @property
    def name(self) -> str:
        return self.task_name


TASKS: Registry[Task] = Registry("task")


def register_task(task: Task) -> Task:
    """Register ``task`` under its own name (one place states the name)."""
    return TASKS.register(task.name, task)


@dataclass(frozen=True)
class Batch:
    """A batch as ``run_batches`` hands it to a perturbation, with what it computes once for all of them."""

    index: torch.Tensor  # its sample indices (host)
    number: int  # first sample index // batch size: its name among stored parts, the same under torchrun
    seed: int  # seeding.batch_seed(run seed, first sample index): where every per-batch random draw starts


# perturb(images, labels, batch) -> the images to evaluate (on the same device)
Perturb = Callable[[torch.Tensor, torch.Tensor, Batch], torch.Tensor]


def run_batches(model: torch.nn.Module, ctx: TaskContext, perturb: Perturb | None = None,
                desc: str = "", class_subset: torch.Tensor | None = None,
                extras: Callable[[], dict[str, torch.Tensor]] | None = None, stream: bool = True,
                cells: dict[str, Perturb | None] | None = None):
    """Evaluate ``model`` on ``ctx.dataset`` (optionally perturbed), keeping per-sample outcomes.

    ``class_subset`` (logit indices, e.g. ImageNet-A's 200 classes) restricts the
    logits BEFORE the argmax and softmax; labels are then positions in the subset.
    Returns arrays aligned with the samples: index, label, pred, correct,
    correct_top5 (label among the 5 largest logits), confidence (max softmax probability) and finite (all logits finite; a
    sample with non-finite logits counts as wrong and is reported by the task).
    ``extras`` is called after each forward pass and returns more per-sample
    tensors (e.g. attention statistics captured by hooks) to keep alongside.

    ``cells`` ({desc: perturb or None}) evaluates several perturbations of the same
    images in ONE pass: each batch is read (decoded, resized) once and every cell
    is evaluated on it, which is what keeps a GPU busy when reading costs more than
    the forward (75 ImageNet-C cells used to decode val 75 times). The result is
    then {desc: outcomes}, each exactly what ``run_batches(model, ctx, perturb, desc)``
    returns: cells are independent (their random draws come from the run seed and
    sample indices), each keeps its own stream of stored outcomes, and a batch
    already stored for one cell is evaluated only for the others.

    The evaluation forward follows ``ctx.run.pipeline`` (autocast, channels-last,
    torch.compile); the perturbation does not. A forward that runs out of memory
    is retried on halves of the batch, down to one image (``_forward``).

    Outcomes are written to the store as the loop goes (``ctx.store.stream_every_s``;
    tasks/stream.py), so a rerun after an interruption evaluates only the batches
    not yet stored. ``stream=False`` for loops whose batches carry state beyond
    their outcomes; ``desc`` names the stream and must be unique within a task.

    Under torch.distributed each rank takes every world-th batch and the
    outcomes are gathered and re-ordered by sample index, so the result is the
    same as in one process (no streaming there: only rank 0 writes the store).
    """
    single = cells is None
    if single:
        cells = {desc: perturb}
    elif perturb is not None or desc:
        raise TypeError("run_batches: give either perturb/desc or cells, not both")
    rank, world_size = distributed.world()
    streaming = stream and ctx.store.stream_every_s is not None and world_size == 1
    # Per batch, small numpy arrays (not tensors): ~31 bytes per sample for the standard outcomes.
    records = {d: OutcomeStream(ctx, d, streaming) for d in cells}
    chunk: int | None = None  # forward size that fitted after an out-of-memory error; None: whole batches
    names = list(cells)
    # Under torchrun a rank evaluates batches rank, rank + world, ...: those are what its bar counts.
    ours = range(rank, math.ceil(ctx.num_samples / ctx.run.batch_size), world_size)
    ours_samples = sum(min(ctx.run.batch_size, ctx.num_samples - b * ctx.run.batch_size) for b in ours)
    bar = ctx.progress(total=ours_samples * len(cells),
                       desc=names[0] if single else f"{names[0]} .. {names[-1]} ({len(cells)} cells, one pass)")
    for d, record in records.items():
        if record.resumed_samples:
            _note(ctx, f"{d or 'batch loop'}: resumed an interrupted attempt ({record.resumed_samples} samples "
                       "read back from the store)")
            bar.update(record.resumed_samples)
    stored_everywhere = set.intersection(*(r.done for r in records.values()))
    try:
        for x, y, idx in _batches(ctx, [b for b in ours if b not in stored_everywhere]):
            x, y = x.to(ctx.run.device, non_blocking=True), y.to(ctx.run.device, non_blocking=True)
            batch = Batch(idx, int(idx[0]) // ctx.run.batch_size, batch_seed(ctx.run.seed, idx[0]))
            for d, cell_perturb in cells.items():
                if batch.number in records[d].done:  # stored by an earlier attempt for this cell
                    continue
                xc = cell_perturb(x, y, batch) if cell_perturb is not None else x
                if ctx.run.pipeline.channels_last and xc.ndim == 4:
                    xc = xc.contiguous(memory_format=torch.channels_last)
                logits, chunk = _forward(model, xc, ctx, chunk, extras is None)
                records[d].add(batch.number, _outcomes(logits, y, idx, class_subset, extras))
                bar.update(len(y))
    finally:
        for record in records.values():
            record.write()  # also when the loop raised: the next attempt starts from here
        bar.close()
    for note in fallback_note(ctx.dataset):  # --decode gpu: files decoded with PIL instead
        _note(ctx, note)
    results = {}
    for d, record in records.items():
        local = record.outcomes() or {k: np.empty(0) for k in ("index", "label", "pred", "correct", "correct_top5",
                                                                 "confidence", "finite")}
        results[d] = distributed.gather_outcomes(local)
    if world_size > 1:
        ctx.dataset.corrupt.update(distributed.merged(ctx.dataset.corrupt))  # each rank decoded only its files
    if not len(results[names[0]]["index"]):
        corrupt = ctx.dataset.corrupt
        why = (f"all {len(corrupt)} image file(s) it read were undecodable (e.g. {next(iter(corrupt.values()))}); "
               "check the files (cbbench datasets check)" if corrupt else "it holds no images; check the folder "
               "(cbbench datasets check)")
        raise ValueError(f"dataset {ctx.dataset.name} gave no images to evaluate (limit={ctx.run.limit}): {why}")
    return results[desc] if single else results


def _outcomes(logits: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, class_subset: torch.Tensor | None,
              extras: Callable[[], dict[str, torch.Tensor]] | None) -> dict[str, np.ndarray]:
    """One batch's per-sample outcomes from its float logits, as numpy arrays (the one host sync per batch)."""
    if class_subset is not None:
        logits = logits[:, class_subset.to(logits.device)]
    finite = torch.isfinite(logits).all(dim=1)
    probs = torch.nan_to_num(logits, nan=-torch.inf).softmax(dim=1)
    confidence, pred = probs.max(dim=1)
    correct = (pred == y) & finite
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
    correct_top5 = (top5 == y[:, None]).any(dim=1) & finite
    arrays = {"index": idx, "label": y, "pred": pred, "correct": correct, "correct_top5": correct_top5,
              "confidence": torch.nan_to_num(confidence, nan=0.0), "finite": finite,
              **(extras() if extras else {})}
    return {k: _to_numpy(v) for k, v in arrays.items()}


def _to_numpy(value: torch.Tensor) -> np.ndarray:
    """A numpy copy owning its memory: keeps neither the tensor nor a view of a larger buffer alive."""
    return np.array(value.detach().cpu().numpy(), copy=True)


def _batches(ctx: TaskContext, wanted: list[int]):
    """(x, y, idx) of the batches numbered ``wanted`` (a batch's number: its first sample index // batch size).

    Only those are read (a file dataset decodes no others); memory is pinned only when evaluating on CUDA;
    files are decoded on the device when ``ctx.run.decode_on_device``.
    """
    return ctx.dataset.batches(ctx.run.batch_size, ctx.run.limit, transform=ctx.transform,
                               pin_memory=pin_memory_for(ctx.run.device), only=wanted,
                               decode_device=torch.device(ctx.run.device) if ctx.run.decode_on_device else None)


def pin_memory_for(device: torch.device) -> bool:
    """Page-locked host batches pay off only for copies to a GPU (then ``non_blocking`` overlaps them)."""
    return torch.device(device).type == "cuda"


# model -> its torch.compile'd module, or the reason compiling it failed (it then runs eagerly).
_COMPILED: "weakref.WeakKeyDictionary[torch.nn.Module, Any]" = weakref.WeakKeyDictionary()
_WARNED: set[str] = set()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{exc.__class__.__name__}: {text.splitlines()[0]}" if text else exc.__class__.__name__


def _note(ctx: TaskContext, message: str) -> None:
    """Log ``message`` once per process and add it once to the cell's provenance notes."""
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning(message)
    if message not in ctx.pipeline_notes:
        ctx.pipeline_notes.append(message)


def _compiled(model: torch.nn.Module, ctx: TaskContext) -> torch.nn.Module | None:
    """``torch.compile(model)``, made once per model; None (with a note) where compiling failed."""
    if model not in _COMPILED:
        try:
            _COMPILED[model] = torch.compile(model)
        except Exception as exc:  # e.g. no compiler toolchain, an unsupported platform
            _COMPILED[model] = _first_line(exc)
    found = _COMPILED[model]
    if isinstance(found, str):
        _note(ctx, f"torch.compile failed ({found}); the evaluation forward of {type(model).__name__} ran eagerly")
        return None
    return found


def _eval_forward(model: torch.nn.Module, x: torch.Tensor, ctx: TaskContext, may_compile: bool) -> torch.Tensor:
    """One evaluation forward (inference mode) under the pipeline's autocast, compiled when asked."""
    pipeline = ctx.run.pipeline
    dtype = AMP_DTYPES[pipeline.amp]
    amp = torch.autocast(x.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with torch.inference_mode(), amp:
        compiled = _compiled(model, ctx) if pipeline.compile and may_compile else None
        if pipeline.compile and not may_compile:
            _note(ctx, "forwards whose hooks record extras (attention statistics, AutoAttack predictions) ran "
                       "eagerly: torch.compile is not used with hooks")
        if compiled is not None:
            try:
                return compiled(x)
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # compilation happens at the first call: fall back to eager, once
                _COMPILED[model] = _first_line(exc)
                _compiled(model, ctx)
        return model(x)


def _forward(model: torch.nn.Module, x: torch.Tensor, ctx: TaskContext, chunk: int | None,
             splittable: bool) -> tuple[torch.Tensor, int | None]:
    """(float logits of ``x``, chunk size for the next batches).

    On ``torch.OutOfMemoryError`` the rest of the batch is run in halves, then
    quarters, ... down to one image; the smaller size is kept for the following
    batches. Each image's logits come from the same model on the same input, so
    the outcomes are those of an unsplit run (logits can differ in the last bits,
    as with any other batch size: a BLAS picks kernels by matrix shape). Not
    splittable: forwards whose ``extras`` hooks record one entry per forward.
    """
    n = len(x)
    size = n if chunk is None else min(chunk, n)
    outs: list[torch.Tensor] = []
    start, split = 0, False
    while start < n:
        size = min(size, n - start)
        try:
            outs.append(_eval_forward(model, x[start:start + size], ctx, splittable).float())
            start += size
            continue
        except torch.OutOfMemoryError as exc:
            if not splittable:
                raise torch.OutOfMemoryError(
                    f"out of memory in the evaluation forward of {size} images on {x.device}, and this task "
                    f"records per-forward extras so the batch cannot be split: rerun with a smaller "
                    f"--batch-size (now {ctx.run.batch_size}). ({_first_line(exc)})"
                ) from exc
            if size == 1:
                raise torch.OutOfMemoryError(
                    f"out of memory in the evaluation forward of a single image on {x.device}: free memory "
                    f"on the device, try --amp bf16, or evaluate a smaller model. "
                    f"({_first_line(exc)})"
                ) from exc
        # Outside the except block: the failed forward's tensors (held by the traceback) are freed by now.
        size = chunk = max(1, size // 2)
        split = True
        if x.is_cuda:
            torch.cuda.empty_cache()
    if split:
        _note(ctx, f"the evaluation forward ran out of memory on {x.device} with batches of {ctx.run.batch_size}; "
                   f"they were split into forwards of at most {chunk} images (same outcomes)")
    return (outs[0] if len(outs) == 1 else torch.cat(outs)), chunk


def attack_metrics(robust: np.ndarray, clean_correct: np.ndarray) -> dict[str, float]:
    """Clean accuracy and the attack's success rate on the images it had to flip (those classified right
    clean); NaN when there were none."""
    given_clean = robust[clean_correct]
    return {"clean_accuracy": float(clean_correct.mean()),
            "attack_success_rate": float(1 - given_clean.mean()) if len(given_clean) else float("nan")}


def accuracy_metrics(outcomes: dict[str, np.ndarray], prefix: str = "") -> dict[str, float]:
    """Accuracy plus the count of samples whose logits were not finite (0 when all is well)."""
    return {f"{prefix}accuracy": float(outcomes["correct"].mean()),
            f"{prefix}nonfinite": float((~outcomes["finite"]).sum())}
