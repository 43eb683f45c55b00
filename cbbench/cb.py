"""Context Broadcasting (Hyeon-Woo et al., ICCV 2023), the method under test, and its variants.

CB mixes every token with the mean of all tokens (class token included):
``0.5 * x + 0.5 * x.mean(dim=1, keepdim=True)``. It is placed at the end of the
MLP branch of a transformer block (after fc2 and its dropout), before
layer-scale, drop-path and the residual add. It has no parameters, so a
baseline state_dict loads into the CB twin unchanged.

Variants (issue #17), for ablations; the defaults are the paper's CB:

- ``position``: "mlp" (end of the MLP branch), "attn" (end of the attention branch:
  after the output projection and its dropout ``attn.proj_drop``, before layer-scale,
  drop-path and the residual add), or "both";
- ``layers``: every block, "first-K" / "last-K" / "first-half" / "last-half", or indices;
- ``alpha``: the weight of the mean, ``(1 - alpha) * x + alpha * mean``;
- ``scaled``: a learned per-dimension vector ``s`` (D parameters per CB site) scaling
  the broadcast mean, ``(1 - alpha) * x + alpha * (s * mean)``, initialised to ones so
  the model equals the unscaled variant at init. This is cbbench's reading of the
  variant secondary sources call CB_S (the paper text is not available to check it).

Every CB site replaces a dropout module ``d`` by ``Sequential(d, ContextBroadcast(...))``,
so the state_dict keys of the network are unchanged; a scaled site adds one key,
``<...>.drop2.1.scale`` (MLP) or ``<...>.attn.proj_drop.1.scale`` (attention).
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from cbbench.models.spec import check_cb_alpha, check_cb_position, cb_layer_indices


class ContextBroadcast(nn.Module):
    """Uniform attention: ``(1 - alpha) * x + alpha * mean`` over tokens (dim 1); no parameters by default.

    ``dim`` (the token width) turns on the scaled variant: a learned vector ``scale`` of
    ``dim`` values, initialised to ones, multiplies the mean (cbbench's reading of CB_S).
    """

    def __init__(self, alpha: float = 0.5, dim: int | None = None, device=None, dtype=None):
        super().__init__()
        self.alpha = check_cb_alpha(alpha)
        self.scale = nn.Parameter(torch.ones(dim, device=device, dtype=dtype)) if dim is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        if self.scale is not None:
            mean = mean * self.scale  # exact at init (ones): the scaled variant starts as the unscaled one
        if self.alpha == 0.5:  # the paper's CB: these exact operations (stored results depend on the bits)
            half_mean = 0.5 * mean
            if x.dtype in (torch.float32, torch.float64, torch.bfloat16):
                # One pass over x instead of three (bench/bench_pipeline.py: ~35% less time in CB on a CPU).
                # Halving is exact in these dtypes (above 1e-38), so the single rounding of
                # half_mean + 0.5 * x gives bit for bit the value of 0.5 * x + 0.5 * mean.
                return torch.add(half_mean, x, alpha=0.5)
            return 0.5 * x + half_mean  # float16: halving small values is inexact; keep the two roundings
        return torch.add(self.alpha * mean, x, alpha=1.0 - self.alpha)  # one pass over x

    def extra_repr(self) -> str:
        scaled = f", scaled (dim={self.scale.numel()})" if self.scale is not None else ""
        return f"alpha={self.alpha}{scaled}"


def has_context_broadcasting(model: nn.Module) -> bool:
    return any(isinstance(m, ContextBroadcast) for m in model.modules())


def _site(block: nn.Module, index: int, where: str) -> tuple[nn.Module, str, int | None]:
    """(parent module, attribute to wrap, width) of a CB site in a timm ViT block."""
    if where == "mlp":
        parent, attr, proj = getattr(block, "mlp", None), "drop2", "fc2"
        what = "mlp.drop2 (the end of the MLP branch)"
    else:
        parent, attr, proj = getattr(block, "attn", None), "proj_drop", "proj"
        what = "attn.proj_drop (the end of the attention branch)"
    if parent is None or not hasattr(parent, attr):
        raise TypeError(
            f"block {index} ({type(block).__name__}) has no {what} to attach CB after; "
            "only timm ViT/DeiT blocks with a timm Mlp and Attention are supported"
        )
    return parent, attr, getattr(getattr(parent, proj, None), "out_features", None)


def add_context_broadcasting(model: nn.Module, layers: Iterable[int] | str | int | None = None,
                             position: str = "mlp", alpha: float = 0.5, scaled: bool = False) -> nn.Module:
    """Turn a timm VisionTransformer into its CB twin, in place, and return it.

    ``layers`` selects blocks: ``None`` (every block), block indices (negative ones count
    from the end), or "first-K", "last-K", "first-half", "last-half" (depth // 2 blocks).
    ``position``: "mlp" (the paper's: the end of the MLP branch), "attn" (the end of the
    attention branch) or "both". ``alpha``: the weight of the mean,
    ``(1 - alpha) * x + alpha * mean`` (0.5 is the paper's). ``scaled``: a learned
    per-dimension scale of the mean per CB site, initialised to ones (cbbench's reading of
    CB_S); it adds D parameters per site and is the only kind of new state_dict key.

    Each chosen site's dropout ``d`` (``mlp.drop2`` / ``attn.proj_drop``) becomes
    ``Sequential(d, ContextBroadcast(...))``: the forward pass gains CB at the end of the
    branch, before layer-scale, drop-path and the residual add, and the existing
    state_dict keys stay exactly the same. With the defaults the network is bit for bit
    the paper's CB as cbbench has always computed it.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None or not len(blocks):
        raise TypeError(
            f"{type(model).__name__} has no 'blocks'; add_context_broadcasting expects a timm "
            "VisionTransformer (ViT/DeiT family)."
        )
    if has_context_broadcasting(model):
        raise ValueError("model already has Context Broadcasting; applying it twice would change the method")
    check_cb_position(position)
    alpha = check_cb_alpha(alpha)
    if not isinstance(scaled, bool):
        raise ValueError(f"CB scaled must be True or False, not {scaled!r}")
    if layers is not None and not isinstance(layers, (str, int)):
        layers = list(layers)  # a generator is read once
    chosen = cb_layer_indices(layers, len(blocks))
    wheres = ("attn", "mlp") if position == "both" else (position,)
    sites = [_site(blocks[i], i, where) for i in chosen for where in wheres]
    if scaled and any(not (width or getattr(model, "embed_dim", None)) for _, _, width in sites):
        raise TypeError(f"cannot tell the token width of every CB site of {type(model).__name__} for a scaled CB")
    for parent, attr, width in sites:  # every site checked above: no half-converted model on error
        kwargs = {}
        if scaled:
            ref = next(parent.parameters(), None)  # the scale lives where the branch's weights live
            kwargs = dict(dim=width or model.embed_dim, device=getattr(ref, "device", None),
                          dtype=getattr(ref, "dtype", None))
        setattr(parent, attr, nn.Sequential(getattr(parent, attr), ContextBroadcast(alpha, **kwargs)))
    return model


def cb_scale_keys(model: nn.Module) -> list[str]:
    """The state_dict keys of the learned CB scales (empty for parameter-free CB variants)."""
    return sorted(f"{name}.scale" for name, m in model.named_modules()
                  if isinstance(m, ContextBroadcast) and m.scale is not None)
