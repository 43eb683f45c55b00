"""The model zoo: registered ModelSpecs. Each CB model names its baseline."""
from __future__ import annotations

import dataclasses

from cbbench.models.spec import ModelSpec, is_adhoc, parse_adhoc
from cbbench.registry import Registry

MODELS: Registry[ModelSpec] = Registry("model")

# The embedded default's tiny ViT: 32x32 digits, patch 8 (16 patches + class token).
DEMO_ARCH_KWARGS = (
    ("depth", 4),
    ("embed_dim", 64),
    ("img_size", 32),
    ("mlp_ratio", 2.0),
    ("num_classes", 10),
    ("num_heads", 4),
    ("patch_size", 8),
)


def register(spec: ModelSpec) -> ModelSpec:
    return MODELS.register(spec.name, spec)


def cb_twin(base: ModelSpec, name: str, **changes) -> ModelSpec:
    """The CB twin of ``base``: same architecture, seed and recipe, CB on, paired with it."""
    return dataclasses.replace(base, name=name, cb=True, baseline=base.name, **changes)


_demo = register(ModelSpec(
    name="demo_vit",
    arch="vit_tiny_patch16_224",
    arch_kwargs=DEMO_ARCH_KWARGS,
    weights="train",
    recipe="digits_tiny",
    dataset="digits",
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    description="tiny ViT (4 blocks, dim 64, 0.15M params) trained by cbbench on digits",
))
register(cb_twin(_demo, "demo_vit_cb",
                 description="CB twin of demo_vit: same architecture, seed and recipe"))
# A larger size, for the claim that CB helps small models most.
_small = register(dataclasses.replace(
    _demo, name="demo_vit_small",
    arch_kwargs=tuple(sorted({**dict(DEMO_ARCH_KWARGS), "depth": 6, "embed_dim": 96}.items())),
    description="small ViT (6 blocks, dim 96, 0.47M params) trained by cbbench on digits"))
register(cb_twin(_small, "demo_vit_small_cb", description="CB twin of demo_vit_small"))

# More training seeds of every arm, for claims that need seed-to-seed spread.
for _base_spec in (_demo, _small):
    for _seed in (1, 2):
        _base = register(dataclasses.replace(_base_spec, name=f"{_base_spec.name}_s{_seed}", seed=_seed,
                                             description=f"{_base_spec.name} trained with seed {_seed}"))
        register(cb_twin(_base, f"{_base_spec.name}_cb_s{_seed}", description=f"CB twin of {_base.name}"))

# ImageNet-1k baselines with timm's weights (from the Hugging Face hub or its local cache), and
# their CB twins, whose checkpoints (trained with CB; none is published) go in the checkpoint dir.
for _name, _arch, _desc in [
    ("deit_tiny", "deit_tiny_patch16_224", "DeiT-Ti, ImageNet-1k (timm weights)"),
    ("deit_small", "deit_small_patch16_224", "DeiT-S, ImageNet-1k (timm weights)"),
    ("deit_base", "deit_base_patch16_224", "DeiT-B, ImageNet-1k (timm weights)"),
    ("vit_small", "vit_small_patch16_224", "ViT-S/16, ImageNet-1k fine-tuned (timm weights)"),
    ("vit_base", "vit_base_patch16_224", "ViT-B/16, ImageNet-1k fine-tuned (timm weights)"),
]:
    _base = register(ModelSpec(name=_name, arch=_arch, description=_desc))
    register(cb_twin(_base, f"{_name}_cb", weights="file", checkpoint=f"cache:{_name}_cb.pth",
                     description=f"CB twin of {_name}: a state_dict trained with CB, at "
                                 f"<checkpoint dir>/{_name}_cb.pth"))


def resolve(name_or_spec: str | ModelSpec) -> ModelSpec:
    """A registered name, an ad-hoc ``timm:...`` string, or a ModelSpec."""
    if isinstance(name_or_spec, ModelSpec):
        return name_or_spec
    if is_adhoc(name_or_spec):
        return parse_adhoc(name_or_spec)
    return MODELS.get(name_or_spec)
