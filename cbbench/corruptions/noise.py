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
    return (x + c * normal(x.shape, generator, x.device, x.dtype)).clamp(0, 1)


def shot_noise(x: torch.Tensor, c: float, generator=None) -> torch.Tensor:
    g = _gen_device(generator, x.device)
    rate = (x * c).to(g)
    return (torch.poisson(rate, generator=generator).to(x.device) / c).clamp(0, 1)


def impulse_noise(x: torch.Tensor, c: float, generator=None) -> torch.Tensor:
    """skimage ``random_noise(mode='s&p', amount=c)``: each value (per channel) is
    replaced with probability ``c`` (``rand <= c``), by 1 or 0 with equal odds."""
    u = uniform((2, *x.shape), generator, x.device, x.dtype)
    flipped, salted = u[0] <= c, u[1] <= 0.5
    return torch.where(flipped, salted.to(x.dtype), x)


def speckle_noise(x: torch.Tensor, c: float, generator=None) -> torch.Tensor:
    return (x + x * c * normal(x.shape, generator, x.device, x.dtype)).clamp(0, 1)
