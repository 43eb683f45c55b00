"""ImageNet-scale tasks: clean val, ImageNet-A/-R (and their 200-class clean counterparts), Sketch, V2,
and the precomputed ImageNet-C (CE / mCE normalized by AlexNet, relative mCE, unnormalized mean error).

Every task reads its own dataset from the data root (``resolve_dataset``); the
suite's dataset is only used when it is the one a task needs (e.g. imagenet_val).
All of them run through tasks/base.py::run_batches. Files that cannot be
decoded are skipped, counted in the metric ``corrupt_files_skipped`` and named in
the notes; accuracies are over the decoded images only.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Callable, ClassVar

import numpy as np

from cbbench.corruptions.catalog import BENCHMARK_CORRUPTIONS, HELDOUT_CORRUPTIONS, SEVERITIES
from cbbench.data import imagenet as data  # importing it registers the ImageNet datasets
from cbbench.data.base import EvalDataset
from cbbench.data.registry import load_dataset
from cbbench.data.device_decode import fallback_note
from cbbench.data.folders import ImageFolderDataset, to_tensor_only
from cbbench.errors import DatasetMissingError
from cbbench.metrics import (
    ALEXNET_CLEAN_ERR, ALEXNET_ERR, corruption_error,
    expected_calibration_error, mce, relative_corruption_error, relative_mce, rms_calibration_error,
)
from cbbench.tasks.base import Metric, Task, TaskContext, TaskResult, accuracy_metrics, register_task, run_batches


# ----------------------------------------------------------------------------- helpers

def resolve_dataset(ctx: TaskContext, name: str):
    """Dataset ``name``: the context's own when it is that one, else loaded from ``ctx.run.data_root``.

    Raises DatasetMissingError (the runner records a skip with its message) when the
    data is absent.
    """
    ds = ctx.dataset
    if ds is None or ds.name != name:
        ds = load_dataset(name, ctx.run.data_root)
    return with_workers(ds, ctx)


def with_workers(ds, ctx: TaskContext):
    """``ds`` reading its files with the run's DataLoader workers (``RunSettings.num_workers``), if it sets them.
    A tree of datasets (ImageNet-C) reads nothing itself: its cells get the workers (``ImageNetCTask``)."""
    if ctx.run.num_workers is not None and isinstance(ds, EvalDataset):
        ds.num_workers = ctx.run.num_workers
    return ds


def model_transform(ctx: TaskContext) -> Callable:
    if ctx.transform is None:
        raise ValueError(
            "ImageNet tasks need the model's eval transform (TaskContext.transform, from model.eval_transform; "
            "see cbbench.data.transforms.eval_transform_for)"
        )
    return ctx.transform


def _evaluate(model, ctx: TaskContext, ds: ImageFolderDataset, transform: Callable, desc: str
              ) -> tuple[dict[str, np.ndarray], list[int]]:
    """run_batches on ``ds`` with ``transform`` and the dataset's logit mask; (outcomes, corrupt indices)."""
    out = run_batches(model, replace(ctx, dataset=ds, transform=transform), desc=desc,
                      class_subset=ds.class_subset)
    return out, ds.corrupt_within(ctx.run.limit)


def corrupt_note(label: str, paths: list[str], errors: list[str]) -> list[str]:
    if not paths:
        return []
    shown = "; ".join(f"{p} ({e})" for p, e in zip(paths[:5], errors[:5]))
    more = f"; and {len(paths) - 5} more" if len(paths) > 5 else ""
    return [f"{label}: {len(paths)} corrupt image file(s) skipped, not counted in the accuracy: {shown}{more}"]


def _files_digest(ds: ImageFolderDataset, limit: int | None) -> np.ndarray:
    """SHA-1 of the relative paths of the samples evaluated: cells with equal digests hold the same images."""
    n = len(ds) if limit is None else min(limit, len(ds))
    h = hashlib.sha1("\n".join(ds.relpath(i) for i in range(n)).encode())
    return np.frombuffer(h.digest(), dtype=np.uint8).copy()


# ----------------------------------------------------------------------------- clean / A / R / Sketch / V2

class ImageFolderTask(Task):
    """Top-1/top-5 (and calibration) on one file-backed dataset with the model's own eval transform.

    One instance per dataset (the table IMAGE_FOLDER_TASKS below); it has no parameters, so its cell key is
    its name and version. ``val_subset`` "a" / "r": ImageNet val restricted to that 200-class list.
    """

    version = 1
    own_dataset = True  # loads its data from the data root: runs even when the suite's dataset is absent

    def __init__(self, name: str, dataset_name: str, kind: str, label: str, protocol: str,
                 val_subset: str | None = None):
        self.name, self.dataset_name, self.kind, self.protocol = name, dataset_name, kind, protocol
        self.headline = Metric("accuracy", label, True)
        self.val_subset = val_subset

    def params(self) -> dict:
        return {}

    def dataset(self, ctx: TaskContext) -> ImageFolderDataset:
        if self.val_subset is not None:
            return data.imagenet_val_subset(resolve_dataset(ctx, "imagenet_val"), self.val_subset)
        return resolve_dataset(ctx, self.dataset_name)

    def evaluate(self, model, ctx: TaskContext) -> TaskResult:
        ds = self.dataset(ctx)
        out, skipped = _evaluate(model, ctx, ds, model_transform(ctx), self.name)
        metrics = accuracy_metrics(out)
        metrics["top5_accuracy"] = float(out["correct_top5"].mean())
        metrics["ece"] = expected_calibration_error(out["confidence"], out["correct"])
        metrics["rms_calibration_error"] = rms_calibration_error(out["confidence"], out["correct"])
        metrics["images"] = float(len(out["index"]))
        metrics["corrupt_files_skipped"] = float(len(skipped))
        notes = corrupt_note(ds.name, [ds.paths[i] for i in skipped], [ds.corrupt[i] for i in skipped])
        notes += fallback_note(ds)  # --decode gpu: files the device decoder refused
        return TaskResult(metrics, out, notes)


_EVAL_TF = ("the model's own eval transform (timm pretrained config: resize to input/crop_pct, center crop; "
            "no normalization outside the model)")
_METRICS = "top-1 (accuracy), top-5, ECE (15 equal-width bins, L1), RMS calibration error (adaptive bins of 100)"



def _two_hundred_class_pair(x: str, images: str) -> tuple[ImageFolderTask, ImageFolderTask]:
    """ImageNet-A or -R (``x`` "a" / "r") and its clean counterpart: val restricted to the same 200 classes."""
    X = x.upper()
    return (
        ImageFolderTask(
            f"imagenet_{x}", f"imagenet_{x}", "shift", f"IN-{X} top-1 (200 cl.)",
            f"ImageNet-{X} ({images} images, 200 classes), {_EVAL_TF}; the 1000 logits are restricted to the 200 "
            f"ImageNet-{X} classes BEFORE argmax/softmax, labels = position in the sorted 200-wnid list; "
            f"200-way {_METRICS}"),
        ImageFolderTask(
            f"imagenet_{x}_clean", "imagenet_val", "clean", f"IN-{X} clean top-1 (val, 200 cl.)",
            f"ImageNet val restricted to ImageNet-{X}'s 200 classes (10,000 images), same 200-logit mask as "
            f"imagenet_{x} (restricted before argmax), {_EVAL_TF}; 200-way {_METRICS}", val_subset=x),
    )


IMAGE_FOLDER_TASKS = (
    ImageFolderTask(
        "imagenet_clean", "imagenet_val", "clean", "ImageNet top-1",
        f"ImageNet-1k val (50,000 images in wnid folders, labels = position in the sorted 1000-wnid list), "
        f"{_EVAL_TF}; 1000-way {_METRICS}"),
    *(task for x, images in (("a", "7,500"), ("r", "30,000")) for task in _two_hundred_class_pair(x, images)),
    ImageFolderTask(
        "imagenet_sketch", "imagenet_sketch", "shift", "IN-Sketch top-1",
        f"ImageNet-Sketch (50,889 images, 1000 wnid folders), {_EVAL_TF}; 1000-way {_METRICS}"),
    ImageFolderTask(
        "imagenet_v2", "imagenet_v2", "shift", "IN-V2 MF top-1",
        f"ImageNetV2 matched-frequency (10,000 images; folders '0'..'999' are class indices, ordered "
        f"numerically, not lexicographically), {_EVAL_TF}; 1000-way {_METRICS}"),
)


# ----------------------------------------------------------------------------- ImageNet-C (precomputed)

def _slim(out: dict[str, np.ndarray], ds: ImageFolderDataset, limit: int | None) -> dict[str, np.ndarray]:
    """What a (corruption, severity) cell keeps for resumption and aggregation (compact dtypes)."""
    skipped = ds.corrupt_within(limit)
    return {
        "index": out["index"].astype(np.int32),
        "pred": out["pred"].astype(np.int16),
        "correct": out["correct"].astype(bool),
        "finite": out["finite"].astype(bool),
        "skipped_index": np.asarray(skipped, dtype=np.int64),
        "skipped_path": np.asarray([ds.relpath(i) for i in skipped], dtype=str),
        "files_digest": _files_digest(ds, limit),
    }


@dataclass(frozen=True)
class ImageNetCTask(Task):
    """Precomputed ImageNet-C: E(c,s), CE / mCE (AlexNet-normalized), relative mCE, unnormalized mean error.

    The clean error that relative mCE needs is measured inside the task (ImageNet val,
    the model's eval transform, the same ``limit``), kept as the part "clean".
    """

    corruptions: tuple[str, ...] = BENCHMARK_CORRUPTIONS
    holdout: tuple[str, ...] = HELDOUT_CORRUPTIONS
    severities: tuple[int, ...] = SEVERITIES

    name = "imagenet_c"
    version = 1
    kind = "corruption"
    own_dataset = True
    one_pass: ClassVar[bool] = False  # whether all cells are evaluated in one pass over the same images
    headline = Metric("mean_accuracy", "IN-C acc. (mean 15x5)", True)
    protocol = (
        "Precomputed ImageNet-C JPEGs (Hendrycks & Dietterich 2019), evaluated as stored: 224x224, ToTensor only, "
        "NO resize or crop. error/<c>/<s> = top-1 error E(c,s). ce/<c> = sum_s E(c,s) / sum_s E_AlexNet(c,s). "
        "mce = mean of ce over the 15 benchmark corruptions (the 4 held-out ones get ce/<c> but are excluded), "
        "stored as a ratio to AlexNet (1.0 = AlexNet; x100 is the published mCE number). relative_ce/<c> = "
        "sum_s (E(c,s) - E_clean) / sum_s (E_AlexNet(c,s) - 0.4348); relative_mce = their mean over the 15, "
        "with clean_error measured in this task on ImageNet val (model's eval transform, same image limit). "
        "mean_error = UNNORMALIZED mean of E over 15 corruptions x 5 severities (not AlexNet-normalized); "
        "mean_accuracy = 1 - mean_error (headline). accuracy/<c>/<s> = 1 - E(c,s)."
    )

    def evaluate(self, model, ctx: TaskContext) -> TaskResult:
        cells, holdout, notes = self._cells(model, ctx)
        eval_tf = model_transform(ctx)

        def clean():
            val = resolve_dataset(ctx, "imagenet_val")
            return _slim(_evaluate(model, ctx, val, eval_tf, "imagenet val (clean)")[0], val, ctx.run.limit)

        parts = {"clean": ctx.part("clean", clean)}
        evaluated = [*self.corruptions, *holdout]
        names = {f"{c}/{s}": (c, s) for c in evaluated for s in self.severities}
        # Precomputed cells are separate files: one pass (and one stored part) per cell. Generated cells
        # are made from the same val images: one pass for all of them.
        groups = [list(names)] if self.one_pass else [[name] for name in names]
        for group in groups:
            got = ctx.parts(group, lambda todo: cells([names[n] for n in todo]))
            parts.update({names[n]: arrays for n, arrays in got.items()})
        return self._aggregate(parts, evaluated, notes)

    def _cells(self, model, ctx: TaskContext
               ) -> tuple[Callable[[list[tuple[str, int]]], dict[str, dict]], list[str], list[str]]:
        """(cells([(corruption, severity), ...]) -> {"<c>/<s>": slim outcomes}, held-out corruptions to
        evaluate, notes).

        The one place where precomputed and generated ImageNet-C differ: here, the
        stored JPEG cells of the tree, evaluated as stored.
        """
        tree = resolve_dataset(ctx, "imagenet_c")
        needed = [(c, s) for c in self.corruptions for s in self.severities]
        missing = [f"{c}/{s}" for c, s in needed if not tree.has_cell(c, s)]
        if missing:
            raise DatasetMissingError(
                f"ImageNet-C at {tree.root} lacks {len(missing)} of the {len(needed)} benchmark cells "
                f"({', '.join(missing[:6])}{', ...' if len(missing) > 6 else ''}); the mCE needs all of them. "
                f"See datasets/imagenet_c.md, or use the task imagenet_c_generated (made from ImageNet val)"
            )
        holdout = [c for c in self.holdout if all(tree.has_cell(c, s) for s in self.severities)]
        notes = []
        if len(holdout) < len(self.holdout):
            absent = [c for c in self.holdout if c not in holdout]
            notes.append(f"held-out corruptions not found, not evaluated: {', '.join(absent)} "
                         f"(they are not part of the mCE)")
        no_resize = to_tensor_only()

        def cell(c: str, s: int):
            ds = with_workers(tree.cell(c, s), ctx)
            return _slim(_evaluate(model, ctx, ds, no_resize, f"{c} s{s}")[0], ds, ctx.run.limit)

        return (lambda todo: {f"{c}/{s}": cell(c, s) for c, s in todo}), holdout, notes

    def _aggregate(self, parts: dict, evaluated: list[str], notes: list[str]) -> TaskResult:
        metrics: dict[str, float] = {}
        samples: dict[str, np.ndarray] = {}
        clean = parts["clean"]
        clean_err = 1.0 - float(clean["correct"].mean())
        metrics["clean_error"], metrics["clean_accuracy"] = clean_err, 1.0 - clean_err
        samples["clean.correct"], samples["clean.pred"] = clean["correct"], clean["pred"]

        errors: dict[str, list[float]] = {}
        for c in evaluated:
            errors[c] = []
            for s in self.severities:
                p = parts[(c, s)]
                e = 1.0 - float(p["correct"].mean())
                errors[c].append(e)
                metrics[f"error/{c}/{s}"] = e
                metrics[f"accuracy/{c}/{s}"] = 1.0 - e
                samples[f"{c}.{s}.correct"], samples[f"{c}.{s}.pred"] = p["correct"], p["pred"]
            metrics[f"error/{c}"] = float(np.mean(errors[c]))
            metrics[f"accuracy/{c}"] = 1.0 - metrics[f"error/{c}"]
        full = tuple(self.severities) == SEVERITIES
        if full:
            for c in evaluated:
                if c in ALEXNET_ERR:
                    metrics[f"ce/{c}"] = corruption_error(errors[c], c)
                    metrics[f"relative_ce/{c}"] = relative_corruption_error(errors[c], clean_err, c)
        if full and set(BENCHMARK_CORRUPTIONS) <= set(self.corruptions):
            metrics["mce"] = mce(errors) / 100.0
            metrics["relative_mce"] = relative_mce(errors, clean_err) / 100.0
        else:
            notes.append("mce / relative_mce not computed: they need all 15 benchmark corruptions x severities 1..5")
        bench = [e for c in self.corruptions for e in errors[c]]
        metrics["mean_error"] = float(np.mean(bench))
        metrics["mean_accuracy"] = 1.0 - metrics["mean_error"]
        for i, s in enumerate(self.severities):
            metrics[f"error/severity{s}"] = float(np.mean([errors[c][i] for c in self.corruptions]))

        all_parts = [clean] + [parts[(c, s)] for c in evaluated for s in self.severities]
        metrics["nonfinite"] = float(sum(int((~p["finite"]).sum()) for p in all_parts))
        metrics["corrupt_files_skipped"] = float(sum(len(p["skipped_index"]) for p in all_parts))
        labelled = [("imagenet_val", clean)] + [(f"imagenet_c/{c}/{s}", parts[(c, s)])
                                                for c in evaluated for s in self.severities]
        for label, p in labelled:
            notes += corrupt_note(label, [str(x) for x in p["skipped_path"]], ["undecodable"] * len(p["skipped_path"]))
        notes.append(f"clean_error {clean_err:.4f} measured in this task on ImageNet val with the model's eval "
                     f"transform (AlexNet reference clean error {ALEXNET_CLEAN_ERR})")
        samples.update(self._per_image(parts, notes))
        return TaskResult(metrics, samples, notes)

    def _per_image(self, parts: dict, notes: list[str]) -> dict[str, np.ndarray]:
        """Per-image quantities over the 15x5 benchmark cells, for paired statistics.

        ``correct``: each image's mean correctness over the cells (its mean is mean_accuracy
        when no file was skipped); ``mce_contribution``: mean over corruptions of
        sum_s error / sum_s E_AlexNet, whose mean over images is the mCE ratio.
        """
        keys = [(c, s) for c in self.corruptions for s in self.severities]
        cells = [parts[k] for k in keys]
        if len({p["files_digest"].tobytes() for p in cells}) != 1:
            notes.append("the ImageNet-C cells hold different image lists: per-image pairing is not possible, "
                         "'correct' concatenates all (image, cell) outcomes (paired CIs are then too narrow)")
            return {"correct": np.concatenate([p["correct"] for p in cells]).astype(np.float64)}
        n = 1 + max(int(p["index"].max()) for p in cells)
        grid = np.full((len(cells), n), np.nan)
        for row, p in enumerate(cells):
            grid[row, p["index"]] = p["correct"]
        seen = ~np.isnan(grid).all(axis=0)
        out = {"index": np.flatnonzero(seen).astype(np.int32),
               "correct": np.nanmean(grid[:, seen], axis=0)}
        if not np.isnan(grid[:, seen]).any() and tuple(self.severities) == SEVERITIES \
                and sorted(self.corruptions) == sorted(BENCHMARK_CORRUPTIONS):
            err = 1.0 - grid[:, seen].reshape(len(self.corruptions), len(self.severities), -1)
            ref = np.array([sum(ALEXNET_ERR[c]) for c in self.corruptions])[:, None]
            out["mce_contribution"] = (err.sum(axis=1) / ref).mean(axis=0)
        return out


for _task in (*IMAGE_FOLDER_TASKS, ImageNetCTask()):
    register_task(_task)
