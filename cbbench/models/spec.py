"""ModelSpec: a model as plain, frozen data, and the ad-hoc ``timm:ARCH[+cb][@CKPT]`` syntax."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_SOURCES = ("timm", "file", "train", "random")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model; CB models name their baseline explicitly.

    weights: "timm" (timm's pretrained weights, needs the hub or its cache),
    "file" (``checkpoint``), "train" (trained by cbbench with ``recipe``, cached),
    "random" (seeded initialisation, for tests).
    """

    name: str
    arch: str
    arch_kwargs: tuple[tuple[str, Any], ...] = ()
    cb: bool = False
    cb_layers: tuple[int, ...] | None = None
    baseline: str | None = None
    weights: str = "timm"
    checkpoint: str | None = None
    recipe: str | None = None
    seed: int = 0
    dataset: str = "imagenet"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    description: str = field(default="", compare=False)

    def __post_init__(self):
        if self.weights not in WEIGHT_SOURCES:
            raise ValueError(f"model {self.name}: weights must be one of {WEIGHT_SOURCES}, not {self.weights!r}")
        if self.weights == "file" and not self.checkpoint:
            raise ValueError(f"model {self.name}: weights='file' needs a checkpoint path")
        if self.weights == "train" and not self.recipe:
            raise ValueError(f"model {self.name}: weights='train' needs a training recipe")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["arch_kwargs"] = dict(self.arch_kwargs)
        return d

    def identity(self) -> str:
        """Digest of what determines the network (not its display name or pairing)."""
        d = self.to_dict()
        for k in ("name", "baseline", "description"):
            d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:16]


_ADHOC = re.compile(r"^timm:(?P<arch>[A-Za-z0-9_.\-]+)(?P<cb>\+cb)?(?:@(?P<ckpt>.+))?$")


def is_adhoc(name: str) -> bool:
    return name.startswith("timm:")


def parse_adhoc(name: str) -> ModelSpec:
    """``timm:deit_small_patch16_224+cb@/path/ckpt.pth`` -> a ModelSpec.

    Without ``@CKPT`` the weights are timm's pretrained ones. An ad-hoc CB model
    is paired in reports with an ad-hoc baseline of the same architecture.
    """
    m = _ADHOC.match(name)
    if not m:
        raise ValueError(
            f"cannot parse ad-hoc model {name!r}; expected timm:ARCH[+cb][@CHECKPOINT], "
            "e.g. timm:deit_small_patch16_224+cb@/path/ckpt.pth"
        )
    ckpt = m["ckpt"]
    return ModelSpec(
        name=name,
        arch=m["arch"],
        cb=bool(m["cb"]),
        weights="file" if ckpt else "timm",
        checkpoint=ckpt,
        description="ad-hoc model from the command line",
    )
