"""Patch-drop occlusion: accuracy when a random share of the model's patches is blacked out.

Why: ViTs are known to keep much of their accuracy when patches go missing (Naseer et
al., "Intriguing Properties of Vision Transformers", NeurIPS 2021, random PatchDrop);
CB mixes every token with the mean of all tokens, so whether it makes a model more or
less reliant on any one patch is a fair question. Each image loses the same patches
whatever the batch size (drawn from (run seed, sample index)), on the model's own
patch grid (timm ViTs; an 8 x 8 grid otherwise), set to black in [0, 1] pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cbbench.tasks.base import Metric, Task, TaskContext, TaskResult, register_task, run_batches


def patch_grid(model: torch.nn.Module, height: int, width: int) -> tuple[int, int]:
    """(rows, cols) of the model's patch grid on an input of this size; 8 x 8 when it has none."""
    net = getattr(model, "net", model)
    grid = getattr(getattr(net, "patch_embed", None), "grid_size", None)
    rows, cols = (int(grid[0]), int(grid[1])) if grid else (8, 8)
    return (rows, cols) if height % rows == 0 and width % cols == 0 else (8, 8)


def drop_patches(x: torch.Tensor, idx: torch.Tensor, ratio: float, grid: tuple[int, int], seed: int) -> torch.Tensor:
    """``x`` with round(ratio * patches) patches per image set to 0, chosen from (seed, the image's index)."""
    rows, cols = grid
    n = rows * cols
    k = round(ratio * n)
    keep = torch.ones(len(x), n, dtype=x.dtype)
    for row, i in enumerate(idx.tolist()):
        order = np.random.default_rng(np.random.SeedSequence([seed, i])).permutation(n)
        keep[row, torch.from_numpy(order[:k])] = 0
    mask = keep.view(len(x), 1, rows, cols).to(x.device)
    ph, pw = x.shape[-2] // rows, x.shape[-1] // cols
    return x * mask.repeat_interleave(ph, dim=2).repeat_interleave(pw, dim=3)


@dataclass(frozen=True)
class PatchDropTask(Task):
    ratios: tuple[float, ...] = (0.25, 0.5, 0.75)

    name = "patch_drop"
    version = 1
    kind = "corruption"
    headline = Metric("mean_accuracy", "patch-drop acc. (mean over ratios)", True)
    protocol = ("random PatchDrop (Naseer et al. 2021): per image, round(r x patches) of the model's patch grid "
                "(timm ViTs; 8 x 8 otherwise) set to black, chosen from (seed, image index); top-1 per drop ratio "
                "r, headline: mean over the ratios")

    def evaluate(self, model, ctx: TaskContext) -> TaskResult:
        grids = set()

        def perturb(ratio):
            def drop(x, y, batch):
                grids.add(grid := patch_grid(model, x.shape[-2], x.shape[-1]))
                return drop_patches(x, batch.index, ratio, grid, ctx.run.seed)
            return drop

        out = run_batches(model, ctx, cells={f"drop {r}": perturb(r) for r in self.ratios})
        correct = np.stack([out[f"drop {r}"]["correct"] for r in self.ratios], axis=1)
        metrics = {f"accuracy/{r}": float(correct[:, i].mean()) for i, r in enumerate(self.ratios)}
        metrics["mean_accuracy"] = float(correct.mean())
        metrics["nonfinite"] = float(sum((~out[f"drop {r}"]["finite"]).sum() for r in self.ratios))
        first = out[f"drop {self.ratios[0]}"]
        return TaskResult(metrics, {"index": first["index"], "label": first["label"], "correct": correct},
                          notes=[f"patch grid {r} x {c}" for r, c in sorted(grids)])

    def details(self, cells, models):
        from cbbench.report.table import Table

        ok = {m: c for (m, _), c in cells.items() if c.status == "ok"}
        if not ok:
            return []
        rows = Table({"model": m, **{f"{100 * r:.0f}% dropped": f"{100 * c.metrics[f'accuracy/{r}']:.1f}"
                                     for r in self.ratios}} for m, c in ok.items())
        return [f"## `{self.name}`: top-1 (%) with patches dropped ↑", "", self.protocol + ".", "", rows, ""]


register_task(PatchDropTask())
