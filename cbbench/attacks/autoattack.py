"""AutoAttack (Croce & Hein, 2020) through PyPI's ``pyautoattack`` 0.2.0, with cbbench's checks.

Variants:

* ``standard``: APGD-CE, APGD-T (9 target classes), FAB-T (9 target classes),
  Square (5000 queries), each run only on the images still robust after the
  previous ones; the result is the per-image worst case.
* ``apgd``: APGD-CE + APGD-T only, with the standard settings (a cheaper
  variant for CPU; label it as such, it is not "AutoAttack standard").

What pyautoattack does with the model, and what this adapter adds:

* It never calls ``model.eval()`` nor moves the model: it calls ``model(x)``
  and needs logits (it only warns when the outputs look like probabilities).
  Here a model in training mode, with non-fp32 parameters or on another device
  than the images is refused (the Linf adapters' checks), and probability
  outputs raise ValueError.
* ``device`` only moves the images (to ``images.device`` here).
* Every attack reseeds torch's GLOBAL RNG (``torch.random.manual_seed``) and
  the seed defaults to ``time.time()``. Here the seed is explicit and the
  caller's RNG state is restored afterwards (``torch.random.fork_rng``).
* Zero gradients only produce a logged warning. Here one forward+backward
  first checks the input gradient (GradientMaskingError when it is missing
  or zero for every image, as in the Linf adapters); pyautoattack's own
  warnings (zero gradients on some images, randomized/dynamic model, Square
  beating the gradient attacks) are returned so that the task records them.
* Target classes: 9 (standard), fewer when the model has fewer than 10
  classes (pyautoattack would index past the logits).
* Its sanity checks use ``sys.settrace`` and reset it to None afterwards, so
  a debugger or coverage tracer stops tracing the current thread.
"""
from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from cbbench.attacks.epsilon import validate_epsilon

__all__ = ["AutoAttackOutput", "VARIANTS", "NORMS", "autoattack", "check_variant", "check_norm", "parse_budget"]

VARIANTS: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "apgd": ("apgd-ce", "apgd-t"),
}
NORMS = ("Linf", "L2", "L1")
TARGET_CLASSES = 9  # standard AutoAttack, for APGD-T and FAB-T


@dataclass
class AutoAttackOutput:
    x_adv: torch.Tensor
    pred: torch.Tensor  # AutoAttack's own prediction on x_adv (y_adv)
    warnings: list[str] = field(default_factory=list)


def check_variant(variant: str) -> tuple[str, ...]:
    if variant not in VARIANTS:
        raise ValueError(f"unknown AutoAttack variant {variant!r}; use one of "
                         + ", ".join(f"{k!r} ({' + '.join(v)})" for k, v in VARIANTS.items()))
    return VARIANTS[variant]


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; AutoAttack supports {', '.join(repr(n) for n in NORMS)}")
    return norm


def parse_budget(eps, norm: str) -> float:
    """The radius in pixel units: Linf in (0, 1] (strings such as '8/255'); L2 / L1 any finite value > 0."""
    check_norm(norm)
    if norm == "Linf":
        value = validate_epsilon(eps)
    else:
        if isinstance(eps, bool) or not isinstance(eps, (numbers.Real, str)):
            raise ValueError(f"eps must be a number, got {eps!r}")
        try:
            value = float(eps)
        except ValueError:
            raise ValueError(f"cannot parse eps={eps!r} for {norm}: expected a number such as 0.5") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
    if value == 0:
        raise ValueError("AutoAttack needs eps > 0 (at eps 0 robust accuracy is clean accuracy: use the clean task)")
    return value


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg not in self.messages:
            self.messages.append(msg)


def _input_gradient_check(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """One forward+backward: GradientMaskingError if the input gradient is missing/zero; returns #classes."""
    from cbbench.attacks.linf import _check_gradient  # the Linf adapters' check and message

    with torch.inference_mode(False), torch.enable_grad():
        xr = x.detach().clone().requires_grad_(True)
        logits = model(xr)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != len(x):
            raise ValueError(f"the model must return logits of shape (B, classes), got "
                             f"{getattr(logits, 'shape', type(logits).__name__)}")
        with torch.no_grad():
            if (logits.min() >= 0 and logits.max() <= 1
                    and torch.allclose(logits.sum(1), torch.ones(len(x), device=x.device), atol=1e-5)):
                raise ValueError("the model's outputs look like probabilities (rows in [0, 1] summing to 1): "
                                 "AutoAttack's losses need logits; remove the softmax")
        grad = None
        if logits.requires_grad:
            (grad,) = torch.autograd.grad(F.cross_entropy(logits.float(), y, reduction="sum"), xr,
                                          allow_unused=True)
    _check_gradient(grad)
    return int(logits.shape[1])


def autoattack(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps, *, norm: str = "Linf",
               variant: str = "standard", seed: int = 0) -> AutoAttackOutput:
    """Run AutoAttack on one batch; returns the adversarial images (worst case over the attacks).

    ``images`` in [0, 1] (B, C, H, W), ``labels`` class indices, ``eps`` in pixel
    units (Linf: a number or a string such as ``"8/255"``). Images misclassified
    from the start are returned unchanged, as are images no attack could flip.
    """
    attacks = check_variant(variant)
    eps_value = parse_budget(eps, norm)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {seed!r}")
    from cbbench.attacks.linf import check_attack_inputs

    labels = check_attack_inputs(model, images, labels)
    if images.shape[0] == 0:
        return AutoAttackOutput(images.clone(), labels.clone())
    x0 = images.detach().to(torch.float32).clone()
    if x0.min().item() < 0 or x0.max().item() > 1:
        raise ValueError("images must be in [0, 1]: cbbench models take RGB pixels and normalize inside")
    y = labels.detach().long().clone()

    from pyautoattack import AutoAttack

    collect = _Collect()
    logger = logging.getLogger("auto-attack")
    logger.addHandler(collect)
    devices = [images.device] if images.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.inference_mode(False), \
                torch.autocast(device_type=images.device.type, enabled=False):
            num_classes = _input_gradient_check(model, x0, y)
            if "apgd-t" in attacks or "fab-t" in attacks:
                if num_classes < 4:
                    raise ValueError(f"AutoAttack's targeted attacks need >= 4 classes, the model has {num_classes}")
            aa = AutoAttack(model, device=images.device, eps=eps_value, norm=norm, seed=int(seed),
                            version="standard")
            aa.attacks_to_run = list(attacks)  # standard settings, possibly a subset of the attacks
            if variant != "standard":
                aa.version = "custom"
            aa.apgd_targeted.n_target_classes = min(aa.apgd_targeted.n_target_classes, num_classes - 1)
            aa.fab.n_target_classes = min(aa.fab.n_target_classes, num_classes - 1)
            x_adv, y_adv = aa.run_standard_evaluation(x0, y, batch_size=len(x0))
    finally:
        logger.removeHandler(collect)
    _check_budget(x_adv, x0, eps_value, norm)
    return AutoAttackOutput(x_adv.detach().to(images.dtype), y_adv.detach(), collect.messages)


def _check_budget(x_adv: torch.Tensor, x0: torch.Tensor, eps: float, norm: str) -> None:
    if not bool(torch.isfinite(x_adv).all()):
        raise RuntimeError("AutoAttack produced non-finite images")
    if x_adv.min().item() < 0 or x_adv.max().item() > 1:
        raise RuntimeError("AutoAttack produced images outside [0, 1]")
    delta = (x_adv - x0).flatten(1)
    size = {"Linf": lambda d: d.abs().amax(1), "L2": lambda d: d.norm(dim=1),
            "L1": lambda d: d.abs().sum(1)}[norm](delta)
    if size.numel() and size.max().item() > eps * (1 + 1e-4) + 1e-6:
        raise RuntimeError(f"AutoAttack exceeded its {norm} budget: {size.max().item():.6g} > {eps:.6g}")
