"""Linf FGSM and PGD through foolbox, with the checks a robustness benchmark needs.

Every cbbench model takes RGB images in [0, 1] and normalizes inside, so attacks
run in pixel space: bounds (0, 1), epsilon in pixel units (1/255 is one grey
level) and no foolbox ``preprocessing``. Protocols used by the benchmark:

* FGSM, eps 1/255: one signed step of size eps from the clean image.
* PGD (RVT protocol), eps 1/255: 5 steps of 0.5/255 from a uniform random start.
* Stronger PGD, eps 4/255: 10 or more steps of 1/255 from a uniform random start.

Differences from calling ``foolbox.attacks.LinfPGD()(fmodel, x, y, epsilons=eps)``:

* Cost: ``attack.run`` is called directly, so a call costs exactly ``steps``
  forward+backward passes (FGSM: 1). foolbox's ``__call__`` adds a forward pass
  to report success; the caller evaluates ``x_adv`` itself.
* Gradients are taken with ``torch.autograd.grad`` w.r.t. the input only, so
  no ``.grad`` accumulates on the model's parameters (eagerpy calls
  ``loss.backward()``) and the weight gradients are not computed at all.
* Gradient masking: the first gradient of every call is checked (no extra
  pass). If it is missing, or exactly zero for every image (e.g. a
  ``torch.round`` inside the model), :class:`GradientMaskingError` is raised
  instead of returning unchanged images that would make the model look robust.
* Randomness: foolbox draws the random start with eagerpy's ``uniform``, i.e.
  ``torch.rand`` on torch's global RNG. With ``generator`` (a
  ``torch.Generator`` or an int seed) the start is drawn with the same formula
  from that generator instead, so it is reproducible and the caller's global
  RNG state is never touched. With ``generator=None`` it comes from the global
  RNG, exactly as in foolbox (and advances it, like any ``torch.rand``).
* fp32: the attack runs on a float32 copy of the images with autocast off and
  under ``torch.enable_grad()`` (so it also works inside ``torch.no_grad()``);
  models with non-fp32 floating parameters are refused.
* Device: foolbox's ``PyTorchModel`` moves the model to ``cuda:0`` when no
  device is given; here the device is the images' and must be the model's.
"""
from __future__ import annotations

import numbers
from typing import Union

import eagerpy as ep
import foolbox as fb
import torch
from torch import nn

from cbbench.attacks.epsilon import parse_pixel_value, validate_epsilon

__all__ = ["GradientMaskingError", "NonFiniteGradientError", "validate_epsilon", "fgsm", "pgd"]

GeneratorLike = Union[torch.Generator, int, None]


class GradientMaskingError(RuntimeError):
    """The model's output does not depend differentiably on its input."""


class NonFiniteGradientError(RuntimeError):
    """The model's logits (hence its loss and input gradient) are NaN or infinite: a broken model, not a masked one."""




def _as_generator(generator: GeneratorLike) -> torch.Generator | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, numbers.Integral) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(int(generator))
    raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {generator!r}")


class _CheckedLinfMixin:
    """Overrides foolbox's documented hooks: input-only gradients, masking check, seeded start."""

    generator: torch.Generator | None = None
    _gradient_checked = False

    def value_and_grad(self, loss_fn, x):
        xr = x.raw.detach().clone().requires_grad_(True)
        loss = loss_fn(ep.astensor(xr)).raw
        grad = None
        if loss.requires_grad:
            (grad,) = torch.autograd.grad(loss, xr, allow_unused=True)
        if not self._gradient_checked:
            _check_gradient(grad)
            self._gradient_checked = True
        return ep.astensor(loss.detach()), ep.astensor(grad)

    def get_random_start(self, x0, epsilon):
        if self.generator is None:
            return super().get_random_start(x0, epsilon)  # global RNG, as foolbox
        raw = x0.raw
        # Same formula as eagerpy's uniform(low=-eps, high=eps).
        u = torch.rand(raw.shape, generator=self.generator, dtype=raw.dtype,
                       device=self.generator.device).to(raw.device)
        return x0 + ep.astensor(u * (epsilon - (-epsilon)) + (-epsilon))


class _FGSM(_CheckedLinfMixin, fb.attacks.FGSM):
    pass


class _LinfPGD(_CheckedLinfMixin, fb.attacks.LinfPGD):
    pass


def _check_gradient(grad: torch.Tensor | None) -> None:
    hint = ("the attack would leave the images unchanged and report the model as robust; "
            "attack a differentiable surrogate (e.g. BPDA) instead")
    if grad is None:
        raise GradientMaskingError(
            f"the model's output does not depend differentiably on its input (gradient is None); {hint}")
    if not bool(torch.isfinite(grad.flatten(1)).all(dim=1).any()):  # NaN > 0 is False: not "exactly zero"
        raise NonFiniteGradientError(
            "the input gradient is NaN or infinite for every image: the model's logits are not finite numbers "
            "(NaN or inf weights, or an overflow); check the checkpoint, there is nothing to attack")
    if not bool(grad.flatten(1).abs().amax(dim=1).gt(0).any()):
        raise GradientMaskingError(
            f"the input gradient is exactly zero for every image (a non-differentiable step such as "
            f"rounding or quantization inside the model?); {hint}")


def _check_model(model: nn.Module, images: torch.Tensor) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        raise ValueError(
            f"model is in training mode ({', '.join(training[:3])}"
            f"{', ...' if len(training) > 3 else ''}): call model.eval() before attacking it")
    for name, p in model.named_parameters():
        if p.is_floating_point() and p.dtype != torch.float32:
            raise ValueError(f"attacks need fp32 gradients but parameter {name!r} is {p.dtype}: "
                             "call model.float()")
        if p.device != images.device:
            raise ValueError(f"model parameter {name!r} is on {p.device} but images are on "
                             f"{images.device}: move them to the same device")


def check_attack_inputs(model: nn.Module, images: torch.Tensor, labels) -> torch.Tensor:
    """What every attack checks first (shapes, label type, eval mode, fp32, device); returns the labels tensor."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise ValueError("images must be a floating-point tensor of shape (B, C, H, W) in [0, 1]")
    labels = torch.as_tensor(labels, device=images.device)
    if labels.shape != images.shape[:1] or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be integer class indices of shape ({images.shape[0]},), "
                         f"got {labels.dtype} {tuple(labels.shape)}")
    _check_model(model, images)
    return labels


def _run(attack, model, images, labels, eps) -> torch.Tensor:
    eps = validate_epsilon(eps)
    labels = check_attack_inputs(model, images, labels)
    if images.shape[0] == 0:
        return images.clone()
    with torch.inference_mode(False), torch.enable_grad(), \
            torch.autocast(device_type=images.device.type, enabled=False):
        x0 = images.detach().to(torch.float32).clone()
        if x0.min().item() < 0 or x0.max().item() > 1:
            raise ValueError("images must be in [0, 1]: cbbench models take RGB pixels and "
                             "normalize inside")
        fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=images.device)
        criterion = fb.criteria.Misclassification(labels.detach().long().clone())
        x = attack.run(fmodel, x0, criterion, epsilon=eps)
        x = (x0 + (x - x0).clamp(-eps, eps)).clamp(0, 1)
    if not bool(torch.isfinite(x).all()):
        raise RuntimeError("the attack produced non-finite images (NaN/inf gradients?)")
    return x.to(images.dtype)


def fgsm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps) -> torch.Tensor:
    """Linf FGSM: ``clip(x + eps * sign(grad CE), 0, 1)``, one forward+backward.

    ``eps`` is in [0, 1] pixel units or a string such as ``"1/255"``. Returns
    adversarial images with the shape, device and dtype of ``images`` (the
    attack itself runs in fp32; other dtypes are converted back at the end).
    """
    return _run(_FGSM(), model, images, labels, eps)


def pgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps, *,
        steps: int, step_size, random_start: bool = True,
        generator: GeneratorLike = None) -> torch.Tensor:
    """Linf PGD (Madry et al.): ``steps`` signed steps of ``step_size``, projected to eps and [0, 1].

    RVT protocol: ``eps="1/255", steps=5, step_size="0.5/255"``; stronger:
    ``eps="4/255", steps=10, step_size="1/255"``. The random start is uniform in
    [-eps, eps] (then clipped to [0, 1]), drawn from ``generator`` (a
    ``torch.Generator`` on any device, or an int seed) without touching the
    global RNG, or from the global RNG if ``generator`` is None. Costs exactly
    ``steps`` forward+backward passes.
    """
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    step_size = parse_pixel_value(step_size, "step_size")
    if step_size == 0:
        raise ValueError("step_size must be > 0")
    attack = _LinfPGD(abs_stepsize=step_size, steps=int(steps), random_start=bool(random_start))
    attack.generator = _as_generator(generator) if random_start else None
    return _run(attack, model, images, labels, eps)
