"""Common corruptions (ImageNet-C's 15 x 5) applied on the fly to the test images.

Two engines: the reference functions (PyPI ``imagecorruptions`` 1.1.2, via
cbbench.corruptions.reference, each image seeded by (seed, sample index), so the
same inputs are produced whatever the batch size), or cbbench's batched torch
engine (cbbench.corruptions.engine, faithful to the reference in value or in
distribution, seeded by (seed, first index of the batch)); both are applied by
cbbench.corruptions.apply. Corrupted batches are kept in a bounded in-memory cache,
so the CB twin is evaluated on exactly the images its baseline saw without
corrupting them twice. All cells are evaluated in one pass over the data
(``corruption_cells``): each batch is read once for the 75 cells, with the
numbers of a cell-by-cell loop (tests/test_one_pass.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cbbench.corruptions.apply import ENGINES, check_engine, corrupt_batch_cached, engine_seeds_per_batch
from cbbench.corruptions.catalog import BENCHMARK_CORRUPTIONS, SEVERITIES, TORCH_ENGINE
from cbbench.tasks.base import Metric, Task, TaskContext, TaskResult, register_task, run_batches


def corruption_cells(model, ctx: TaskContext, names: list[str], engine: str, prefix: str = ""
                     ) -> dict[str, dict[str, np.ndarray]]:
    """{"<c>/<s>": outcomes} for cells named "<corruption>/<severity>" (or "clean"), in one pass over the data.

    Each cell's outcomes (and its stream of stored batches, named "<prefix><c> s<s>") are those of
    a run_batches call of its own: the corruption of a batch depends only on (seed, sample indices).
    """
    def perturb(c: str, s: int):
        return lambda x, y, batch: corrupt_batch_cached(ctx.dataset.name, x, batch.index, c, s, ctx.run.seed, engine)

    descs = {}
    for name in names:
        c, _, s = name.partition("/")
        descs[name] = (f"{prefix}clean", None) if name == "clean" else (f"{prefix}{c} s{s}", perturb(c, int(s)))
    out = run_batches(model, ctx, cells=dict(descs.values()))
    return {name: out[desc] for name, (desc, _) in descs.items()}


class UsesEngine:
    """A task with an ``engine`` field (a corruption engine): the name is checked when the task is made, and the
    engine decides whether the task's random draws follow the batch boundaries (``seeded_per_batch``)."""

    engine: str

    def __post_init__(self):
        check_engine(self.engine)

    @property
    def seeded_per_batch(self) -> bool:
        return engine_seeds_per_batch(self.engine)


@dataclass(frozen=True)
class CorruptionTask(UsesEngine, Task):
    corruptions: tuple[str, ...] = tuple(BENCHMARK_CORRUPTIONS)
    severities: tuple[int, ...] = tuple(SEVERITIES)
    engine: str = ENGINES[0]
    task_name: str = ""

    version = 1
    kind = "corruption"
    figure = "severity"

    @property
    def name(self) -> str:
        return self.task_name or "corruptions"

    @property
    def headline(self) -> Metric:
        label = "corruption acc. (mean 15x5)" if self.engine == ENGINES[0] else "corruption acc. (torch engine)"
        return Metric("mean_accuracy", label, True)

    @property
    def protocol(self) -> str:
        grid = f"{len(self.corruptions)} corruptions x {len(self.severities)} severities"
        return (f"ImageNet-C corruptions generated on the fly with {self.engine} (uint8-quantized), top-1 "
                f"averaged over {grid}; no AlexNet normalization")

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

    def details(self, cells, models) -> list:
        """Per corruption task: top-1 per corruption and severity (more than two models: mean over severities)."""
        from cbbench.report.table import Table

        lines = []
        for task in dict.fromkeys(t for _, t in cells):
            ok = [(m, cells[(m, task)]) for m in models if (m, task) in cells and cells[(m, task)].status == "ok"]
            if not ok:
                continue
            params = ok[0][1].task_params
            per_severity = len(ok) <= 2  # more models: one mean per corruption, or the table gets unreadable
            rows = []
            for corruption in params["corruptions"]:
                row = {"corruption": corruption}
                for m, cell in ok:
                    if per_severity:
                        for s in params["severities"]:
                            row[f"{m} s{s}"] = f"{100 * cell.metrics[f'accuracy/{corruption}/{s}']:.1f}"
                    row[f"{m} mean" if per_severity else m] = f"{100 * cell.metrics[f'accuracy/{corruption}']:.1f}"
                rows.append(row)
            what = "per corruption and severity" if per_severity else "per corruption, mean over severities"
            lines += [f"## `{task}`: top-1 (%) {what} ↑", "",
                      f"Generated on the fly from the test images with {params.get('engine')} "
                      "(not a precomputed -C set).", "",
                      Table(rows), ""]
            if ok[0][1].dataset == "digits":
                lines += [DIGITS_NOTE, ""]
                note = _pixelate_note(ok, params)
                lines += [note, ""] if note else []
        return lines


DIGITS_NOTE = ("Digits are white strokes on black: fog, frost, snow, brightness and contrast wash them out, "
               "so accuracy near chance (10%) at high severity there is expected, not a bug.")


def _pixelate_note(ok, params) -> str | None:
    """Readers take a rise in accuracy with severity for a bug: say, from the data, why pixelate does that on digits."""
    severities = list(params.get("severities", ()))
    if "pixelate" not in params.get("corruptions", ()) or len(severities) < 2:
        return None
    from cbbench.corruptions.engine import PARAMETERS
    from cbbench.data.digits import IMAGE_SIZE

    for model, cell in ok:
        acc = [cell.metrics.get(f"accuracy/pixelate/{s}") for s in severities]
        if None in acc or not any(b - a > 0.05 for a, b in zip(acc, acc[1:])):  # rises > 5 pp with severity
            continue
        grids = [str(int(IMAGE_SIZE * PARAMETERS["pixelate"][1][s - 1])) for s in severities]
        return (f"pixelate is not monotone in severity on digits ({model}: "
                f"{', '.join(f'{100 * a:.1f}' for a in acc)} % at severities {', '.join(map(str, severities))}): "
                f"it box-averages the {IMAGE_SIZE}x{IMAGE_SIZE} image to a grid of {', '.join(grids)} pixels and "
                f"blows it back up, and on 8x8 digits upscaled {IMAGE_SIZE // 8}x how much of a stroke survives depends on how that "
                "grid falls on the original pixels more than on how coarse it is.")
    return None


register_task(CorruptionTask())
register_task(CorruptionTask(engine=TORCH_ENGINE, task_name="corruptions_torch"))
