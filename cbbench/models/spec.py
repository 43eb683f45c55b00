"""ModelSpec: a model as plain, frozen data, and the ad-hoc ``timm:ARCH[+cb][@CKPT]`` syntax."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_SOURCES = ("timm", "file", "url", "train", "random", "robustbench")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model; CB models name their baseline explicitly.

    weights: "timm" (timm's pretrained weights, needs the hub or its cache),
    "file" (``checkpoint``), "url" (``checkpoint`` is a URL; downloaded once into the
    checkpoint dir and verified against ``sha256``), "train" (trained by cbbench with
    ``recipe``, cached), "random" (seeded initialisation, for tests), "robustbench" (a
    RobustBench zoo entry ``arch`` for ``checkpoint`` = "<dataset>/<threat model>", from a
    local checkpoint under ``<checkpoint dir>/robustbench/``; such models normalize inside,
    so mean 0 and std 1 here).
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
    sha256: str | None = None
    seed: int = 0
    dataset: str = "imagenet"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    description: str = field(default="", compare=False)

    def __post_init__(self):
        if self.weights not in WEIGHT_SOURCES:
            raise ValueError(f"model {self.name}: weights must be one of {WEIGHT_SOURCES}, not {self.weights!r}")
        if self.weights in ("file", "url") and not self.checkpoint:
            raise ValueError(f"model {self.name}: weights={self.weights!r} needs a checkpoint path or URL")
        if self.weights == "url" and not self.sha256:
            raise ValueError(f"model {self.name}: weights from a URL need their sha256 (append #sha256=HEX)")
        if self.weights == "robustbench" and (not self.checkpoint or self.checkpoint.count("/") != 1):
            raise ValueError(f"model {self.name}: robustbench weights need checkpoint='<dataset>/<threat model>', "
                             f"e.g. 'imagenet/Linf', not {self.checkpoint!r}")
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


_ROBUSTBENCH = re.compile(r"^robustbench:(?P<dataset>[a-z0-9_]+)/(?P<threat>[A-Za-z0-9_]+)/(?P<name>[A-Za-z0-9_.\-]+)$")


def is_adhoc(name: str) -> bool:
    return name.startswith(("timm:", "robustbench:"))


def parse_robustbench(name: str) -> ModelSpec:
    """``robustbench:imagenet/Linf/Mo2022When_ViT-B`` -> a ModelSpec loading that entry's local checkpoint."""
    m = _ROBUSTBENCH.match(name)
    if not m:
        raise ValueError(f"cannot parse {name!r}; expected robustbench:DATASET/THREAT/NAME, "
                         "e.g. robustbench:imagenet/Linf/Mo2022When_ViT-B")
    return ModelSpec(name=name, arch=m["name"], weights="robustbench", checkpoint=f"{m['dataset']}/{m['threat']}",
                     dataset=m["dataset"], mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                     description=f"RobustBench {m['dataset']}/{m['threat']} entry {m['name']} (local checkpoint)")


def parse_adhoc(name: str) -> ModelSpec:
    """``timm:deit_small_patch16_224+cb@/path/ckpt.pth`` -> a ModelSpec.

    Without ``@CKPT`` the weights are timm's pretrained ones; ``@https://...#sha256=HEX``
    downloads once into the checkpoint dir and checks the digest. An ad-hoc CB model
    is paired in reports with an ad-hoc baseline of the same architecture.
    """
    if name.startswith("robustbench:"):
        return parse_robustbench(name)
    m = _ADHOC.match(name)
    if not m:
        raise ValueError(
            f"cannot parse ad-hoc model {name!r}; expected timm:ARCH[+cb][@CHECKPOINT], "
            "e.g. timm:deit_small_patch16_224+cb@/path/ckpt.pth"
        )
    ckpt, sha256, weights = m["ckpt"], None, "file" if m["ckpt"] else "timm"
    if ckpt and ckpt.startswith(("http://", "https://")):
        ckpt, _, fragment = ckpt.partition("#sha256=")
        weights, sha256 = "url", fragment or None
    return ModelSpec(
        name=name,
        arch=m["arch"],
        cb=bool(m["cb"]),
        weights=weights,
        checkpoint=ckpt,
        sha256=sha256,
        description="ad-hoc model from the command line",
    )
