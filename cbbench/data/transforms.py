"""Eval transforms per model, from timm's pretrained config, WITHOUT normalization.

cbbench models take [0,1] RGB and normalize inside (cbbench.models.build.Normalized),
so the transform stops at ToTensor. Input size, crop_pct, crop mode and
interpolation come from ``timm.data.resolve_data_config({}, model=net)``, and
the resize/crop steps are timm's own (``transforms_imagenet_eval``), so a model
sees what timm's validate.py gives it.

Note on DeiT: timm's pretrained config for deit_{tiny,small,base}_patch16_224 has
crop_pct 0.9 (Resize(248, bicubic) + CenterCrop(224)); that is the setting of
timm's published results CSVs. The DeiT paper / official repo use 256/224
(crop_pct 0.875, Resize(256)); pass ``crop_pct=0.875`` for that protocol.
"""
from __future__ import annotations

from typing import Callable

from torch import nn


def data_config(net: nn.Module) -> dict:
    """timm's resolved data config: input_size, interpolation, mean, std, crop_pct, crop_mode.

    timm takes input_size from the pretrained config, which does not follow an
    ``img_size=`` given when the model was built (a ViT built at 32x32 still says
    224): a fixed-size patch embedding's own ``img_size`` wins over it.
    """
    from timm.data import resolve_data_config

    cfg = dict(resolve_data_config({}, model=net))
    embed = getattr(net, "patch_embed", None)
    size = getattr(embed, "img_size", None)
    if size is not None and not getattr(embed, "dynamic_img_size", False):
        cfg["input_size"] = (cfg["input_size"][0], *tuple(size))
    return cfg


def normalization_for(net: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the network was trained with, from its timm config."""
    cfg = data_config(net)
    return tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])


def eval_transform_for(net: nn.Module, crop_pct: float | None = None) -> Callable:
    """PIL image -> [0,1] float tensor (3, H, W): timm's eval resize/crop for ``net``, then ToTensor.

    ``net`` is the bare timm network (``Normalized.net``). ``crop_pct`` overrides the
    config's (e.g. 0.875 for the DeiT paper's Resize(256) + CenterCrop(224)).
    """
    from timm.data.transforms_factory import transforms_imagenet_eval
    from torchvision import transforms

    cfg = data_config(net)
    timm_tf = transforms_imagenet_eval(
        img_size=tuple(cfg["input_size"][-2:]),
        crop_pct=crop_pct if crop_pct is not None else cfg.get("crop_pct"),
        crop_mode=cfg.get("crop_mode"),
        interpolation=cfg.get("interpolation", "bilinear"),
        normalize=False,
    )
    steps = list(timm_tf.transforms)
    # With normalize=False timm ends with a uint8 PIL->tensor step (for its GPU prefetcher): replace it.
    while steps and "ToTensor" in type(steps[-1]).__name__:
        steps.pop()
    if any("Normalize" in type(s).__name__ for s in steps):
        raise RuntimeError("timm's eval transform normalizes; cbbench models normalize inside")
    return transforms.Compose([*steps, transforms.ToTensor()])
