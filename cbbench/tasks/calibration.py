"""Calibration on clean and on shifted (corrupted) test images: ECE and Hendrycks' RMS calibration error.

Definitions (cbbench.metrics, protocols.md): ECE = 15 equal-width confidence
bins, L1, top label (torchmetrics' classic binning); RMS calibration error =
Hendrycks' adaptive bins of 100 samples sorted by confidence, L2, all bins kept.
Both are fractions, shown x100; lower is better.

Shift: the ImageNet-C corruptions of cbbench.tasks.corruptions, generated the
same way (imagecorruptions 1.1.2, seeded per image by (run seed, index),
uint8-quantized) and through the same bounded cache, so the images are exactly
those the ``corruptions`` task sees at these (corruption, severity) cells. Default:
all 15 benchmark corruptions at severity 3 (the middle one).

Metrics, each labelled by the data it was measured on:

* ``ece/clean``, ``rms/clean``, ``accuracy/clean``, ``confidence/clean`` (mean top-1 probability);
* ``ece/corrupted``, ``rms/corrupted``, ``accuracy/corrupted``, ``confidence/corrupted``: pooled over
  every (corruption, severity, image) prediction, i.e. one reliability diagram of all shifted data;
* ``ece/<c>/<s>``, ``rms/<c>/<s>``, ``accuracy/<c>/<s>``, ``confidence/<c>/<s>``: one corruption
  cell (``accuracy/<c>/<s>`` is named as in the ``corruptions`` task: same images, same number);
  ``ece/<c>``, ``rms/<c>``, ``accuracy/<c>``, ``confidence/<c>``: mean over the severities of <c>;
* ``ece/corrupted_mean``, ``rms/corrupted_mean``: the plain mean of the per-cell values.

Per-sample arrays: ``correct``, ``confidence``, ``pred``, ``label`` (clean, aligned with the
test images), ``ece_contribution`` (clean; its mean is ``ece/clean``, see ``ece_contributions``)
and ``<c>.<s>.correct`` / ``<c>.<s>.confidence`` / ``<c>.<s>.pred`` per cell.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cbbench.corruptions.catalog import BENCHMARK_CORRUPTIONS, REFERENCE_ENGINE, TORCH_ENGINE
from cbbench.metrics import expected_calibration_error, rms_calibration_error
from cbbench.tasks.base import Metric, Task, TaskContext, TaskResult, register_task
from cbbench.tasks.corruptions import UsesEngine, corruption_cells

ECE_BINS = 15
RMS_BIN_SIZE = 100
KINDS = ("ece", "rms", "accuracy", "confidence")


def ece_contributions(confidence, correct, n_bins: int = ECE_BINS) -> np.ndarray:
    """Per-sample terms whose mean is exactly the ECE: sign(acc_b - conf_b) * (correct_i - conf_i), b = i's bin.

    Same bins as metrics.expected_calibration_error. Resampling these (paired, with the
    bins and the sign of each bin's gap held fixed) is the delta-method view of ECE: what a
    paired bootstrap of the ECE difference between two models can resample per image.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    corr = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    gap = np.bincount(idx, weights=corr - conf, minlength=n_bins)
    return (np.sign(gap)[idx] * (corr - conf)).astype(np.float32)


def calibration_metrics(out: dict[str, np.ndarray], suffix: str) -> dict[str, float]:
    conf, correct = out["confidence"], out["correct"]
    return {f"ece/{suffix}": expected_calibration_error(conf, correct, n_bins=ECE_BINS),
            f"rms/{suffix}": rms_calibration_error(conf, correct, bin_size=RMS_BIN_SIZE),
            f"accuracy/{suffix}": float(np.mean(correct)),
            f"confidence/{suffix}": float(np.mean(conf))}


@dataclass(frozen=True)
class CalibrationTask(UsesEngine, Task):
    corruptions: tuple[str, ...] = tuple(BENCHMARK_CORRUPTIONS)
    severities: tuple[int, ...] = (3,)
    engine: str = REFERENCE_ENGINE
    task_name: str = ""

    version = 1
    kind = "calibration"
    headline = Metric("ece/clean", "ECE clean (15 bins, L1)", False, percent=True, samples="ece_contribution")

    @property
    def name(self) -> str:
        return self.task_name or "calibration"

    @property
    def protocol(self) -> str:
        return (f"top-label ECE (15 equal-width bins, L1) and Hendrycks' RMS calibration error (adaptive bins "
                f"of 100, L2) on clean test images and on {len(self.corruptions)} ImageNet-C corruptions at "
                f"severit{'y' if len(self.severities) == 1 else 'ies'} {', '.join(map(str, self.severities))} "
                f"({self.engine}, uint8); 'corrupted' pools all shifted predictions")

    def evaluate(self, model, ctx: TaskContext) -> TaskResult:
        parts = ctx.parts(["clean", *(f"{c}/{s}" for c in self.corruptions for s in self.severities)],
                          lambda todo: corruption_cells(model, ctx, todo, self.engine, prefix="calibration "))
        clean = parts["clean"]
        metrics = calibration_metrics(clean, "clean")
        samples = {k: clean[k] for k in ("correct", "confidence", "pred", "label")}
        samples["ece_contribution"] = ece_contributions(clean["confidence"], clean["correct"])
        nonfinite = float((~clean["finite"]).sum())
        pooled_conf, pooled_correct = [], []
        for c in self.corruptions:
            for s in self.severities:
                out = parts[f"{c}/{s}"]
                metrics.update(calibration_metrics(out, f"{c}/{s}"))
                for key in ("correct", "confidence", "pred"):
                    samples[f"{c}.{s}.{key}"] = out[key]
                pooled_conf.append(out["confidence"])
                pooled_correct.append(out["correct"])
                nonfinite += float((~out["finite"]).sum())
            for kind in KINDS:  # per corruption: mean over its severities
                metrics[f"{kind}/{c}"] = float(np.mean([metrics[f"{kind}/{c}/{s}"] for s in self.severities]))
        if pooled_conf:
            metrics.update(calibration_metrics({"confidence": np.concatenate(pooled_conf),
                                                "correct": np.concatenate(pooled_correct)}, "corrupted"))
            for kind in ("ece", "rms"):
                metrics[f"{kind}/corrupted_mean"] = float(np.mean(
                    [metrics[f"{kind}/{c}/{s}"] for c in self.corruptions for s in self.severities]))
        metrics["nonfinite"] = nonfinite
        return TaskResult(metrics, samples)


register_task(CalibrationTask())
register_task(CalibrationTask(engine=TORCH_ENGINE, task_name="calibration_torch"))
