"""Digital corruptions: contrast, brightness, saturate, pixelate, JPEG, elastic transform.

brightness and saturate go through HSV exactly as scikit-image's ``rgb2hsv`` /
``hsv2rgb`` do (same tie-breaking of the max channel, same hue wrap-around).
pixelate reproduces Pillow's BOX downscale weights and NEAREST upscale indices;
JPEG round-trips each image through torchvision's libjpeg encoder/decoder at the
reference's quality; elastic_transform reproduces scipy's ``map_coordinates``
(order 1, ``mode='reflect'``) on a displacement field smoothed like the reference.
(ImageNet-C lists brightness under "weather"; it lives here because it shares HSV.)
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from cbbench.corruptions.blur import gaussian_filter
from cbbench.corruptions.noise import uniform

__all__ = [
    "brightness",
    "contrast",
    "elastic_transform",
    "elastic_transform_apply",
    "hsv_to_rgb",
    "jpeg_compression",
    "pixelate",
    "rgb_to_hsv",
    "saturate",
]


# ----------------------------------------------------------------------------- HSV
def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    v = x.amax(1)
    delta = v - x.amin(1)
    zero = delta == 0
    safe = torch.where(zero, torch.ones_like(delta), delta)
    s = torch.where(zero, torch.zeros_like(delta), delta / torch.where(v == 0, torch.ones_like(v), v))
    h = (g - b) / safe
    h = torch.where(g == v, 2.0 + (b - r) / safe, h)  # later cases win, as in skimage
    h = torch.where(b == v, 4.0 + (r - g) / safe, h)
    h = torch.remainder(h / 6.0, 1.0)
    h = torch.where(zero, torch.zeros_like(h), h)
    return torch.stack((h, s, v), 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    h, s, v = hsv.unbind(1)
    hi = torch.floor(h * 6)
    f = h * 6 - hi
    p = v * (1 - s)
    q = v * (1 - f * s)
    t = v * (1 - (1 - f) * s)
    idx = hi.long().remainder(6)[:, None]  # (B, 1, H, W)
    cand_r = torch.stack((v, q, p, p, t, v), 1)
    cand_g = torch.stack((t, v, v, q, p, p), 1)
    cand_b = torch.stack((p, p, t, v, v, q), 1)
    return torch.cat([c.gather(1, idx) for c in (cand_r, cand_g, cand_b)], 1)


def brightness(x: torch.Tensor, c: float, generator=None) -> torch.Tensor:
    hsv = rgb_to_hsv(x)
    hsv = torch.stack((hsv[:, 0], hsv[:, 1], (hsv[:, 2] + c).clamp(0, 1)), 1)
    return hsv_to_rgb(hsv).clamp(0, 1)


def saturate(x: torch.Tensor, c, generator=None) -> torch.Tensor:
    hsv = rgb_to_hsv(x)
    hsv = torch.stack((hsv[:, 0], (hsv[:, 1] * c[0] + c[1]).clamp(0, 1), hsv[:, 2]), 1)
    return hsv_to_rgb(hsv).clamp(0, 1)


def contrast(x: torch.Tensor, c: float, generator=None) -> torch.Tensor:
    means = x.mean(dim=(2, 3), keepdim=True)
    return ((x - means) * c + means).clamp(0, 1)


# ----------------------------------------------------------------------------- pixelate
@functools.lru_cache(maxsize=64)
def _box_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Pillow's BOX resampling weights (ImagingResample precompute_coeffs), (n_out, n_in)."""
    scale = n_in / n_out
    fscale = max(scale, 1.0)
    support = 0.5 * fscale
    m = np.zeros((n_out, n_in))
    for xx in range(n_out):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), n_in)
        for xi in range(xmin, xmax):
            t = (xi - center + 0.5) / fscale
            m[xx, xi] = 1.0 if -0.5 < t <= 0.5 else 0.0
        m[xx] /= m[xx].sum()
    return m


@functools.lru_cache(maxsize=64)
def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Pillow's NEAREST resize source indices (ImagingScaleAffine's accumulated coords)."""
    a = n_in / n_out
    xo = a * 0.5
    out = np.empty(n_out, dtype=np.int64)
    for i in range(n_out):
        out[i] = -1 if xo < 0 else int(xo)
        xo += a
    return out


def pixelate(x: torch.Tensor, c: float, generator=None) -> torch.Tensor:
    """PIL ``resize((int(W*c), int(H*c)), BOX)`` then ``resize((W, H), NEAREST)``.

    Like the reference (a PIL uint8 image), the input is rounded to uint8 and Pillow's
    rounding after each of its two BOX passes (horizontal, then vertical) is kept, so
    the output is on the uint8 grid."""
    h, w = x.shape[-2:]
    sh, sw = int(h * c), int(w * c)
    mh = torch.from_numpy(_box_matrix(h, sh)).to(x.device, torch.float64)
    mw = torch.from_numpy(_box_matrix(w, sw)).to(x.device, torch.float64)
    u8 = torch.round(x.double() * 255).clamp(0, 255)
    small = torch.floor(u8 @ mw.T + 0.5).clamp(0, 255)
    small = (torch.floor(mh @ small + 0.5).clamp(0, 255) / 255).to(x.dtype)
    ih = torch.from_numpy(_nearest_index(sh, h)).to(x.device)
    iw = torch.from_numpy(_nearest_index(sw, w)).to(x.device)
    return small.index_select(-2, ih).index_select(-1, iw).clamp(0, 1)


# ----------------------------------------------------------------------------- JPEG
def jpeg_compression(x: torch.Tensor, quality: int, generator=None) -> torch.Tensor:
    """Round trip through torchvision's libjpeg (CPU) at ``quality``, as PIL's
    ``save(..., 'JPEG', quality=q)`` in the reference (4:2:0 chroma subsampling)."""
    import warnings

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its image IO (still works)
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import decode_jpeg, encode_jpeg

    u8 = (x.detach() * 255).round().clamp(0, 255).to(torch.uint8).cpu()
    data = encode_jpeg(list(u8), quality=int(quality))
    dec = decode_jpeg(data)
    out = torch.stack(dec).to(x.device, x.dtype) / 255
    return out


# ----------------------------------------------------------------------------- elastic
def _reflect_coord(c: torch.Tensor, n: int) -> torch.Tensor:
    """scipy's 'reflect' (half-sample symmetric) boundary for continuous coordinates."""
    if n == 1:
        return torch.zeros_like(c)
    p = torch.remainder(c + 0.5, 2 * n)
    p = torch.where(p >= n, 2 * n - p, p)
    return p - 0.5


def elastic_transform_apply(x: torch.Tensor, alpha: float, ux: torch.Tensor, uy: torch.Tensor) -> torch.Tensor:
    """elastic_transform given the raw uniform fields ``ux``, ``uy`` (B, H, W), already
    scaled to [-max_d, max_d)."""
    b, ch, h, w = x.shape
    sigma = (h * 0.01, w * 0.01)
    dx = (gaussian_filter(ux[:, None].double(), sigma, mode="reflect", truncate=3) * alpha).float()
    dy = (gaussian_filter(uy[:, None].double(), sigma, mode="reflect", truncate=3) * alpha).float()
    cdt = torch.float64
    yy = torch.arange(h, device=x.device, dtype=cdt)[:, None] + dy[:, 0].to(cdt)
    xx = torch.arange(w, device=x.device, dtype=cdt)[None, :] + dx[:, 0].to(cdt)
    yy, xx = _reflect_coord(yy, h), _reflect_coord(xx, w)
    y0, x0 = torch.floor(yy), torch.floor(xx)
    fy, fx = (yy - y0).to(x.dtype)[:, None], (xx - x0).to(x.dtype)[:, None]
    y0, x0 = y0.long(), x0.long()
    y1, x1 = (y0 + 1).clamp(0, h - 1), (x0 + 1).clamp(0, w - 1)
    y0, x0 = y0.clamp(0, h - 1), x0.clamp(0, w - 1)
    flat = x.reshape(b, ch, h * w)

    def at(yi, xi):
        return flat.gather(2, (yi * w + xi).reshape(b, 1, -1).expand(-1, ch, -1)).reshape(b, ch, h, w)

    out = (at(y0, x0) * (1 - fx) + at(y0, x1) * fx) * (1 - fy) + (at(y1, x0) * (1 - fx) + at(y1, x1) * fx) * fy
    return out.clamp(0, 1)


def elastic_transform(x: torch.Tensor, alpha: float, generator=None) -> torch.Tensor:
    b, _, h, w = x.shape
    md = h * 0.005  # the reference uses shape[0] for both max_dx and max_dy
    u = uniform((2, b, h, w), generator, x.device, torch.float64) * (2 * md) - md
    return elastic_transform_apply(x, alpha, u[0], u[1])
