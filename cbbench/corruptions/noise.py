"""Noise corruptions, and the random draws every corruption takes from the caller's generator.

All randomness in the engine goes through :func:`uniform` / :func:`normal`: draws are
made on the generator's device (so a seeded ``torch.Generator`` reproduces a batch
exactly) and then moved to the images' device. The streams differ from numpy's, so
random corruptions match the reference in distribution, not draw for draw.
"""
from __future__ import annotations

import torch

__all__ = ["gaussian_noise", "impulse_noise", "normal", "shot_noise", "speckle_noise", "uniform"]


def _gen_device(generator, device):
    return generator.device if generator is not None else torch.device(device)


def uniform(shape, generator, device, dtype=torch.float32) -> torch.Tensor:
    """U[0, 1) draws of ``shape`` from ``generator`` (or torch's default RNG)."""
    g = _gen_device(generator, device)
    return torch.rand(shape, generator=generator, device=g, dtype=dtype).to(device)


def normal(shape, generator, device, dtype=torch.float32) -> torch.Tensor:
    """Standard normal draws of ``shape`` from ``generator``."""
    g = _gen_device(generator, device)
    return torch.randn(shape, generator=generator, device=g, dtype=dtype).to(device)


def gaussian_noise(x: torch.Tensor, c: float, generator=None) -> torch.Tensor:
    return normal(x.shape, generator, x.device, x.dtype).mul_(c).add_(x).clamp_(0, 1)  # = x + c * z


def shot_noise(x: torch.Tensor, c: float, generator=None) -> torch.Tensor:
    g = _gen_device(generator, x.device)
    rate = (x * c).to(g)
    return torch.poisson(rate, generator=generator).to(x.device).div_(c).clamp_(0, 1)


def impulse_noise(x: torch.Tensor, c: float, generator=None) -> torch.Tensor:
    """skimage ``random_noise(mode='s&p', amount=c)``: each value (per channel) is
    replaced with probability ``c`` (``rand <= c``), by 1 or 0 with equal odds."""
    u = uniform((2, *x.shape), generator, x.device, x.dtype)
    flipped = u[0] <= c
    return torch.where(flipped, u[1].le_(0.5), x)  # le_ leaves 1.0 (salt) or 0.0 (pepper)


def speckle_noise(x: torch.Tensor, c: float, generator=None) -> torch.Tensor:
    z = normal(x.shape, generator, x.device, x.dtype)
    return z.mul_(x * c).add_(x).clamp_(0, 1)  # = x + (x * c) * z
