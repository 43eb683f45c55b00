"""Training recipes for ImageNet pairs: YAML files in ``recipes/``, every value explicit in the card.

A recipe file may name a ``base`` recipe and override some of its keys (``smoke``
is ``deit`` made tiny); after resolution every field below has a value, and
unknown keys are errors, so a typo cannot silently fall back to a default.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from cbbench.registry import Registry

SIZES = ("tiny", "small", "base", "large", "huge")


@dataclass(frozen=True)
class TrainRecipe:
    """One recipe; the names follow timm's train.py arguments where one exists."""

    name: str
    description: str
    source: str  # whose recipe it is: the paper it transcribes, or cbbench's own
    init: str  # "scratch" or "pretrained" (then --pretrained or --init is required)
    epochs: int
    batch_size: int  # global batch of one optimizer step
    micro_batch: int  # images per forward on one device; batch_size / micro_batch micro-batches per step
    lr_base: float  # lr = lr_base * batch_size / lr_base_size (linear scaling, as DeiT)
    lr_base_size: int
    opt: str
    opt_eps: float
    momentum: float
    weight_decay: float
    clip_grad: float | None
    sched: str
    sched_on_updates: bool  # lr set every optimizer step (else once per epoch, as DeiT)
    warmup_epochs: int
    warmup_lr: float
    min_lr: float
    cooldown_epochs: int
    smoothing: float
    mixup: float
    cutmix: float
    mixup_prob: float
    mixup_switch_prob: float
    mixup_mode: str
    aa: str | None
    color_jitter: float
    train_interpolation: str
    hflip: float
    scale: tuple[float, float]
    ratio: tuple[float, float]
    reprob: float
    remode: str
    recount: int
    aug_repeats: int  # repeated augmentation: copies of each image per epoch (1: off)
    drop_path: float | dict  # a rate, or {tiny: .., small: .., base: .., default: ..} by model size
    model_ema: bool
    model_ema_decay: float
    model_kwargs: dict  # extra timm.create_model arguments (tests: a tiny ViT)
    steps_per_epoch: int | None  # cap on optimizer steps per epoch (smoke); None: one pass over the data
    eval_images: int | None  # held-out images per evaluation, evenly spaced; None: all

    def __post_init__(self):
        problems = []
        if self.init not in ("scratch", "pretrained"):
            problems.append(f"init must be 'scratch' or 'pretrained', not {self.init!r}")
        if min(self.epochs, self.batch_size, self.micro_batch) < 1:
            problems.append("epochs, batch_size and micro_batch must be >= 1")
        elif self.batch_size % self.micro_batch:
            problems.append(f"batch_size {self.batch_size} is not a multiple of micro_batch {self.micro_batch}")
        if self.mixing and self.micro_batch % 2:
            problems.append(f"mixup/cutmix pair each micro-batch with its mirror: micro_batch {self.micro_batch} "
                            "must be even")
        if self.aug_repeats < 1:
            problems.append("aug_repeats must be >= 1 (1 means no repeated augmentation)")
        if isinstance(self.drop_path, dict) and "default" not in self.drop_path and not set(self.drop_path) <= set(SIZES):
            problems.append(f"drop_path keys must be model sizes {SIZES} or 'default', got {sorted(self.drop_path)}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            problems.append("steps_per_epoch must be >= 1 or null")
        if problems:
            raise ValueError(f"recipe {self.name}: " + "; ".join(problems))

    @property
    def mixing(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    @property
    def lr(self) -> float:
        return self.lr_base * self.batch_size / self.lr_base_size

    @property
    def micro_batches(self) -> int:
        """Micro-batches per optimizer step: split over processes, the rest accumulated."""
        return self.batch_size // self.micro_batch

    def drop_path_for(self, arch: str) -> float:
        """The drop-path rate for ``arch``, by the size word in its name (deit_tiny_... -> tiny)."""
        if not isinstance(self.drop_path, dict):
            return float(self.drop_path)
        size = next((w for w in arch.lower().replace(".", "_").split("_") if w in SIZES), None)
        if size in self.drop_path:
            return float(self.drop_path[size])
        if "default" in self.drop_path:
            return float(self.drop_path["default"])
        raise ValueError(f"recipe {self.name} sets drop_path by model size ({', '.join(self.drop_path)}) and "
                         f"{arch} is none of them; pass --set drop_path=RATE")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["scale"], d["ratio"] = list(self.scale), list(self.ratio)
        return d


FIELDS = {f.name for f in dataclasses.fields(TrainRecipe)}


def _make(name: str, values: dict) -> TrainRecipe:
    unknown = sorted(set(values) - FIELDS)
    missing = sorted(FIELDS - set(values) - {"name"})
    if unknown or missing:
        raise ValueError(f"recipe {name}: " + "; ".join(
            ([f"unknown keys {unknown} (known: {', '.join(sorted(FIELDS))})"] if unknown else [])
            + ([f"missing keys {missing}"] if missing else [])))
    values = {**values, "name": name, "scale": tuple(values["scale"]), "ratio": tuple(values["ratio"])}
    return TrainRecipe(**values)


def _load_all() -> Registry[TrainRecipe]:
    raw = {}
    for entry in resources.files(__package__).joinpath("recipes").iterdir():
        if entry.name.endswith(".yaml"):
            raw[entry.name.removesuffix(".yaml")] = yaml.safe_load(entry.read_text())

    def resolved(name: str, seen: tuple[str, ...] = ()) -> dict:
        if name in seen:
            raise ValueError(f"recipe files: base cycle {' -> '.join(seen + (name,))}")
        values = dict(raw[name])
        base = values.pop("base", None)
        return {**resolved(base, seen + (name,)), **values} if base else values

    registry: Registry[TrainRecipe] = Registry("recipe")
    for name in sorted(raw):
        registry.register(name, _make(name, resolved(name)))
    return registry


RECIPES = _load_all()


def parse_sets(pairs: list[str] | None) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs, values read as YAML (``epochs=2``, ``aa=null``, ``model_kwargs={depth: 2}``)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE, got {pair!r}")
        if key not in FIELDS - {"name"}:
            import difflib

            close = difflib.get_close_matches(key, FIELDS, n=1)
            raise ValueError(f"--set {key}: not a recipe key{f' (did you mean {close[0]!r}?)' if close else ''}; "
                             f"keys: {', '.join(sorted(FIELDS - {'name'}))}")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ValueError(f"--set {key}: cannot read {value!r} as a YAML value ({exc.__class__.__name__})") from None
    return out


def get_recipe(name: str, sets: dict[str, Any] | None = None) -> TrainRecipe:
    """The named recipe with ``sets`` applied (validated again, so an override cannot break it)."""
    recipe = RECIPES.get(name)
    if not sets:
        return recipe
    return _make(name, {**recipe.to_dict(), **sets})
