"""What CB costs: parameters and inference throughput, measured side by side with the paired model.

Throughput measured in separate cells at different times is mostly machine
noise, so this task times the model and its partner (baseline or CB twin)
interleaved, repeat after repeat, on the same batch, and reports the ratio of
their medians. Without a partner it times the model alone (no ratio).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from cbbench.tasks.base import Metric, Task, TaskContext, TaskResult, register_task


def _images_per_second(model: torch.nn.Module, x: torch.Tensor) -> float:
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        model(x)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return len(x) / (time.perf_counter() - t0)


@dataclass(frozen=True)
class CostTask(Task):
    repeats: int = 30
    warmup: int = 3

    name = "cost"
    version = 1
    kind = "cost"
    uses_partner = True
    headline = Metric("throughput_ratio", "throughput vs pair (×)", True, percent=False, samples=None)

    @property
    def protocol(self) -> str:
        return (f"parameters counted; inference images/s on one batch of test images (batch size of the run), "
                f"model and its pair timed alternately {self.repeats} times after {self.warmup} warm-ups, "
                "median; ratio = this model / its pair (1.0 = same speed)")

    def evaluate(self, model, ctx: TaskContext) -> TaskResult:
        x, _, _ = next(iter(ctx.dataset.batches(ctx.run.batch_size, ctx.run.limit, transform=ctx.transform)))
        x = x.to(ctx.run.device)
        models = [model] + ([ctx.partner] if ctx.partner is not None else [])
        speeds: list[list[float]] = [[] for _ in models]
        for i in range(self.warmup + self.repeats):
            for m, s in zip(models, speeds):
                speed = _images_per_second(m, x)
                if i >= self.warmup:
                    s.append(speed)
        metrics = {"num_params": float(sum(p.numel() for p in model.parameters())),
                   "images_per_second": statistics.median(speeds[0]), "batch_size": float(len(x))}
        if ctx.partner is not None:
            metrics["partner_images_per_second"] = statistics.median(speeds[1])
            metrics["throughput_ratio"] = metrics["images_per_second"] / metrics["partner_images_per_second"]
            metrics["partner_num_params"] = float(sum(p.numel() for p in ctx.partner.parameters()))
            metrics["extra_params"] = metrics["num_params"] - metrics["partner_num_params"]
        notes = [] if ctx.partner is not None else ["no paired model in this run: throughput measured alone"]
        return TaskResult(metrics, {}, notes)

    def details(self, cells, models) -> list:
        from cbbench.report.table import Table

        rows = []
        for (m, _), c in cells.items():
            if c.status == "ok":
                mt = c.metrics
                rows.append({"model": m, "parameters": f"{mt['num_params']:,.0f}",
                             "extra vs pair": f"{mt['extra_params']:+,.0f}" if "extra_params" in mt else "–",
                             "images/s": f"{mt['images_per_second']:.0f}",
                             "pair images/s (interleaved)": f"{mt.get('partner_images_per_second', float('nan')):.0f}",
                             "ratio ↑": f"{mt['throughput_ratio']:.3f}" if "throughput_ratio" in mt else "–"})
        if not rows:
            return []
        return ["## Cost: parameters and inference throughput", "",
                "Each model is timed alternately with its pair on the same batch; on a busy machine the two "
                "ratios of a pair need not be reciprocal: read the spread as noise.", "",
                Table(rows), ""]


register_task(CostTask())
