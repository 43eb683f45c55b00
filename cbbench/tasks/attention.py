"""Attention density (the paper's analysis): entropy of the post-softmax attention rows.

timm's fused attention never materializes the attention matrix, so while
measuring, every attention module runs its unfused path (same maths, outputs
equal up to float rounding; tested) and a hook on ``attn_drop`` (the identity
in eval mode) sees the softmax output. Per image, layer and head we keep the
mean over query rows of H(a_i) / log N, the cosine similarity of the rows to
uniform attention, and the attention paid to the class token.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from cbbench.errors import CellNotApplicable
from cbbench.tasks.base import Metric, Task, TaskContext, TaskResult, register_task, run_batches


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    mods = [m for m in model.modules() if hasattr(m, "fused_attn") and hasattr(m, "attn_drop")]
    if not mods:
        raise CellNotApplicable(f"{type(model).__name__} has no timm attention modules to measure (attention "
                                "entropy applies to timm ViTs)")
    return mods


@contextmanager
def record_attention(model: torch.nn.Module):
    """Yield a list that receives, per forward pass, one (B, L, H, 3) tensor of row statistics.

    The unfused path and the hooks are active only inside the ``with`` block.
    """
    records: list[torch.Tensor] = []
    current: list[torch.Tensor] = []
    modules = attention_modules(model)

    def hook(module, inputs, output):
        attn = inputs[0].float()  # (B, H, N, N), rows sum to 1
        n = attn.shape[-1]
        entropy = -(attn * torch.log(attn.clamp_min(1e-30))).sum(-1) / math.log(n)
        cosine = attn.sum(-1) / (attn.norm(dim=-1) * math.sqrt(n))
        cls_share = attn[..., 0]
        current.append(torch.stack([entropy.mean(-1), cosine.mean(-1), cls_share.mean(-1)], -1).cpu())
        if len(current) == len(modules):
            records.append(torch.stack(current, 1))
            current.clear()

    saved = [m.fused_attn for m in modules]
    handles = [m.attn_drop.register_forward_hook(hook) for m in modules]
    try:
        for m in modules:
            m.fused_attn = False
        yield records
    finally:
        for m, fused in zip(modules, saved):
            m.fused_attn = fused
        for h in handles:
            h.remove()


@dataclass(frozen=True)
class AttentionEntropyTask(Task):
    name = "attention_entropy"
    version = 1
    kind = "analysis"
    figure = "attention_layers"
    headline = Metric("mean_entropy", "attn. entropy (H/log N)", None, percent=False, samples="entropy")
    protocol = ("mean over images, layers, heads and query rows of the post-softmax attention entropy "
                "H/log N (1 = uniform); the paper claims CB lowers it")

    def evaluate(self, model, ctx: TaskContext) -> TaskResult:
        with record_attention(model) as records:
            out = run_batches(model, ctx, desc="attention", extras=lambda: {"attention": records.pop()})
        stats = out["attention"]  # (N_images, L, H, 3)
        entropy, cosine, cls_share = stats[..., 0], stats[..., 1], stats[..., 2]
        metrics = {"mean_entropy": float(entropy.mean()), "mean_cosine_to_uniform": float(cosine.mean()),
                   "mean_cls_attention": float(cls_share.mean())}
        for layer, value in enumerate(entropy.mean(axis=(0, 2))):
            metrics[f"entropy/layer{layer}"] = float(value)
        samples = {"entropy": entropy.astype(np.float32), "cosine_to_uniform": cosine.astype(np.float32),
                   "cls_attention": cls_share.astype(np.float32), "correct": out["correct"]}
        return TaskResult(metrics, samples)

    def details(self, cells, models) -> list:
        """Mean normalized entropy per layer, cosine to uniform attention and attention on the class token."""
        from cbbench.report.table import Table

        ok = [(m, c) for (m, _), c in cells.items() if c.status == "ok"]
        if not ok:
            return []
        layers = sorted(int(k.split("layer")[1]) for k in ok[0][1].metrics if k.startswith("entropy/layer"))
        rows = [{"layer": i, **{m: f"{c.metrics[f'entropy/layer{i}']:.3f}" for m, c in ok}} for i in layers]
        rows.append({"layer": "cos. to uniform", **{m: f"{c.metrics['mean_cosine_to_uniform']:.3f}" for m, c in ok}})
        rows.append({"layer": "attn. on class token", **{m: f"{c.metrics['mean_cls_attention']:.3f}" for m, c in ok}})
        return ["## Attention density: mean normalized entropy H/log N per layer", "",
                "1 = uniform attention, 0 = one-hot. The paper claims CB lowers it.", "",
                Table(rows), ""]


register_task(AttentionEntropyTask())
