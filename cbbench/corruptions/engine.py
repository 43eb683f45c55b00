"""Fast, batched ImageNet-C corruptions in torch (CPU or GPU).

``corrupt(images, name, severity, generator=None, quantize=False)`` applies one of the
19 ImageNet-C corruptions (15 benchmark + 4 held-out) to a whole batch with torch ops.
The per-severity parameters below are copied from imagecorruptions 1.1.2 (the
reference, see :mod:`cbbench.corruptions.reference`); each function reproduces the
reference's numerics (filters, borders, interpolation, colour conversion, the quirks
of its loops), and all randomness comes from the caller's ``torch.Generator``, so
random corruptions match the reference in distribution, not draw for draw.
At any image size the behaviour is the reference's at that size (the parameters are
tuned for 224x224; at 32x32 they are used unchanged, as imagecorruptions does).
See docs/corruption_engine.md for the measured agreement and the design.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cbbench.corruptions import blur, digital, noise, weather
from cbbench.corruptions.catalog import ALL_CORRUPTIONS
from cbbench.corruptions.reference import _check_name, _check_severity, check_batch

__all__ = [
    "PARAMETERS",
    "corrupt",
    "engine_threads",
    "others_running",
]

#: Environment variable that fixes the engine's CPU threads (default: chosen from the load, ``engine_threads``).
THREADS_ENV = "CBBENCH_ENGINE_THREADS"

# name -> (function(x, param, generator), parameters for severities 1..5), exactly
# as in imagecorruptions/corruptions.py 1.1.2.
PARAMETERS: dict[str, tuple[Callable, tuple]] = {
    "gaussian_noise": (noise.gaussian_noise, (0.08, 0.12, 0.18, 0.26, 0.38)),
    "shot_noise": (noise.shot_noise, (60, 25, 12, 5, 3)),
    "impulse_noise": (noise.impulse_noise, (0.03, 0.06, 0.09, 0.17, 0.27)),
    "defocus_blur": (blur.defocus_blur, ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))),
    # (sigma, max_delta, iterations)
    "glass_blur": (blur.glass_blur, ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))),
    # (radius, sigma); angle ~ U(-45, 45)
    "motion_blur": (blur.motion_blur, ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))),
    "zoom_blur": (
        blur.zoom_blur,
        (
            tuple(np.arange(1, 1.11, 0.01)),
            tuple(np.arange(1, 1.16, 0.01)),
            tuple(np.arange(1, 1.21, 0.02)),
            tuple(np.arange(1, 1.26, 0.02)),
            tuple(np.arange(1, 1.31, 0.03)),
        ),
    ),
    # (loc, scale, zoom, threshold, blur radius, blur sigma, blend)
    "snow": (
        weather.snow,
        (
            (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
            (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
            (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
            (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
            (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
        ),
    ),
    "frost": (weather.frost, ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))),
    "fog": (weather.fog, ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))),
    "brightness": (digital.brightness, (0.1, 0.2, 0.3, 0.4, 0.5)),
    "contrast": (digital.contrast, (0.4, 0.3, 0.2, 0.1, 0.05)),
    # alpha; sigma = 0.01 * size, max displacement = 0.005 * height
    "elastic_transform": (
        digital.elastic_transform,
        (250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12),
    ),
    "pixelate": (digital.pixelate, (0.6, 0.5, 0.4, 0.3, 0.25)),
    "jpeg_compression": (digital.jpeg_compression, (25, 18, 15, 10, 7)),
    "speckle_noise": (noise.speckle_noise, (0.15, 0.2, 0.35, 0.45, 0.6)),
    "gaussian_blur": (blur.gaussian_blur, (1, 2, 3, 4, 6)),
    # (loc, scale, sigma, threshold, intensity / mud sigma, mode: 0 water, 1 mud)
    "spatter": (
        weather.spatter,
        (
            (0.65, 0.3, 4, 0.69, 0.6, 0),
            (0.65, 0.3, 3, 0.68, 0.6, 0),
            (0.65, 0.3, 2, 0.68, 0.5, 0),
            (0.65, 0.3, 1, 0.65, 1.5, 1),
            (0.67, 0.4, 1, 0.65, 1.5, 1),
        ),
    ),
    # (saturation factor, offset)
    "saturate": (digital.saturate, ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2))),
}
assert tuple(PARAMETERS) == ALL_CORRUPTIONS


def corrupt(
    images: torch.Tensor,
    name: str,
    severity: int,
    generator: torch.Generator | None = None,
    *,
    quantize: bool = False,
) -> torch.Tensor:
    """Apply ImageNet-C corruption ``name`` at ``severity`` (1..5) to a batch.

    Args:
        images: float tensor (B, 3, H, W) in [0, 1] on any device; any H, W >= 8
            (the reference itself refuses < 32; at 32 and above the result follows
            the reference at that size).
        name: one of :data:`ALL_CORRUPTIONS`.
        severity: 1..5.
        generator: the only source of randomness (torch's default RNG if None). Draws
            are made on the generator's device and moved to the images' device, so the
            same seed on the same generator device reproduces a batch exactly.
        quantize: if True, truncate the output to the uint8 grid
            (``floor(255 * out) / 255``) as the reference adapter and the saved
            ImageNet-C images do (the published PNG->JPEG re-encoding is not applied).

    Returns:
        the corrupted batch, same shape, dtype and device, values in [0, 1], no grad.
    """
    name = _check_name(name)
    severity = _check_severity(severity)
    check_batch(images, name, 8)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if images.shape[0] == 0:
        return images.detach().clone()
    fn, params = PARAMETERS[name]
    x = images.detach()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    threads = engine_threads() if x.device.type == "cpu" else None
    with torch.no_grad(), _torch_threads(threads):
        out = fn(x, params[severity - 1], generator)
        if quantize:
            out = out.clamp(0, 1).mul_(255).floor_().div_(255)  # floor(255 * out) / 255
    return out.to(dtype=images.dtype)


def engine_threads() -> int:
    """CPU threads for one ``corrupt`` call: torch's, but no more than the cores other work leaves idle.

    The engine runs many small ops, each ending at an OpenMP barrier; a thread that
    loses its core to another process makes every barrier wait a time slice. On 2
    shared cores under load ~3, all 19 corruptions took 642 ms per image with 2
    threads and 95 ms with 1 (issue 20). Idle cores = cores available - threads of
    other processes running right now (``others_running``). The 1-minute load average
    used before lagged a minute behind and counted the engine's own threads: on a quiet
    machine the engine's own work pushed it to 1 thread. The outputs do not depend on
    the thread count (tests/test_corruption_engine.py), so this choice changes speed
    only. ``$CBBENCH_ENGINE_THREADS`` fixes it.
    """
    fixed = os.environ.get(THREADS_ENV)
    if fixed:
        return max(1, int(fixed))
    try:
        idle = len(os.sched_getaffinity(0)) - others_running()
    except (AttributeError, OSError, ValueError, IndexError):  # no affinity or /proc on this platform
        return torch.get_num_threads()
    return max(1, min(torch.get_num_threads(), idle))


def others_running() -> int:
    """Threads of other processes that are running or waiting for a CPU at this moment (Linux: the
    runnable count in /proc/loadavg, less this process's threads in state R)."""
    with open("/proc/loadavg") as f:
        runnable = int(f.read().split()[3].split("/")[0])
    own = 0
    for stat in Path("/proc/self/task").glob("*/stat"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            own += stat.read_text().rsplit(")", 1)[1].split()[0] == "R"
    return max(0, runnable - own)


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """torch's intra-op threads set to ``n`` inside the block (None: unchanged)."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
