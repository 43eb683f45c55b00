"""ModelSpec: a model as plain, frozen data, and the ad-hoc ``timm:ARCH[+cb[(SETTINGS)]][@CKPT]`` syntax.

The CB settings (where CB sits, in which blocks, how much of the mean, with or without
learned scales) are plain data here, validated without importing torch; cbbench/cb.py
applies them.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_SOURCES = ("timm", "file", "url", "train", "random", "robustbench", "memory")

# Context Broadcasting variants (cbbench/cb.py applies them). Defaults are the paper's CB.
CB_POSITIONS = ("mlp", "attn", "both")
CB_DEFAULTS = {"position": "mlp", "layers": None, "alpha": 0.5, "scaled": False}
CB_LAYER_FORMS = "all, first-K, last-K, first-half, last-half, one block index, or a list [i,j,...]"
_LAYER_SELECTOR = re.compile(r"^(?P<end>first|last)-(?P<k>[1-9][0-9]*|half)$")


def check_cb_position(position: Any, what: str = "position") -> str:
    if position not in CB_POSITIONS:
        raise ValueError(f"CB {what} must be one of {', '.join(CB_POSITIONS)}, not {position!r}")
    return position


def check_cb_alpha(alpha: Any, what: str = "alpha") -> float:
    """The weight of the mean, a number in (0, 1]; returned as a float (so 1 and 1.0 are one identity)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
        raise ValueError(f"CB {what} (the weight of the mean: (1-alpha)*x + alpha*mean) must be a number "
                         f"in (0, 1], not {alpha!r}")
    return float(alpha)


def check_cb_layers(layers: Any, what: str = "layers") -> tuple[int, ...] | str | None:
    """None (every block), a selector string ("first-2", "last-half", ...) or a non-empty tuple of indices."""
    if layers is None or layers == "all":
        return None
    if isinstance(layers, str):
        if _LAYER_SELECTOR.match(layers):
            return layers
    elif isinstance(layers, int) and not isinstance(layers, bool):
        return (layers,)
    else:
        try:
            indices = tuple(layers)
        except TypeError:
            indices = ()
        if indices and all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
            return indices
    raise ValueError(f"CB {what} must be {CB_LAYER_FORMS} (negative indices count from the end), not {layers!r}")


def cb_layer_indices(layers: Any, depth: int) -> list[int]:
    """The sorted block indices (0..depth-1) that ``layers`` selects in a model with ``depth`` blocks.

    "first-half" / "last-half" take depth // 2 blocks. Raises IndexError for indices or
    counts the model does not have.
    """
    layers = check_cb_layers(layers)
    if layers is None:
        return list(range(depth))
    if isinstance(layers, str):
        m = _LAYER_SELECTOR.match(layers)
        k = depth // 2 if m["k"] == "half" else int(m["k"])
        if not 1 <= k <= depth:
            raise IndexError(f"CB layers={layers!r} selects {k} blocks, but the model has {depth} blocks")
        return list(range(k)) if m["end"] == "first" else list(range(depth - k, depth))
    chosen = set()
    for i in layers:
        if not -depth <= i < depth:
            raise IndexError(f"block index {i} out of range for a model with {depth} blocks")
        chosen.add(i % depth)
    return sorted(chosen)


def _format_layers(layers, sep: str) -> str:
    return layers if isinstance(layers, str) else "[" + sep.join(str(i) for i in layers) + "]"


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model; CB models name their baseline explicitly.

    weights: "timm" (timm's pretrained weights, needs the hub or its cache),
    "file" (``checkpoint``), "url" (``checkpoint`` is a URL; downloaded once into the
    checkpoint dir and verified against ``sha256``), "train" (trained by cbbench with
    ``recipe``, cached), "random" (seeded initialisation, for tests), "robustbench" (a
    RobustBench zoo entry ``arch`` for ``checkpoint`` = "<dataset>/<threat model>", from a
    local checkpoint under ``<checkpoint dir>/robustbench/``; such models normalize inside,
    so mean 0 and std 1 here), "memory" (a module built in Python and passed to cbbench.evaluate;
    ``arch`` is its class, the weights digest tells its weights apart).

    CB variants (only with ``cb=True``): ``cb_layers`` (None = every block, "first-K",
    "last-K", "first-half", "last-half", or a tuple of block indices), ``cb_position``
    ("mlp": end of the MLP branch, the paper's; "attn": end of the attention branch;
    "both"), ``cb_alpha`` (the weight of the mean, ``(1-alpha)*x + alpha*mean``; 0.5 is
    the paper's) and ``cb_scaled`` (a learned per-dimension scale of the broadcast mean per
    CB site, initialised to ones: cbbench's reading of the variant called CB_S, since the
    paper text is not available). Variant fields at their default are left out of
    ``to_dict()`` and hence of ``identity()``: existing models keep their identity, cached
    cells and checkpoint names.
    """

    name: str
    arch: str
    arch_kwargs: tuple[tuple[str, Any], ...] = ()
    cb: bool = False
    cb_layers: tuple[int, ...] | str | None = None
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
    cb_position: str = "mlp"
    cb_alpha: float = 0.5
    cb_scaled: bool = False

    def __post_init__(self):
        if self.weights not in WEIGHT_SOURCES:
            raise ValueError(f"model {self.name}: weights must be one of {WEIGHT_SOURCES}, not {self.weights!r}")
        if self.weights in ("file", "url") and not self.checkpoint:
            raise ValueError(f"model {self.name}: weights={self.weights!r} needs a checkpoint path or URL")
        if self.weights == "url" and not self.sha256:
            raise ValueError(f"model {self.name}: weights from a URL need their sha256 (append #sha256=HEX)")
        if self.sha256 is not None and not (len(self.sha256) == 64
                                            and all(c in "0123456789abcdef" for c in self.sha256.lower())):
            raise ValueError(f"model {self.name}: #sha256= needs the full digest, 64 hex digits (got "
                             f"{len(self.sha256)} characters); copy it from 'sha256sum FILE'")
        if self.weights == "robustbench" and (not self.checkpoint or self.checkpoint.count("/") != 1):
            raise ValueError(f"model {self.name}: robustbench weights need checkpoint='<dataset>/<threat model>', "
                             f"e.g. 'imagenet/Linf', not {self.checkpoint!r}")
        if self.weights == "train" and not self.recipe:
            raise ValueError(f"model {self.name}: weights='train' needs a training recipe")
        try:
            if self.cb_layers is not None:  # lists become tuples; an explicit "all" means None
                object.__setattr__(self, "cb_layers", check_cb_layers(self.cb_layers, "cb_layers"))
            check_cb_position(self.cb_position, "cb_position")
            object.__setattr__(self, "cb_alpha", check_cb_alpha(self.cb_alpha, "cb_alpha"))
            if not isinstance(self.cb_scaled, bool):
                raise ValueError(f"CB cb_scaled must be True or False, not {self.cb_scaled!r}")
        except ValueError as exc:
            raise ValueError(f"model {self.name}: {exc}") from None
        if not self.cb and self.cb_settings(defaults=False):
            raise ValueError(f"model {self.name}: CB settings {self.cb_settings(defaults=False)} need cb=True")

    def cb_settings(self, defaults: bool = True) -> dict[str, Any]:
        """The CB settings (position, layers, alpha, scaled); ``defaults=False``: only those not at their default."""
        values = {"position": self.cb_position, "layers": self.cb_layers, "alpha": self.cb_alpha,
                  "scaled": self.cb_scaled}
        return values if defaults else {k: v for k, v in values.items() if v != CB_DEFAULTS[k]}

    def cb_label(self) -> str:
        """A short human label: "" without CB, "CB" for the paper's, "CB(position=attn, layers=last-4, alpha=0.25)"."""
        return self._cb_text("CB", ", ")

    def cb_suffix(self) -> str:
        """The ad-hoc syntax for this spec's CB: "", "+cb" or "+cb(position=attn,alpha=0.25)" (parse_adhoc reads it)."""
        return self._cb_text("+cb", ",")

    def _cb_text(self, word: str, sep: str) -> str:
        """"" without CB, ``word`` for the paper's CB, else ``word(k=v<sep>...)`` with the non-default settings."""
        if not self.cb:
            return ""
        settings = self.cb_settings(defaults=False)
        if not settings:
            return word
        parts = [f"{k}={_format_layers(v, sep) if k == 'layers' else str(v).lower() if k == 'scaled' else v}"
                 for k, v in settings.items()]
        return f"{word}({sep.join(parts)})"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["arch_kwargs"] = dict(self.arch_kwargs)
        for key in ("position", "alpha", "scaled"):  # at their default they are absent: identities stay as they were
            if d[f"cb_{key}"] == CB_DEFAULTS[key]:
                del d[f"cb_{key}"]
        return d

    def identity(self) -> str:
        """Digest of what determines the network (not its display name or pairing)."""
        d = self.to_dict()
        for k in ("name", "baseline", "description"):
            d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:16]


_ADHOC = re.compile(r"^timm:(?P<arch>[A-Za-z0-9_.\-]+)(?P<cb>\+cb(?:\((?P<settings>[^)]*)\))?)?(?:@(?P<ckpt>.+))?$")
_ADHOC_HINT = ("expected timm:ARCH[+cb[(SETTINGS)]][@CHECKPOINT], e.g. timm:deit_small_patch16_224+cb@/path/ckpt.pth "
               "or timm:deit_small_patch16_224+cb(position=attn,layers=last-4,alpha=0.25)")


def _split_settings(text: str) -> list[str]:
    """Split on commas outside brackets: "layers=[0,2],alpha=0.25" -> ["layers=[0,2]", "alpha=0.25"]."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def parse_cb_settings(text: str, where: str = "") -> dict[str, Any]:
    """``position=attn,layers=last-4,alpha=0.25,scaled=true`` -> ModelSpec fields (cb_position, ...).

    Errors name the bad key and the allowed keys or values.
    """
    where = f" in {where!r}" if where else ""
    fields: dict[str, Any] = {}
    if not text.strip():
        return fields
    for item in _split_settings(text):
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key or not value:
            raise ValueError(f"malformed CB setting {item!r}{where}; expected KEY=VALUE with KEY one of "
                             f"{', '.join(CB_DEFAULTS)}")
        if key not in CB_DEFAULTS:
            raise ValueError(f"unknown CB setting {key!r}{where}; allowed: {', '.join(CB_DEFAULTS)}")
        if f"cb_{key}" in fields:
            raise ValueError(f"CB setting {key!r} given twice{where}")
        try:
            if key == "position":
                fields["cb_position"] = check_cb_position(value)
            elif key == "alpha":
                try:
                    number = float(value)
                except ValueError:
                    number = float("nan")
                if not 0 < number <= 1:  # nan too; the message quotes the text as given
                    check_cb_alpha(value)
                fields["cb_alpha"] = number
            elif key == "scaled":
                if value.lower() not in ("true", "false"):
                    raise ValueError(f"CB scaled must be true or false, not {value!r}")
                fields["cb_scaled"] = value.lower() == "true"
            else:  # layers
                layers: Any = value
                if re.fullmatch(r"-?[0-9]+", value):
                    layers = int(value)
                elif value.startswith("[") and value.endswith("]"):
                    items = [v.strip() for v in value[1:-1].split(",")]
                    if all(re.fullmatch(r"-?[0-9]+", v) for v in items):
                        layers = [int(v) for v in items]
                fields["cb_layers"] = check_cb_layers(layers)
        except ValueError as exc:
            raise ValueError(f"{exc}{where}") from None
    return fields


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
    CB variants: ``+cb(position=attn,layers=last-4,alpha=0.25)``, ``+cb(scaled=true)``;
    keys position (mlp|attn|both), layers (all|first-K|last-K|first-half|last-half|I|[I,J,...]),
    alpha (in (0, 1]), scaled (true|false).
    """
    if name.startswith("robustbench:"):
        return parse_robustbench(name)
    m = _ADHOC.match(name)
    if not m:
        if re.match(r"^timm:[A-Za-z0-9_.\-]+\+cb\([^)]*$", name.partition("@")[0]):
            raise ValueError(f"cannot parse ad-hoc model {name!r}: '+cb(' has no closing ')'; {_ADHOC_HINT}")
        raise ValueError(f"cannot parse ad-hoc model {name!r}; {_ADHOC_HINT}")
    variant = parse_cb_settings(m["settings"] or "", where=name)
    ckpt, sha256, weights = m["ckpt"], None, "file" if m["ckpt"] else "timm"
    if ckpt and ckpt.startswith(("http://", "https://")):
        ckpt, _, fragment = ckpt.partition("#sha256=")
        weights, sha256 = "url", fragment or None
    return ModelSpec(
        name=name,
        arch=m["arch"],
        cb=bool(m["cb"]),
        **variant,
        weights=weights,
        checkpoint=ckpt,
        sha256=sha256,
        description="ad-hoc model from the command line",
    )
