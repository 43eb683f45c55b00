"""The model zoo: registered ModelSpecs. Each CB model names its baseline."""
from __future__ import annotations

import dataclasses

from cbbench.models.spec import ModelSpec, is_adhoc, parse_adhoc, parse_robustbench
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


def register_seeds(base_spec: ModelSpec, seeds=(1, 2)) -> None:
    """More training seeds of an arm and of its CB twin, for claims that need seed-to-seed spread."""
    for seed in seeds:
        base = register(dataclasses.replace(base_spec, name=f"{base_spec.name}_s{seed}", seed=seed,
                                            description=f"{base_spec.name} trained with seed {seed}"))
        register(cb_twin(base, f"{base_spec.name}_cb_s{seed}", description=f"CB twin of {base.name}"))


# The embedded default and the paper suites (digits, CIFAR) compare five training seeds per arm (seed 0 is the
# base model itself): with three, Holm's correction over a run's claims leaves almost no verdict reachable.
register_seeds(_demo, seeds=(1, 2, 3, 4))
register_seeds(_small, seeds=(1, 2, 3, 4))

# The same two sizes trained by cbbench on CIFAR-10 / CIFAR-100 from a data root (recipes cifar10_tiny,
# cifar100_tiny), CIFAR's mean/std inside the model. Patch 4 at 32x32 (64 patches + class token) is the
# usual choice for ViTs trained on CIFAR from scratch; patch 8, as for the digits, would leave 16 tokens.
CIFAR_STATS = {
    "cifar10": (10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": (100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
for _dataset, (_classes, _mean, _std) in CIFAR_STATS.items():
    _kwargs = {**dict(DEMO_ARCH_KWARGS), "num_classes": _classes, "patch_size": 4}
    _tiny = register(dataclasses.replace(
        _demo, name=f"{_dataset}_vit", arch_kwargs=tuple(sorted(_kwargs.items())), recipe=f"{_dataset}_tiny",
        dataset=_dataset, mean=_mean, std=_std,
        description=f"tiny ViT (4 blocks, dim 64, patch 4) trained by cbbench on {_dataset} (needs --data-root)"))
    register(cb_twin(_tiny, f"{_dataset}_vit_cb", description=f"CB twin of {_dataset}_vit"))
    _small_kwargs = tuple(sorted({**_kwargs, "depth": 6, "embed_dim": 96}.items()))
    _small_c = register(dataclasses.replace(
        _tiny, name=f"{_dataset}_vit_small", arch_kwargs=_small_kwargs,
        description=f"small ViT (6 blocks, dim 96, patch 4) trained by cbbench on {_dataset} (needs --data-root)"))
    register(cb_twin(_small_c, f"{_dataset}_vit_small_cb", description=f"CB twin of {_dataset}_vit_small"))
    for _base_spec in (_tiny, _small_c):
        register_seeds(_base_spec, seeds=(1, 2, 3, 4))

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


# RobustBench ImageNet entries as extra, unpaired rows: loaded from <checkpoint dir>/robustbench/
# <dataset>/<threat>/<entry>.pt (robustbench's own layout) when that file is there, skipped otherwise.
for _name, _entry, _desc in [
    ("rb_mo2022_vit_b", "imagenet/Linf/Mo2022When_ViT-B", "RobustBench: adversarially trained ViT-B (Mo et al. 2022)"),
    ("rb_mo2022_swin_b", "imagenet/Linf/Mo2022When_Swin-B", "RobustBench: adversarially trained Swin-B (Mo et al. 2022)"),
    ("rb_meansparse_convnext_l", "imagenet/Linf/Amini2024MeanSparse_ConvNeXt-L",
     "RobustBench: adversarially trained ConvNeXt-L + MeanSparse (Amini et al. 2024)"),
    ("rb_augmix_r50", "imagenet/corruptions/Hendrycks2020AugMix", "RobustBench: ResNet-50 trained with AugMix"),
]:
    register(dataclasses.replace(parse_robustbench(f"robustbench:{_entry}"), name=_name, description=_desc))


def resolve(name_or_spec: str | ModelSpec) -> ModelSpec:
    """A registered name, an ad-hoc ``timm:...`` string, or a ModelSpec."""
    if isinstance(name_or_spec, ModelSpec):
        return name_or_spec
    if is_adhoc(name_or_spec):
        return parse_adhoc(name_or_spec)
    return MODELS.get(name_or_spec)


# CB variant ablation on the embedded digits demo (issue #17): twins of demo_vit that differ from its CB twin
# (demo_vit_cb: CB after the MLP branch of all 4 blocks, alpha 0.5) in one setting each, for training seeds
# 0-4, each paired with the same-seed baseline (demo_vit, demo_vit_s1, ...). The placement arm "mlp" is
# demo_vit_cb / demo_vit_cb_s1 / ... itself.
DEMO_CB_VARIANTS = (
    ("attn", {"cb_position": "attn"}, "CB at the end of the attention branch instead of the MLP branch"),
    ("both", {"cb_position": "both"}, "CB at the end of both the attention and the MLP branch"),
    ("first2", {"cb_layers": "first-2"}, "CB in the first half of the blocks only (blocks 0-1 of 4)"),
    ("last2", {"cb_layers": "last-2"}, "CB in the last half of the blocks only (blocks 2-3 of 4)"),
    ("alpha025", {"cb_alpha": 0.25}, "CB with a quarter of the mean: 0.75*x + 0.25*mean"),
    ("alpha075", {"cb_alpha": 0.75}, "CB with three quarters of the mean: 0.25*x + 0.75*mean"),
    ("scaled", {"cb_scaled": True}, "CB with a learned per-dimension scale of the mean per block, initialised to "
                                    "ones (cbbench's reading of CB_S; the paper text is not available)"),
)
DEMO_CB_ABLATION_SEEDS = (0, 1, 2, 3, 4)
# variant -> its model names, seed 0 first; "mlp" (the paper's placement) is the existing CB twins.
DEMO_CB_ABLATION: dict[str, tuple[str, ...]] = {
    "mlp": tuple("demo_vit_cb" + (f"_s{s}" if s else "") for s in DEMO_CB_ABLATION_SEEDS)}
for _variant, _settings, _what in DEMO_CB_VARIANTS:
    _names = []
    for _seed in DEMO_CB_ABLATION_SEEDS:
        _suffix = f"_s{_seed}" if _seed else ""
        _base = MODELS.get(f"demo_vit{_suffix}")
        _twin = register(cb_twin(_base, f"demo_vit_cb_{_variant}{_suffix}", **_settings,
                                 description=f"CB variant of {_base.name} (ablation): {_what}"))
        _names.append(_twin.name)
    DEMO_CB_ABLATION[_variant] = tuple(_names)
