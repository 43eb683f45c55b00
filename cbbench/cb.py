"""Context Broadcasting (Hyeon-Woo et al., ICCV 2023), the method under test.

CB mixes every token with the mean of all tokens (class token included):
``0.5 * x + 0.5 * x.mean(dim=1, keepdim=True)``. It is placed at the end of the
MLP branch of a transformer block (after fc2 and its dropout), before
layer-scale, drop-path and the residual add. It has no parameters, so a
baseline state_dict loads into the CB twin unchanged.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


class ContextBroadcast(nn.Module):
    """Uniform attention without parameters: average each token with the token mean."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half_mean = 0.5 * x.mean(dim=1, keepdim=True)
        if x.dtype in (torch.float32, torch.float64, torch.bfloat16):
            # One pass over x instead of three (bench/bench_pipeline.py: ~35% less time in CB on a CPU).
            # Halving is exact in these dtypes (above 1e-38), so the single rounding of
            # half_mean + 0.5 * x gives bit for bit the value of 0.5 * x + 0.5 * mean.
            return torch.add(half_mean, x, alpha=0.5)
        return 0.5 * x + half_mean  # float16: halving small values is inexact; keep the two roundings


def has_context_broadcasting(model: nn.Module) -> bool:
    return any(isinstance(m, ContextBroadcast) for m in model.modules())


def add_context_broadcasting(model: nn.Module, layers: Iterable[int] | None = None) -> nn.Module:
    """Turn a timm VisionTransformer into its CB twin, in place, and return it.

    ``layers`` selects block indices (negative indices count from the end);
    ``None`` means every block. The MLP's last module (``drop2``) becomes
    ``Sequential(drop2, ContextBroadcast())``: the forward pass gains CB at the
    end of the MLP branch and the state_dict keys stay exactly the same.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None or not len(blocks):
        raise TypeError(
            f"{type(model).__name__} has no 'blocks'; add_context_broadcasting expects a timm "
            "VisionTransformer (ViT/DeiT family)."
        )
    if has_context_broadcasting(model):
        raise ValueError("model already has Context Broadcasting; applying it twice would change the method")
    depth = len(blocks)
    indices = range(depth) if layers is None else [int(i) for i in layers]
    chosen = set()
    for i in indices:
        if not -depth <= i < depth:
            raise IndexError(f"block index {i} out of range for a model with {depth} blocks")
        chosen.add(i % depth)
    for i in sorted(chosen):
        mlp = getattr(blocks[i], "mlp", None)
        if mlp is None or not hasattr(mlp, "drop2"):
            raise TypeError(
                f"block {i} ({type(blocks[i]).__name__}) has no mlp.drop2 to attach CB after; "
                "only timm ViT/DeiT blocks with a timm Mlp are supported"
            )
        mlp.drop2 = nn.Sequential(mlp.drop2, ContextBroadcast())
    return model
