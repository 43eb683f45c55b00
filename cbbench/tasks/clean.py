"""Clean accuracy and calibration on the unperturbed test images."""
from __future__ import annotations

from dataclasses import dataclass

from cbbench.metrics import expected_calibration_error, rms_calibration_error
from cbbench.tasks.base import Metric, Task, TaskContext, TaskResult, accuracy_metrics, register_task, run_batches


@dataclass(frozen=True)
class CleanTask(Task):
    name = "clean"
    version = 1
    kind = "clean"
    headline = Metric("accuracy", "clean top-1", True)
    protocol = "top-1 on the unperturbed test split; ECE: 15 equal-width bins, L1, top label"

    def evaluate(self, model, ctx: TaskContext) -> TaskResult:
        out = run_batches(model, ctx, desc="clean")
        metrics = accuracy_metrics(out)
        metrics["ece"] = expected_calibration_error(out["confidence"], out["correct"])
        metrics["rms_calibration_error"] = rms_calibration_error(out["confidence"], out["correct"])
        return TaskResult(metrics, out)


register_task(CleanTask())
